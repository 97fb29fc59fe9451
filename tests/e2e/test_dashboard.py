"""Issue 23, the live dashboard: kumod serves its page at / and /ui/, its
state as server-sent events, and its tables page and filter on the server.
A real headless Chromium (selenium + chromium-driver) loads the page while
mail flows through kumod to an aiosmtpd peer: the tables update, the
Suspend button suspends a queue (checked through the admin API), the page
logs no console error and loads nothing from another origin; a screenshot
is kept as a test artifact. Unauthenticated clients get neither the page
nor the admin actions."""
import json
import os
import shutil
import smtplib
import threading
import time
import urllib.error
import urllib.request

import pytest

import kumod_harness as kh
from kumod_harness import wait_until
from smtpdeliv_peers import SmtpPeer

PEER_HOST = "127.0.0.71"
SLOW_DOMAIN = "slow.example"  # 451 for every recipient: messages stay queued
OK_DOMAIN = "ok.example"
ARTIFACTS = os.environ.get("KUMOD_TEST_ARTIFACTS",
                           os.path.join(os.path.dirname(__file__), "..", "..", "build",
                                        "test-artifacts"))


@pytest.fixture(scope="module")
def peer():
    p = SmtpPeer(host=PEER_HOST)
    p.rcpt_reply = lambda addr: ("451 4.3.0 mailbox busy, try again later (e2e)"
                                 if addr.endswith("@" + SLOW_DOMAIN) else None)
    p.start()
    yield p
    p.stop()


def policy_for(peer):
    return f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[{PEER_HOST}]' }} }} }},
    retry_interval = '1h',
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{ smtp_port = {peer.port}, enable_tls = 'Disabled',
                                 prohibited_hosts = {{}}, connection_limit = 2 }}
end)
"""


INIT = ("kumo.start_http_listener { listen = '127.0.0.1:{http_port}' }\n"
        "  kumo.start_http_listener { listen = '127.0.0.1:{port:untrusted}', "
        "trusted_hosts = { '10.9.9.9' } }")


@pytest.fixture
def k(kumod_factory, peer):
    return kumod_factory(handlers=policy_for(peer), init=INIT)


def send(k, rcpt, n=1):
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=10) as s:
        for i in range(n):
            s.sendmail("sender@src.example", [rcpt],
                       f"Subject: dashboard e2e {i}\r\n\r\nbody\r\n".encode())


def get(k, path, port=None):
    url = f"http://127.0.0.1:{port or k.http_port}{path}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers, r.read()


def api(k, method, path, body=None, port=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port or k.http_port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def state(k, **params):
    q = "&".join(f"{a}={urllib.request.quote(str(b))}" for a, b in params.items())
    st, _, body = get(k, "/api/admin/dashboard/v1/state?" + q)
    assert st == 200
    return json.loads(body)


# ---- without a browser --------------------------------------------------------------------


def test_page_and_assets_are_served_from_the_binary(k):
    for path in ("/", "/ui/", "/ui/index.html"):
        st, h, body = get(k, path)
        assert st == 200 and h["Content-Type"].startswith("text/html")
        assert b'<script src="/ui/dashboard.js"' in body
        # nothing from elsewhere: every reference is local
        assert b"http://" not in body.replace(b"http://www.w3.org", b"")
        assert b"https://" not in body
        assert "default-src 'self'" in h["Content-Security-Policy"]
    st, h, body = get(k, "/ui/dashboard.js")
    assert st == 200 and h["Content-Type"].startswith("text/javascript")
    assert b"EventSource" in body
    st, h, _ = get(k, "/ui/dashboard.css")
    assert h["Content-Type"].startswith("text/css")
    with pytest.raises(urllib.error.HTTPError) as e:
        get(k, "/ui/nope.js")
    assert e.value.code == 404


def test_state_counts_rates_and_last_response(k, peer):
    send(k, f"a@{OK_DOMAIN}", 3)
    send(k, f"b@{SLOW_DOMAIN}", 2)
    wait_until(lambda: len(k.records("TransientFailure")) >= 2 and len(k.records("Delivery")) >= 3,
               timeout=20, what="deliveries and transient failures")
    # the per-second ring is sampled once a second
    def rates_seen():
        s = state(k)
        r = s["common"]["rates"]
        return r["received"]["last_hour"] >= 5 and r["delivered"]["last_hour"] >= 3 and \
            r["transient"]["last_hour"] >= 2
    wait_until(rates_seen, timeout=10, what="rates in the ring")
    s = state(k, sched_filter=SLOW_DOMAIN)
    sched = s["view"]["scheduled"]
    assert sched["matched"] == 1 and sched["rows"][0]["name"] == SLOW_DOMAIN
    assert sched["rows"][0]["count"] == 2
    assert sched["rows"][0]["oldest_age_s"] is not None
    s = state(k, ready_filter="451")
    rows = s["view"]["ready"]["rows"]
    assert rows, s["view"]["ready"]
    lr = rows[0]["last_response"]
    assert lr["response"].startswith("451 4.3.0 mailbox busy"), lr
    assert lr["code"] == 451 and lr["category"]
    # providers group the ready queues and their responses by category
    provs = s["common"]["providers"]["rows"]
    cats = {c for p in provs for c in p["categories"]}
    assert cats, provs
    assert len(s["common"]["rates"]["delivered"]["hour"]) == 120
    assert s["common"]["spool"]["healthy"] is True


def test_event_stream_sends_state_every_second(k):
    send(k, f"c@{SLOW_DOMAIN}")
    url = f"http://127.0.0.1:{k.http_port}/api/admin/dashboard/v1/events?sched_limit=5"
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        t0 = time.monotonic()
        events = []
        buf = b""
        while len(events) < 3 and time.monotonic() - t0 < 10:
            buf += r.read1(65536)
            while b"\n\n" in buf:
                frame, buf = buf.split(b"\n\n", 1)
                for line in frame.split(b"\n"):
                    if line.startswith(b"data: "):
                        events.append(json.loads(line[6:]))
        elapsed = time.monotonic() - t0
    assert len(events) >= 3
    assert elapsed >= 1.5  # paced by the one-second tick, not a busy loop
    assert events[-1]["view"]["scheduled"]["limit"] == 5
    # the stream's end is noticed and kumod keeps serving
    time.sleep(1.5)
    assert get(k, "/api/check-liveness/v1")[0] == 200


def test_queue_tables_page_and_filter_on_the_server(kumod_factory, peer):
    """300 scheduled queues (one message each): the server sorts, filters
    and cuts the tables, and never sends more than 500 rows, however many
    queues there are."""
    k = kumod_factory(handlers=policy_for(peer), init=INIT)
    n = 300
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=30) as s:
        for i in range(n):
            s.sendmail("sender@src.example", [f"u@d{i:05d}.{SLOW_DOMAIN}"],
                       b"Subject: many\r\n\r\nbody\r\n")
    wait_until(lambda: state(k)["view"]["scheduled"]["total"] >= n, timeout=30,
               what="queues in the snapshot")
    s = state(k, sched_limit=1000, sched_sort="name", sched_desc=0)
    sched = s["view"]["scheduled"]
    assert sched["limit"] == 500 and len(sched["rows"]) == min(500, sched["total"])
    s = state(k, sched_limit=10, sched_offset=20, sched_sort="name", sched_desc=0)
    names = [r["name"] for r in s["view"]["scheduled"]["rows"]]
    assert names == sorted(names) and len(names) == 10
    s = state(k, sched_filter="d00042.")
    assert s["view"]["scheduled"]["matched"] == 1


def test_unauthenticated_clients_get_no_page_and_no_actions(k):
    port = k.port("untrusted")
    for path in ("/", "/ui/dashboard.js", "/api/admin/dashboard/v1/state",
                 "/api/admin/dashboard/v1/events"):
        with pytest.raises(urllib.error.HTTPError) as e:
            get(k, path, port=port)
        assert e.value.code == 401, path
    st, body = api(k, "POST", "/api/admin/suspend/v1",
                   {"queue_names": ["x.example"], "reason": "no"}, port=port)
    assert st == 401, body
    st, body = api(k, "GET", "/api/admin/suspend/v1")
    assert json.loads(body) == []


# ---- in a real browser ----------------------------------------------------------------------


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1500", "--disable-extensions", "--no-first-run"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or
                                            "/usr/bin/chromedriver"), options=opts)


def safe(fn):
    """fn() or False: the page re-renders every second, so an element found
    a moment ago may be gone (stale) when it is read."""
    def call():
        from selenium.common.exceptions import WebDriverException
        try:
            return fn()
        except WebDriverException:
            return False
    return call


def test_browser_dashboard_live_tables_and_suspend(k, peer):
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By
    stop = threading.Event()

    def flow():  # mail keeps flowing while the page is open
        i = 0
        while not stop.is_set():
            try:
                send(k, f"m{i}@{OK_DOMAIN}")
                if i % 3 == 0:
                    send(k, f"m{i}@{SLOW_DOMAIN}")
            except Exception:
                pass
            i += 1
            time.sleep(0.2)

    t = threading.Thread(target=flow, daemon=True)
    t.start()
    drv = chromium()
    try:
        drv.get(f"http://127.0.0.1:{k.http_port}/")
        wait_until(safe(lambda: drv.find_element(By.ID, "conn").text == "live"), timeout=20,
                   what="the event stream to connect")

        def sched_rows():
            return [r.get_attribute("data-queue")
                    for r in drv.find_elements(By.CSS_SELECTOR, "#sched-table tbody tr")]
        wait_until(safe(lambda: SLOW_DOMAIN in sched_rows()), timeout=20, what="the slow queue row")

        def delivered_card():
            return drv.find_element(By.CSS_SELECTOR, "#card-delivered .s").text
        first = wait_until(safe(delivered_card), timeout=10, what="the delivered card")
        wait_until(safe(lambda: delivered_card() != first), timeout=20, what="the totals to update")
        updated = drv.find_element(By.ID, "updated").text
        wait_until(safe(lambda: drv.find_element(By.ID, "updated").text != updated), timeout=10,
                   what="a later event")
        # the filter is applied by the server
        f = drv.find_element(By.ID, "sched-filter")
        f.send_keys("slow")
        wait_until(safe(lambda: sched_rows() == [SLOW_DOMAIN]), timeout=10, what="the filtered table")
        # Suspend, then check through the admin API
        def click_suspend():
            drv.find_element(By.CSS_SELECTOR,
                             f'#sched-table tr[data-queue="{SLOW_DOMAIN}"] button.suspend').click()
            return True
        wait_until(safe(click_suspend), timeout=10, what="the Suspend button")

        def suspended():
            st, body = api(k, "GET", "/api/admin/suspend/v1")
            return [e for e in json.loads(body) if e["reason"] == "suspended from the dashboard"]
        wait_until(suspended, timeout=10, what="the suspension")
        wait_until(safe(lambda: "suspended" in drv.find_element(
            By.CSS_SELECTOR, f'#sched-table tr[data-queue="{SLOW_DOMAIN}"]').text),
            timeout=10, what="the row to show the suspension")
        wait_until(safe(lambda: drv.find_elements(By.CSS_SELECTOR, "#admin-list button.resume")),
                   timeout=10, what="the suspension in the list")
        os.makedirs(ARTIFACTS, exist_ok=True)
        shot = os.path.join(ARTIFACTS, "dashboard.png")
        drv.save_screenshot(shot)
        assert os.path.getsize(shot) > 10000
        # Resume through the page's button
        def click_resume():
            drv.find_element(By.CSS_SELECTOR, "#admin-list button.resume").click()
            return True
        wait_until(safe(click_resume), timeout=10, what="the Resume button")
        wait_until(lambda: not suspended(), timeout=10, what="the resume")
        # no console errors, nothing loaded from another origin
        logs = drv.get_log("browser")
        errors = [l for l in logs if l["level"] == "SEVERE"]
        assert not errors, errors
        origin = f"http://127.0.0.1:{k.http_port}"
        for entry in drv.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg["method"] == "Network.requestWillBeSent":
                url = msg["params"]["request"]["url"]
                assert url.startswith(origin) or url.startswith("data:"), url
    finally:
        stop.set()
        drv.quit()
        t.join(timeout=5)
