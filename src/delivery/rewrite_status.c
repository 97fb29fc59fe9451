/* smtp_client_rewrite_delivery_status (KumoMTA 2023.11.28). The SMTP
 * delivery hands over the responses of one transaction; each eligible one
 * is offered to the policy in turn, as KumoMTA does (one call per
 * recipient's response). A job owns copies of the queue name parts and
 * walks the responses; a handler that waits (memoize, a map lookup that
 * sleeps) resumes the job from klua's completion. Runs on the dispatcher's
 * reactor. Failures of the handler are logged and keep the response. */
#include "delivery/rewrite_status.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "lua/klua.h"
#include "msg/queue_name.h"

#define RMOD "kumod::smtp_client"
#define EVENT "smtp_client_rewrite_delivery_status"

typedef struct rwst_job {
    rwst_resp *rs;
    size_t n, next;
    queue_name_parts qn;
    bool have_qn;
    rwst_done_fn done;
    void *ud;
    bool running; /* rwst_step is on the stack */
    bool ev_done; /* the current call completed while running */
} rwst_job;

bool rwst_wanted(void)
{
    klua *vm = klua_current();
    return vm && klua_has_handler(vm, EVENT);
}

bool rwst_eligible(int code, const char *content)
{
    if (code >= 200 && code < 300)
        return false;
    return !(content && strncmp(content, "KumoMTA internal", 16) == 0);
}

/* "CODE C.S.D TEXT" (or "CODE TEXT"), line breaks as the literal "\r\n". */
static void push_single_line(lua_State *L, const rwst_resp *r)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    char head[64];
    if (r->enh_class)
        snprintf(head, sizeof(head), "%d %d.%d.%d ", r->code, r->enh_class, r->enh_subject,
                 r->enh_detail);
    else
        snprintf(head, sizeof(head), "%d ", r->code);
    luaL_addstring(&b, head);
    for (const char *p = r->content ? r->content : ""; *p; p++) {
        if (p[0] == '\r' && p[1] == '\n') {
            luaL_addstring(&b, "\\r\\n");
            p++;
        } else if (*p == '\n') {
            luaL_addstring(&b, "\\r\\n");
        } else {
            luaL_addchar(&b, *p);
        }
    }
    luaL_pushresult(&b);
}

static void push_opt(lua_State *L, const char *s)
{
    if (s)
        lua_pushstring(L, s);
    else
        lua_pushnil(L);
}

static void apply(rwst_job *j, klua_call *c, int status)
{
    rwst_resp *r = &j->rs[j->next];
    if (status != KLUA_OK) {
        DERROR(RMOD, "%s event failed: %s. Preserving original DSN", EVENT,
               klua_call_error(c));
        return;
    }
    lua_State *L = klua_call_thread(c);
    if (klua_call_nresults(c) < 1 || lua_isnil(L, 1))
        return;
    int isnum = 0;
    lua_Integer v = lua_tointegerx(L, 1, &isnum);
    if (!isnum || lua_type(L, 1) != LUA_TNUMBER || v < 200 || v > 599) {
        DERROR(RMOD, "%s event failed: it returned %s%s, not an SMTP status code. Preserving "
                     "original DSN",
               EVENT, luaL_typename(L, 1), lua_type(L, 1) == LUA_TNUMBER ? " out of range" : "");
        return;
    }
    if ((int)v == r->code)
        return;
    char *content = NULL;
    if (asprintf(&content, "%s (kumomta: status was rewritten from %d -> %d)",
                 r->content ? r->content : "", r->code, (int)v) < 0) {
        DERROR(RMOD, "%s: out of memory. Preserving original DSN", EVENT);
        return;
    }
    free(r->content);
    r->content = content;
    r->code = (int)v;
}

static void rwst_step(rwst_job *j);

static void call_done(klua_call *c, int status, void *ud)
{
    rwst_job *j = ud;
    apply(j, c, status);
    j->next++;
    if (j->running) {
        j->ev_done = true;
        return;
    }
    rwst_step(j);
}

static void job_finish(rwst_job *j)
{
    if (j->have_qn)
        queue_name_parts_fini(&j->qn);
    rwst_done_fn done = j->done;
    void *ud = j->ud;
    free(j);
    done(ud);
}

static void rwst_step(rwst_job *j)
{
    klua *vm = klua_current();
    j->running = true;
    while (j->next < j->n) {
        rwst_resp *r = &j->rs[j->next];
        if (!vm || !j->have_qn || !rwst_eligible(r->code, r->content)) {
            j->next++;
            continue;
        }
        klua_call *c;
        lua_State *co = klua_call_begin(vm, EVENT, &c);
        push_single_line(co, r);
        lua_pushstring(co, j->qn.domain);
        push_opt(co, j->qn.tenant);
        push_opt(co, j->qn.campaign);
        lua_pushstring(co, j->qn.routing_domain ? j->qn.routing_domain : j->qn.domain);
        j->ev_done = false;
        klua_call_run(c, 5, call_done, j);
        if (!j->ev_done) {
            j->running = false;
            return; /* the handler waits: call_done goes on */
        }
    }
    j->running = false;
    job_finish(j);
}

void rwst_run(rwst_resp *rs, size_t n, const char *queue_name, rwst_done_fn done, void *ud)
{
    rwst_job *j = calloc(1, sizeof(*j));
    if (!j) {
        DERROR(RMOD, "%s: out of memory. Preserving original DSN", EVENT);
        done(ud);
        return;
    }
    j->rs = rs;
    j->n = n;
    j->done = done;
    j->ud = ud;
    if (queue_name && queue_name_parse(queue_name, &j->qn) == 0)
        j->have_qn = true;
    else
        DERROR(RMOD, "%s: cannot parse the queue name '%s'", EVENT,
               queue_name ? queue_name : "(none)");
    rwst_step(j);
}
