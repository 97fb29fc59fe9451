// kumod's dashboard: renders the server-sent state of
// /api/admin/dashboard/v1/events and calls the admin API for actions.
// No libraries and no build step. Everything that comes from the server
// (queue names, responses) is written with textContent, never as HTML.
"use strict";

const view = {
  sched: { filter: "", sort: "count", desc: true, offset: 0, limit: 25 },
  ready: { filter: "", sort: "count", desc: true, offset: 0, limit: 25 },
};
let source = null;
let reconnectTimer = null;
let lastState = null;

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) {
    if (k === null || k === undefined) continue;
    e.append(k instanceof Node ? k : String(k));
  }
  return e;
}

function fmtNum(n) {
  if (n === null || n === undefined) return "–";
  if (typeof n === "number" && !Number.isInteger(n)) return n.toFixed(n < 10 ? 2 : 1);
  return Number(n).toLocaleString("en-US");
}

function fmtAge(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + (s % 60 ? " " + (s % 60) + "s" : "");
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}

function notice(text, isError) {
  const n = $("notice");
  n.textContent = text;
  n.className = "notice" + (isError ? " error" : "");
  n.hidden = !text;
}

// ---- the event stream ----------------------------------------------------------------------

function streamUrl() {
  const q = new URLSearchParams();
  for (const t of ["sched", "ready"]) {
    const v = view[t];
    q.set(t + "_filter", v.filter);
    q.set(t + "_sort", v.sort);
    q.set(t + "_desc", v.desc ? "1" : "0");
    q.set(t + "_offset", String(v.offset));
    q.set(t + "_limit", String(v.limit));
  }
  return "/api/admin/dashboard/v1/events?" + q.toString();
}

function connect() {
  if (source) source.close();
  source = new EventSource(streamUrl());
  source.addEventListener("state", (ev) => {
    const badge = $("conn");
    badge.textContent = "live";
    badge.className = "badge live";
    try {
      lastState = JSON.parse(ev.data);
    } catch (e) {
      return;
    }
    render(lastState);
  });
  source.onerror = () => {
    const badge = $("conn");
    badge.textContent = "reconnecting…";
    badge.className = "badge down";
  };
}

function reconnectSoon() {
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(connect, 250);
}

// ---- rendering ---------------------------------------------------------------------------------

function sparkline(values) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 120 36");
  svg.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(1e-9, ...values);
  const pts = values.map((v, i) => {
    const x = (i * 120) / Math.max(1, values.length - 1);
    const y = 34 - (v / max) * 32;
    return x.toFixed(1) + "," + y.toFixed(1);
  });
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", pts.join(" "));
  svg.append(line);
  return svg;
}

const KINDS = [["received", "Received"], ["delivered", "Delivered"],
               ["transient", "Transient failures"], ["bounced", "Bounced"], ["expired", "Expired"]];

function renderCards(c) {
  const cards = $("cards");
  cards.replaceChildren();
  for (const [k, label] of KINDS) {
    const r = c.rates[k];
    if (!r) continue;
    cards.append(el("div", { class: "card " + k, id: "card-" + k },
      el("div", { class: "k" }, label),
      el("div", { class: "v" }, fmtNum(r.per_second), el("small", {}, " /s")),
      el("div", { class: "s" }, fmtNum(r.last_hour) + " in the last hour"),
      sparkline(r.hour)));
  }
}

function renderSpool(c) {
  const s = c.spool;
  const dl = $("spool");
  dl.replaceChildren();
  const rows = [
    ["Scheduled", fmtNum(s.scheduled)], ["Ready", fmtNum(s.ready)],
    ["In flight", fmtNum(s.in_flight)], ["Scheduled queues", fmtNum(s.scheduled_queues)],
    ["Ready queues", fmtNum(s.ready_queues)],
    ["Spool", s.healthy ? "healthy" : "UNHEALTHY: " + s.reason],
    ["Memory (RSS)", fmtNum(Math.round(c.memory.rss_kb / 1024)) + " MB"],
    ["Snapshot cost", fmtNum(c.snapshot_cost_ms) + " ms"],
  ];
  for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", {}, v));
}

function renderAdmin(c) {
  const box = $("admin-list");
  box.replaceChildren();
  const entries = [];
  for (const s of c.suspensions || [])
    entries.push(["Suspended", s, "/api/admin/suspend/v1",
      (s.queue_names && s.queue_names.length ? s.queue_names.join(", ") : "") +
      ["campaign", "tenant", "domain"].filter((k) => s[k]).map((k) => k + "=" + s[k]).join(" ")]);
  for (const s of c.ready_suspensions || [])
    entries.push(["Ready queue suspended", s, "/api/admin/suspend-ready-q/v1", s.name]);
  for (const b of c.bounces || [])
    entries.push(["Bouncing", b, "/api/admin/bounce/v1",
      ["campaign", "tenant", "domain", "routing_domain"].filter((k) => b[k])
        .map((k) => k + "=" + b[k]).join(" ") + " (" + fmtNum(b.total_bounced) + " bounced)"]);
  if (!entries.length) {
    box.append(el("div", { class: "admin-entry" }, el("span", { class: "what" }, "none active")));
    return;
  }
  for (const [kind, e, path, what] of entries) {
    box.append(el("div", { class: "admin-entry", "data-id": e.id },
      el("b", {}, kind),
      el("span", { class: "what" }, what, " — ", e.reason || "", e.duration ? " (" + e.duration.replace(/ \d+(ms|us|ns)/g, "") + " left)" : ""),
      el("button", { class: "resume", onclick: () => adminCall("DELETE", path, { id: e.id },
        kind === "Bouncing" ? "bounce cancelled" : "resumed") },
        kind === "Bouncing" ? "Cancel" : "Resume")));
  }
}

function pager(id, t, table) {
  const p = $(id);
  p.replaceChildren();
  const v = view[t];
  const from = table.matched ? table.offset + 1 : 0;
  const to = Math.min(table.matched, table.offset + table.limit);
  p.append(
    el("button", { onclick: () => { v.offset = Math.max(0, v.offset - v.limit); reconnectSoon(); },
                   disabled: table.offset === 0 ? "" : null }, "‹"),
    " " + fmtNum(from) + "–" + fmtNum(to) + " of " + fmtNum(table.matched) +
      (table.matched !== table.total ? " (" + fmtNum(table.total) + " in all)" : "") + " ",
    el("button", { onclick: () => { v.offset += v.limit; reconnectSoon(); },
                   disabled: to >= table.matched ? "" : null }, "›"));
}

function markSorted(tableId, t) {
  for (const th of document.querySelectorAll("#" + tableId + " th[data-sort]")) {
    const on = th.dataset.sort === view[t].sort;
    th.classList.toggle("sorted", on);
    th.classList.toggle("asc", on && !view[t].desc);
  }
}

function renderSched(table) {
  $("sched-count").textContent = "(" + fmtNum(table.total) + ")";
  const tb = document.querySelector("#sched-table tbody");
  tb.replaceChildren();
  for (const q of table.rows) {
    tb.append(el("tr", { "data-queue": q.name },
      el("td", { class: "name" }, el("a", { href: "#", onclick: (e) => { e.preventDefault(); sample(q.name); } }, q.name)),
      el("td", { class: "num" }, fmtNum(q.count)),
      el("td", { class: "num" }, fmtAge(q.oldest_age_s)),
      el("td", { class: "name" }, q.site),
      el("td", {}, q.provider || ""),
      el("td", { class: q.suspended ? "state-suspended" : "" }, q.suspended ? "suspended" : "active"),
      el("td", {},
        q.suspended ? "" : el("button", { class: "suspend", onclick: () => adminCall("POST", "/api/admin/suspend/v1",
          { queue_names: [q.name], reason: "suspended from the dashboard", duration: "1h" }, "suspended " + q.name) }, "Suspend"),
        " ",
        el("button", { class: "danger bounce", onclick: () => {
          if (confirm("Bounce every message queued for " + q.name + "?"))
            adminCall("POST", "/api/admin/bounce/v1",
              { queue_names: [q.name], reason: "bounced from the dashboard", duration: "5m" }, "bouncing " + q.name);
        } }, "Bounce"))));
  }
  pager("sched-pager", "sched", table);
  markSorted("sched-table", "sched");
}

function renderReady(table) {
  $("ready-count").textContent = "(" + fmtNum(table.total) + ")";
  const tb = document.querySelector("#ready-table tbody");
  tb.replaceChildren();
  for (const q of table.rows) {
    const lr = q.last_response;
    tb.append(el("tr", { "data-queue": q.name },
      el("td", { class: "name" }, q.name),
      el("td", { class: "num" }, fmtNum(q.count)),
      el("td", { class: "num" }, q.connections + " / " + (q.connection_limit || "∞")),
      el("td", { class: "num" }, fmtNum(q.rate)),
      el("td", { class: "num" }, fmtNum(q.delivered)),
      el("td", { class: "num" }, fmtNum(q.transfail)),
      el("td", { class: "num" }, fmtNum(q.failed)),
      el("td", { class: "resp" }, lr ? el("span", { class: "cat " + lr.category }, lr.category) : "", lr ? lr.response : ""),
      el("td", {}, (q.throttled || []).join(", ")),
      el("td", { class: q.suspended ? "state-suspended" : "" }, q.suspended ? "suspended" : "active"),
      el("td", {}, q.suspended ? "" : el("button", { class: "suspend", onclick: () =>
        adminCall("POST", "/api/admin/suspend-ready-q/v1",
          { name: q.name, reason: "suspended from the dashboard", duration: "1h" }, "suspended " + q.name) }, "Suspend"))));
  }
  pager("ready-pager", "ready", table);
  markSorted("ready-table", "ready");
}

function renderProviders(p) {
  $("prov-count").textContent = "(" + fmtNum(p.total) + ")";
  const box = $("providers");
  box.replaceChildren();
  for (const r of p.rows) {
    const cats = el("ul", {});
    for (const [cat, c] of Object.entries(r.categories)) {
      const li = el("li", {}, el("span", { class: "cat " + cat }, cat), fmtNum(c.queues) + " queue(s): ");
      li.append(c.responses.join(" | "));
      cats.append(li);
    }
    box.append(el("div", { class: "prov" },
      el("span", { class: "pn" }, r.name), r.is_provider ? " (provider)" : " (site)",
      " · " + fmtNum(r.queues) + " ready queue(s), " + fmtNum(r.ready) + " ready, " +
        fmtNum(r.connections) + " connection(s)" + (r.suspended ? ", " + r.suspended + " suspended" : ""),
      Object.keys(r.categories).length ? cats : null));
  }
}

function render(state) {
  const c = state.common;
  $("updated").textContent = "updated " + c.now;
  renderCards(c);
  renderSpool(c);
  renderAdmin(c);
  renderSched(state.view.scheduled);
  renderReady(state.view.ready);
  renderProviders(c.providers);
}

// ---- actions (the admin API, under its own ACL) ----------------------------------------------

async function adminCall(method, path, body, done) {
  try {
    const r = await fetch(path, {
      method, credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const text = await r.text();
    if (!r.ok) {
      notice(method + " " + path + " refused: " + r.status + " " + text, true);
      return;
    }
    notice(done, false);
  } catch (e) {
    notice(method + " " + path + " failed: " + e, true);
  }
}

// ---- a sample of a scheduled queue's messages, linked to explain ------------------------------

async function sample(name) {
  const box = $("sched-sample");
  box.replaceChildren(el("p", {}, "loading " + name + "…"));
  const r = await fetch("/api/admin/inspect-sched-q/v1?limit=10&queue_name=" + encodeURIComponent(name),
                        { credentials: "same-origin" });
  if (!r.ok) {
    box.replaceChildren(el("p", {}, "inspect-sched-q: " + r.status + " " + (await r.text())));
    return;
  }
  const j = await r.json();
  const ul = el("ul", { class: "sample" });
  for (const m of j.messages || [])
    ul.append(el("li", {}, el("a", { href: "#explain/" + m.id }, m.id),
      " due " + (m.message.due || "now") + ", " + m.message.num_attempts + " attempt(s), to " + m.message.recipient));
  box.replaceChildren(el("p", {}, "Messages of " + name + " (first 10; click an id to explain it):"), ul);
}

// ---- explain ----------------------------------------------------------------------------------

function describeEvent(e) {
  const parts = [];
  if (e.queue) parts.push("queue " + e.queue);
  if (e.ready_queue) parts.push("ready queue " + e.ready_queue);
  if (e.peer) parts.push("peer " + e.peer);
  if (e.source) parts.push("source " + e.source);
  if (e.tls) parts.push("TLS " + e.tls);
  if (e.classification) parts.push("classified " + e.classification);
  if (e.attempt) parts.push("attempt " + e.attempt);
  if (e.where) parts.push("at " + e.where); // a sampled message's policy step
  return parts.join(", ");
}

async function explain(id) {
  const sec = $("explain");
  sec.hidden = false;
  $("explain-title").textContent = id;
  const body = $("explain-body");
  body.replaceChildren(el("p", {}, "loading…"));
  const r = await fetch("/api/admin/explain/v1?id=" + encodeURIComponent(id), { credentials: "same-origin" });
  if (!r.ok) {
    body.replaceChildren(el("p", {}, r.status + ": " + (await r.text())));
    return;
  }
  const j = await r.json();
  const ol = el("ol", { class: "timeline" });
  for (const e of j.events) {
    ol.append(el("li", { class: e.kind },
      el("div", {}, el("b", {}, e.kind), " ", el("span", { class: "when" }, e.time || "")),
      e.summary ? el("div", {}, e.summary) : null,
      e.response ? el("div", {}, el("code", {}, e.response)) : null,
      el("div", { class: "when" }, describeEvent(e))));
  }
  body.replaceChildren(el("p", {}, el("b", {}, "Outcome: "), j.outcome), ol);
}

function route() {
  const m = location.hash.match(/^#explain\/([0-9a-fA-F]{32})$/);
  if (m) explain(m[1]);
  else $("explain").hidden = true;
}

// ---- wiring ------------------------------------------------------------------------------------

function wireTable(tableId, t) {
  for (const th of document.querySelectorAll("#" + tableId + " th[data-sort]")) {
    th.addEventListener("click", () => {
      const v = view[t];
      if (v.sort === th.dataset.sort) v.desc = !v.desc;
      else { v.sort = th.dataset.sort; v.desc = th.dataset.sort !== "name"; }
      v.offset = 0;
      markSorted(tableId, t);
      reconnectSoon();
    });
  }
  const f = $(t + "-filter");
  f.addEventListener("input", () => {
    view[t].filter = f.value;
    view[t].offset = 0;
    reconnectSoon();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  wireTable("sched-table", "sched");
  wireTable("ready-table", "ready");
  $("explain-form").addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = "#explain/" + $("explain-id").value.trim();
    route();
  });
  $("explain-close").addEventListener("click", (e) => { e.preventDefault(); location.hash = ""; });
  window.addEventListener("hashchange", route);
  route();
  connect();
});
