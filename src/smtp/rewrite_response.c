/* smtp_server_rewrite_response (KumoMTA 2025.12.02): the last word of the
 * policy on every reply of the SMTP server. The handler runs to completion
 * before the reply is written, on the session's reactor. Replies are
 * written from many places of the session state machine, most of which go
 * on at once (a 421 closes, kumo.disconnect follows up), so the call is
 * synchronous: a handler that waits (sleep, DNS) cannot hold a reply back;
 * its call is detached, logged, and the reply goes out unchanged, as for
 * any other error of this event. Owns nothing beyond the call. */
#include "smtp/rewrite_response.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "lua/klua.h"

#define RMOD "kumod::smtp_server"
#define EVENT "smtp_server_rewrite_response"

typedef struct rw_result {
    bool done;
    bool changed;
    int code;
    char *msg;
} rw_result;

/* The new text: CRLF and LF both separate lines; a trailing line break adds
 * no empty line; NUL and bare CR are refused (they would corrupt the
 * reply). Returns NULL (with why set) when refused. */
static char *clean_text(const char *s, size_t n, const char **why)
{
    char *out = malloc(n + 1);
    if (!out) {
        *why = "out of memory";
        return NULL;
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == 0) {
            free(out);
            *why = "the response text holds a NUL byte";
            return NULL;
        }
        if (s[i] == '\r') {
            if (i + 1 < n && s[i + 1] == '\n')
                continue;
            free(out);
            *why = "the response text holds a bare CR";
            return NULL;
        }
        out[o++] = s[i];
    }
    while (o > 0 && out[o - 1] == '\n')
        o--;
    out[o] = 0;
    return out;
}

static void rw_done(klua_call *c, int status, void *ud)
{
    rw_result *r = ud;
    r->done = true;
    if (status != KLUA_OK) {
        DERROR(RMOD, "%s failed, reply unchanged: %s", EVENT, klua_call_error(c));
        return;
    }
    lua_State *L = klua_call_thread(c);
    int n = klua_call_nresults(c);
    int new_code = r->code;
    char *new_msg = NULL;
    if (n >= 1 && !lua_isnil(L, 1)) {
        int isnum = 0;
        lua_Integer v = lua_tointegerx(L, 1, &isnum);
        if (!isnum || lua_type(L, 1) != LUA_TNUMBER || v < 200 || v > 599) {
            DERROR(RMOD, "%s: the status it returned (%s) is not an SMTP reply code; reply "
                         "unchanged",
                   EVENT, luaL_typename(L, 1));
            return;
        }
        new_code = (int)v;
    }
    if (n >= 2 && !lua_isnil(L, 2)) {
        if (lua_type(L, 2) != LUA_TSTRING) {
            DERROR(RMOD, "%s: the response it returned is %s, not a string; reply unchanged",
                   EVENT, luaL_typename(L, 2));
            return;
        }
        size_t len;
        const char *s = lua_tolstring(L, 2, &len);
        const char *why = NULL;
        new_msg = clean_text(s, len, &why);
        if (!new_msg) {
            DERROR(RMOD, "%s: %s; reply unchanged", EVENT, why);
            return;
        }
    }
    r->code = new_code;
    r->msg = new_msg;
    r->changed = true;
}

bool smtpsrv_rewrite_response(int *code, const char *msg, const char *command, json_t *meta,
                              char **out_msg)
{
    *out_msg = NULL;
    klua *vm = klua_current();
    if (!vm || !klua_has_handler(vm, EVENT))
        return false;
    klua_call *c;
    lua_State *co = klua_call_begin(vm, EVENT, &c);
    lua_pushinteger(co, *code);
    lua_pushstring(co, msg);
    if (command) {
        /* the command line as the client sent it, without its line break */
        size_t n = strcspn(command, "\r\n");
        lua_pushlstring(co, command, n);
    } else {
        lua_pushnil(co);
    }
    if (meta)
        klua_push_connmeta(co, meta);
    else
        lua_pushnil(co);
    rw_result r = {.code = *code};
    klua_call_run(c, 4, rw_done, &r);
    if (!r.done) {
        /* the handler waits: it may finish, but the reply cannot wait for it */
        klua_call_cancel(c);
        DERROR(RMOD, "%s: the handler waited (a kumo function that yields); reply unchanged",
               EVENT);
        return false;
    }
    if (!r.changed)
        return false;
    *code = r.code;
    *out_msg = r.msg;
    return true;
}
