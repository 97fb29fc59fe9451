/* Message and EnvelopeAddress userdata for policies. Methods that change
 * the data rebuild the buffer (messages are edited a few times at reception,
 * not in a loop) and mark the message dirty so the spool writes it again.
 * Errors are raised as Lua errors naming the method. */
#include "lua/message_lua.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/duration.h"
#include "core/utf8.h"
#include "lua/address_lua.h"
#include "lua/klua.h"
#include "lua/luajson.h"
#include "msg/headers.h"
#include "msg/queue_name.h"
#include "msg/rfc2047.h"

#define MSG_MT "kumod.Message"
#define ADDR_MT "kumod.EnvelopeAddress"

void klua_push_message(lua_State *L, message *m)
{
    message **ud = lua_newuserdatauv(L, sizeof(message *), 0);
    message_ref(m);
    *ud = m;
    luaL_setmetatable(L, MSG_MT);
    if (m->trace) /* sampled: the event call about to start notes its handlers */
        klua_call_trace(L, m->trace);
}

void klua_msg_trace(lua_State *L, message *m, const char *kind, const char *fmt, ...)
{
    if (!m->trace)
        return;
    char where[128], detail[512];
    klua_where(L, 1, where, sizeof(where));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    msgtrace_add(m->trace, kind, where, "%s", detail);
}

/* A JSON value as compact text for a trace (malloc'd; NULL on failure). */
static char *trace_json(const json_t *v)
{
    return json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
}

message *klua_check_message(lua_State *L, int idx)
{
    message **ud = luaL_checkudata(L, idx, MSG_MT);
    if (!*ud)
        luaL_error(L, "message has been released");
    return *ud;
}

static int l_msg_gc(lua_State *L)
{
    message **ud = luaL_checkudata(L, 1, MSG_MT);
    message_unref(*ud);
    *ud = NULL;
    return 0;
}

/* ---- addresses ----------------------------------------------------------- */

void klua_push_address(lua_State *L, const char *addr)
{
    size_t n = strlen(addr);
    char *ud = lua_newuserdatauv(L, n + 1, 0);
    memcpy(ud, addr, n + 1);
    luaL_setmetatable(L, ADDR_MT);
}

const char *klua_check_address(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TSTRING) {
        /* the envelope is stored as JSON text: refuse what could not be */
        size_t len;
        const char *a = lua_tolstring(L, idx, &len);
        if (!utf8_valid(a, len) || strlen(a) != len)
            luaL_argerror(L, idx, "address is not valid UTF-8 text");
        return a;
    }
    return luaL_checkudata(L, idx, ADDR_MT);
}

static int l_addr_index(lua_State *L)
{
    const char *a = luaL_checkudata(L, 1, ADDR_MT);
    const char *k = luaL_checkstring(L, 2);
    const char *at = strrchr(a, '@');
    if (strcmp(k, "user") == 0 || strcmp(k, "local_part") == 0) {
        size_t n = at ? (size_t)(at - a) : strlen(a);
        if (n >= 2 && a[0] == '"' && a[n - 1] == '"') {
            /* the normalized local part: quotes and quoted-pair
             * backslashes removed ("f\oo"@x -> foo, "info@"@x -> info@) */
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            for (size_t i = 1; i + 1 < n; i++) {
                if (a[i] == '\\' && i + 2 < n)
                    i++;
                luaL_addchar(&b, a[i]);
            }
            luaL_pushresult(&b);
        } else {
            lua_pushlstring(L, a, n);
        }
    } else if (strcmp(k, "domain") == 0) {
        lua_pushstring(L, at ? at + 1 : "");
    } else if (strcmp(k, "email") == 0) {
        lua_pushstring(L, a);
    } else {
        lua_pushnil(L);
    }
    return 1;
}

static int l_addr_tostring(lua_State *L)
{
    lua_pushstring(L, luaL_checkudata(L, 1, ADDR_MT));
    return 1;
}

static int l_addr_eq(lua_State *L)
{
    const char *a = luaL_testudata(L, 1, ADDR_MT);
    const char *b = luaL_testudata(L, 2, ADDR_MT);
    lua_pushboolean(L, a && b && strcmp(a, b) == 0);
    return 1;
}

static int l_addr_tojson(lua_State *L)
{
    lua_pushstring(L, luaL_checkudata(L, 1, ADDR_MT));
    return 1;
}

/* ---- envelope ------------------------------------------------------------ */

static int l_msg_id(lua_State *L)
{
    message *m = klua_check_message(L, 1);
    char hex[SPOOLID_HEX_LEN + 1];
    spoolid_to_hex(&m->id, hex);
    lua_pushstring(L, hex);
    return 1;
}

static int l_msg_sender(lua_State *L)
{
    klua_push_address(L, klua_check_message(L, 1)->sender);
    return 1;
}

static int l_msg_set_sender(lua_State *L)
{
    message *m = klua_check_message(L, 1);
    message_set_sender(m, klua_check_address(L, 2));
    if (m->trace)
        klua_msg_trace(L, m, "set_sender", "sender = %s", m->sender);
    return 0;
}

static int l_msg_recipient_list(lua_State *L)
{
    message *m = klua_check_message(L, 1);
    lua_createtable(L, (int)m->n_rcpts, 0);
    for (size_t i = 0; i < m->n_rcpts; i++) {
        klua_push_address(L, m->rcpts[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static int l_msg_recipient(lua_State *L)
{
    message *m = klua_check_message(L, 1);
    if (m->n_rcpts == 1) {
        klua_push_address(L, m->rcpts[0]);
        return 1;
    }
    return l_msg_recipient_list(L);
}

static int l_msg_set_recipient(lua_State *L)
{
    message *m = klua_check_message(L, 1);
    if (lua_type(L, 2) == LUA_TTABLE) {
        size_t n = lua_rawlen(L, 2);
        const char **list = calloc(n ? n : 1, sizeof(char *));
        if (!list)
            return luaL_error(L, "set_recipient: out of memory");
        for (size_t i = 0; i < n; i++) {
            lua_rawgeti(L, 2, (lua_Integer)i + 1);
            list[i] = klua_check_address(L, -1);
            lua_pop(L, 1); /* strings stay anchored by the table */
        }
        message_set_recipients(m, list, n);
        free(list);
    } else {
        const char *one = klua_check_address(L, 2);
        message_set_recipients(m, &one, 1);
    }
    if (m->trace)
        klua_msg_trace(L, m, "set_recipient", "recipient = %s%s", m->n_rcpts ? m->rcpts[0] : "",
                       m->n_rcpts > 1 ? " (and more)" : "");
    return 0;
}

static int l_msg_queue_name(lua_State *L)
{
    char *q = queue_name_of_message(klua_check_message(L, 1));
    lua_pushstring(L, q);
    free(q);
    return 1;
}

static int l_msg_num_attempts(lua_State *L)
{
    lua_pushinteger(L, klua_check_message(L, 1)->num_attempts);
    return 1;
}

static int l_msg_increment_num_attempts(lua_State *L)
{
    klua_check_message(L, 1)->num_attempts++;
    return 0;
}

static int l_msg_set_force_sync(lua_State *L)
{
    klua_check_message(L, 1)->force_sync = lua_toboolean(L, 2);
    return 0;
}

/* ---- meta ---------------------------------------------------------------- */

static int l_msg_get_meta(lua_State *L)
{
    message *m = klua_check_message(L, 1);
    klua_push_json(L, json_object_get(m->meta, luaL_checkstring(L, 2)));
    return 1;
}

static int l_msg_set_meta(lua_State *L)
{
    message *m = klua_check_message(L, 1);
    const char *k = luaL_checkstring(L, 2);
    char err[256];
    json_t *v = klua_to_json(L, 3, err, sizeof(err));
    if (!v)
        return luaL_error(L, "set_meta('%s'): %s", k, err);
    if (m->trace) {
        char *t = json_is_null(v) ? NULL : trace_json(v);
        if (t)
            klua_msg_trace(L, m, "set_meta", "meta %s = %s", k, t);
        else
            klua_msg_trace(L, m, "set_meta", "meta %s removed", k);
        free(t);
    }
    if (json_is_null(v)) {
        json_decref(v);
        json_object_del(m->meta, k);
    } else {
        json_object_set_new(m->meta, k, v);
    }
    m->meta_dirty = true;
    return 0;
}

/* ---- data and headers ----------------------------------------------------- */

message *klua_msg_need_data(lua_State *L, int idx, const char *method)
{
    message *m = klua_check_message(L, idx);
    if (!m->data)
        luaL_error(L, "%s: message data is not loaded", method);
    return m;
}

static int l_msg_get_data(lua_State *L)
{
    message *m = klua_msg_need_data(L, 1, "get_data");
    lua_pushlstring(L, m->data, m->data_len);
    return 1;
}

static int l_msg_set_data(lua_State *L)
{
    message *m = klua_check_message(L, 1);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    if (message_set_data(m, s, len) != 0)
        return luaL_error(L, "set_data: out of memory");
    return 0;
}

static void replace_data(lua_State *L, message *m, char *buf, size_t len, const char *method)
{
    if (!buf)
        luaL_error(L, "%s: out of memory", method);
    message_set_data_take(m, buf, len);
}

/* The message's header index (parsed once per data version, shared by
 * every header method: each method is then linear in the header block). */
const hdr_index *klua_msg_need_headers(lua_State *L, message *m, const char *method)
{
    const hdr_index *ix = message_headers(m);
    if (!ix)
        luaL_error(L, "%s: out of memory", method);
    return ix;
}

/* Pushes a field's value decoded to UTF-8 (RFC 2047 words decoded, bytes
 * that are not UTF-8 replaced). */
void klua_push_header_value(lua_State *L, const hdr_field *f)
{
    char *v = hdr_value(f);
    size_t dl = 0;
    char *d = v ? rfc2047_decode(v, strlen(v), &dl) : NULL;
    free(v);
    if (!d)
        luaL_error(L, "out of memory");
    lua_pushlstring(L, d, dl);
    free(d);
}

static int insert_header(lua_State *L, bool at_end, const char *method)
{
    message *m = klua_msg_need_data(L, 1, method);
    const char *name = luaL_checkstring(L, 2);
    size_t vl;
    const char *value = luaL_checklstring(L, 3, &vl);
    bool encode = lua_toboolean(L, 4);
    if (!*name || strpbrk(name, ": \t\r\n"))
        return luaL_error(L, "%s: invalid header name '%s'", method, name);
    char *enc = NULL;
    if (encode) {
        /* RFC 2047 for non-ASCII values; ASCII values are folded below */
        enc = rfc2047_encode(value, vl);
        if (!enc)
            return luaL_error(L, "%s: out of memory", method);
        value = enc;
    }
    size_t fl;
    char *field = hdr_format_field(name, value, &fl);
    free(enc);
    if (!field)
        return luaL_error(L, "%s: out of memory", method);
    const hdr_index *ix = message_headers(m);
    size_t len = 0;
    char *buf = ix ? hdr_index_insert(ix, m->data, m->data_len, at_end, field, fl, &len) : NULL;
    free(field);
    replace_data(L, m, buf, len, method);
    if (m->trace)
        klua_msg_trace(L, m, method, "%s: %s", name, lua_tostring(L, 3)); /* value may be freed */
    return 0;
}

static int l_msg_prepend_header(lua_State *L)
{
    return insert_header(L, false, "prepend_header");
}

static int l_msg_append_header(lua_State *L)
{
    return insert_header(L, true, "append_header");
}

static int l_msg_get_first_named_header_value(lua_State *L)
{
    message *m = klua_msg_need_data(L, 1, "get_first_named_header_value");
    const char *name = luaL_checkstring(L, 2);
    const hdr_index *ix = klua_msg_need_headers(L, m, "get_first_named_header_value");
    long k = hdr_index_find(ix, name, 0);
    if (k < 0)
        lua_pushnil(L);
    else
        klua_push_header_value(L, &ix->fields[k]);
    return 1;
}

static int l_msg_get_all_named_header_values(lua_State *L)
{
    message *m = klua_msg_need_data(L, 1, "get_all_named_header_values");
    const char *name = luaL_checkstring(L, 2);
    const hdr_index *ix = klua_msg_need_headers(L, m, "get_all_named_header_values");
    lua_newtable(L);
    lua_Integer i = 1;
    for (long k = hdr_index_find(ix, name, 0); k >= 0;
         k = hdr_index_find(ix, name, (size_t)k + 1)) {
        klua_push_header_value(L, &ix->fields[k]);
        lua_rawseti(L, -2, i++);
    }
    return 1;
}

static int l_msg_get_all_headers(lua_State *L)
{
    message *m = klua_msg_need_data(L, 1, "get_all_headers");
    const hdr_index *ix = klua_msg_need_headers(L, m, "get_all_headers");
    lua_createtable(L, (int)(ix->n < 1000000 ? ix->n : 0), 0);
    lua_Integer i = 1;
    for (size_t k = 0; k < ix->n; k++) {
        const hdr_field *f = &ix->fields[k];
        if (f->name_len == 0)
            continue;
        lua_createtable(L, 2, 0);
        lua_pushlstring(L, f->name, f->name_len);
        lua_rawseti(L, -2, 1);
        klua_push_header_value(L, f);
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, i++);
    }
    return 1;
}

/* Removes the fields flagged in drop (ix->n entries) in one pass. */
static void remove_flagged(lua_State *L, message *m, const hdr_index *ix, bool *drop,
                           const char *method)
{
    size_t len = 0;
    char *buf = hdr_index_remove(ix, m->data, m->data_len, drop, &len);
    free(drop);
    replace_data(L, m, buf, len, method);
}

static bool *new_flags(lua_State *L, const hdr_index *ix, const char *method)
{
    bool *f = calloc(ix->n ? ix->n : 1, sizeof(bool));
    if (!f)
        luaL_error(L, "%s: out of memory", method);
    return f;
}

static int l_msg_remove_all_named_headers(lua_State *L)
{
    message *m = klua_msg_need_data(L, 1, "remove_all_named_headers");
    const char *name = luaL_checkstring(L, 2);
    const hdr_index *ix = klua_msg_need_headers(L, m, "remove_all_named_headers");
    if (hdr_index_find(ix, name, 0) < 0)
        return 0;
    bool *drop = new_flags(L, ix, "remove_all_named_headers");
    for (size_t k = 0; k < ix->n; k++)
        drop[k] = hdr_name_eq(&ix->fields[k], name);
    remove_flagged(L, m, ix, drop, "remove_all_named_headers");
    if (m->trace)
        klua_msg_trace(L, m, "remove_header", "removed every %s header", name);
    return 0;
}

/* "X-Campaign-ID" -> "x_campaign_id" */
static void meta_key_of_header(const char *name, size_t n, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < outlen; i++)
        out[o++] = name[i] == '-' ? '_' : (char)tolower((unsigned char)name[i]);
    out[o] = 0;
}

static bool name_in_list(lua_State *L, int list, const char *name, size_t n)
{
    size_t count = lua_rawlen(L, list);
    for (size_t i = 1; i <= count; i++) {
        lua_rawgeti(L, list, (lua_Integer)i);
        const char *want = lua_tostring(L, -1);
        bool eq = want && strlen(want) == n && strncasecmp(want, name, n) == 0;
        lua_pop(L, 1);
        if (eq)
            return true;
    }
    return false;
}

static bool is_x_header(const hdr_field *f)
{
    return f->name_len >= 2 && strncasecmp(f->name, "X-", 2) == 0;
}

/* Sets meta[key] to the decoded value of f. */
static void set_meta_from_field(lua_State *L, message *m, const char *key, const hdr_field *f)
{
    klua_push_header_value(L, f);
    size_t vl;
    const char *v = lua_tolstring(L, -1, &vl);
    json_object_set_new(m->meta, key, json_stringn(v, vl));
    lua_pop(L, 1);
    m->meta_dirty = true;
}

static int l_msg_import_x_headers(lua_State *L)
{
    message *m = klua_msg_need_data(L, 1, "import_x_headers");
    bool have_list = lua_type(L, 2) == LUA_TTABLE;
    const hdr_index *ix = klua_msg_need_headers(L, m, "import_x_headers");
    for (size_t k = 0; k < ix->n; k++) {
        const hdr_field *f = &ix->fields[k];
        if (f->name_len == 0)
            continue;
        bool want = have_list ? name_in_list(L, 2, f->name, f->name_len) : is_x_header(f);
        if (!want)
            continue;
        char key[256];
        meta_key_of_header(f->name, f->name_len, key, sizeof(key));
        set_meta_from_field(L, m, key, f);
        if (m->trace) {
            char *t = trace_json(json_object_get(m->meta, key));
            klua_msg_trace(L, m, "set_meta", "meta %s = %s (import_x_headers)", key, t ? t : "?");
            free(t);
        }
    }
    return 0;
}

static int l_msg_remove_x_headers(lua_State *L)
{
    message *m = klua_msg_need_data(L, 1, "remove_x_headers");
    bool have_list = lua_type(L, 2) == LUA_TTABLE;
    const hdr_index *ix = klua_msg_need_headers(L, m, "remove_x_headers");
    bool *drop = new_flags(L, ix, "remove_x_headers");
    bool any = false;
    for (size_t k = 0; k < ix->n; k++) {
        const hdr_field *f = &ix->fields[k];
        drop[k] =
            f->name_len && (have_list ? name_in_list(L, 2, f->name, f->name_len) : is_x_header(f));
        any |= drop[k];
    }
    if (!any) {
        free(drop);
        return 0;
    }
    remove_flagged(L, m, ix, drop, "remove_x_headers");
    if (m->trace)
        klua_msg_trace(L, m, "remove_header", "remove_x_headers");
    return 0;
}

/* ---- scheduling ------------------------------------------------------------ */

int klua_msg_apply_scheduling(lua_State *L, message *m, json_t *s, const char *method)
{
    static const char *const keys[] = {"first_attempt", "expires", "dow", "tz",
                                       "start",         "end",     NULL};
    if (!json_is_object(s)) {
        json_decref(s);
        return luaL_error(L, "%s: the scheduling parameters must be an object", method);
    }
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v)
    {
        bool ok = false;
        for (int i = 0; keys[i]; i++)
            ok |= strcmp(keys[i], k) == 0;
        if (!ok) {
            /* k lives in s: format the message before s goes */
            luaL_where(L, 1);
            lua_pushfstring(L, "%s: unknown field '%s'", method, k);
            lua_concat(L, 2);
            json_decref(s);
            return lua_error(L);
        }
    }
    int window = !!json_object_get(s, "dow") + !!json_object_get(s, "tz") +
                 !!json_object_get(s, "start") + !!json_object_get(s, "end");
    if (window != 0 && window != 4) {
        json_decref(s);
        return luaL_error(L, "%s: dow, tz, start and end must be given together", method);
    }
    json_decref(m->scheduling);
    m->scheduling = s;
    m->meta_dirty = true;
    klua_push_json(L, s);
    return 1;
}

static int l_msg_set_scheduling(lua_State *L)
{
    message *m = klua_check_message(L, 1);
    if (lua_isnoneornil(L, 2)) {
        json_decref(m->scheduling);
        m->scheduling = NULL;
        m->meta_dirty = true;
        lua_pushnil(L);
        return 1;
    }
    luaL_checktype(L, 2, LUA_TTABLE);
    char err[256];
    json_t *s = klua_to_json(L, 2, err, sizeof(err));
    if (!s)
        return luaL_error(L, "set_scheduling: %s", err);
    return klua_msg_apply_scheduling(L, m, s, "set_scheduling");
}

static int l_msg_get_scheduling(lua_State *L)
{
    klua_push_json(L, klua_check_message(L, 1)->scheduling);
    return 1;
}

static int l_msg_tostring(lua_State *L)
{
    message *m = klua_check_message(L, 1);
    char hex[SPOOLID_HEX_LEN + 1];
    spoolid_to_hex(&m->id, hex);
    lua_pushfstring(L, "Message(%s)", hex);
    return 1;
}

void message_lua_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"id", l_msg_id},
        {"sender", l_msg_sender},
        {"set_sender", l_msg_set_sender},
        {"recipient", l_msg_recipient},
        {"recipient_list", l_msg_recipient_list},
        {"set_recipient", l_msg_set_recipient},
        {"queue_name", l_msg_queue_name},
        {"num_attempts", l_msg_num_attempts},
        {"increment_num_attempts", l_msg_increment_num_attempts},
        {"set_force_sync", l_msg_set_force_sync},
        {"get_meta", l_msg_get_meta},
        {"set_meta", l_msg_set_meta},
        {"get_data", l_msg_get_data},
        {"set_data", l_msg_set_data},
        {"prepend_header", l_msg_prepend_header},
        {"append_header", l_msg_append_header},
        {"get_first_named_header_value", l_msg_get_first_named_header_value},
        {"get_all_named_header_values", l_msg_get_all_named_header_values},
        {"get_all_headers", l_msg_get_all_headers},
        {"remove_all_named_headers", l_msg_remove_all_named_headers},
        {"import_x_headers", l_msg_import_x_headers},
        {"remove_x_headers", l_msg_remove_x_headers},
        {"set_scheduling", l_msg_set_scheduling},
        {"get_scheduling", l_msg_get_scheduling},
        {NULL, NULL},
    };
    luaL_newmetatable(L, MSG_MT);
    luaL_newlib(L, methods);
    message_more_lua_methods(L);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_msg_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_msg_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);

    address_lua_open(L);
    luaL_newmetatable(L, ADDR_MT);
    lua_pushcfunction(L, l_addr_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_addr_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, l_addr_eq);
    lua_setfield(L, -2, "__eq");
    lua_pushcfunction(L, l_addr_tojson);
    lua_setfield(L, -2, "__tojson");
    lua_pop(L, 1);
}

void message_lua_add_method(lua_State *L, const char *name, lua_CFunction fn)
{
    luaL_getmetatable(L, MSG_MT);
    lua_getfield(L, -1, "__index");
    lua_pushcfunction(L, fn);
    lua_setfield(L, -2, name);
    lua_pop(L, 2);
}
