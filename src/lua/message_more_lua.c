/* The Message methods added for KumoMTA policies beyond the basic header
 * and envelope accessors (message_lua.c): address headers (from_header,
 * to_header, get_address_header), import_headers, import_scheduling_header,
 * set_due, save, shrink and shrink_data, and the MIME-based methods
 * (check_fix_conformance, parse_mime, append_text_plain/html,
 * parse_rfc3464). Each follows its page in docs/reference/message/. Runs on
 * the reactor that owns the Lua VM; save and shrink wait for the spool's
 * group commit by yielding the calling coroutine (resumed on the same
 * reactor). Errors are Lua errors naming the method. */
#include <ctype.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/kerr.h"
#include "core/reactor.h"
#include "lua/address_lua.h"
#include "lua/klua.h"
#include "lua/message_lua.h"
#include "lua/mimepart_lua.h"
#include "lua/services.h"
#include "msg/address.h"
#include "msg/datetime.h"
#include "msg/headers.h"
#include "msg/mime.h"
#include "msg/rfc3464.h"
#include "msg/rfc2047.h"

/* ---- address headers ------------------------------------------------------------ */

static int address_header(lua_State *L, message *m, const char *name, const char *method)
{
    const hdr_index *ix = klua_msg_need_headers(L, m, method);
    long k = hdr_index_find(ix, name, 0);
    if (k < 0) {
        lua_pushnil(L);
        return 1;
    }
    char *v = hdr_value(&ix->fields[k]);
    if (!v)
        return luaL_error(L, "%s: out of memory", method);
    addr_list l;
    char err[200];
    int rc = addr_list_parse(v, strlen(v), &l, err, sizeof(err));
    free(v);
    if (rc != 0)
        return luaL_error(L, "%s: invalid %s header: %s", method, name, err);
    klua_push_addrheader_take(L, &l);
    return 1;
}

static int l_msg_from_header(lua_State *L)
{
    message *m = klua_msg_need_data(L, 1, "from_header");
    return address_header(L, m, "From", "from_header");
}

static int l_msg_to_header(lua_State *L)
{
    message *m = klua_msg_need_data(L, 1, "to_header");
    return address_header(L, m, "To", "to_header");
}

static int l_msg_get_address_header(lua_State *L)
{
    message *m = klua_msg_need_data(L, 1, "get_address_header");
    return address_header(L, m, luaL_checkstring(L, 2), "get_address_header");
}

/* ---- import_headers ----------------------------------------------------------------- */

enum match_mode { MATCH_FIRST, MATCH_LAST, MATCH_ALL };
enum name_transform { T_SNAKE, T_KEBAB, T_CAMEL, T_PASCAL };

typedef struct import_spec {
    const char *name; /* literal part (the '*' excluded); anchored by the SPECS table */
    size_t name_len;
    bool prefix;
    enum match_mode match;
    enum name_transform transform;
    const char *target;
    bool remove;
} import_spec;

static const char *spec_string(lua_State *L, int t, const char *k, size_t i, bool required)
{
    lua_getfield(L, t, k);
    const char *v = NULL;
    if (lua_type(L, -1) == LUA_TSTRING)
        v = lua_tostring(L, -1);
    else if (!lua_isnil(L, -1) || required)
        luaL_error(L, "import_headers: spec %d: '%s' must be a string", (int)i, k);
    lua_pop(L, 1);
    return v;
}

static void parse_spec(lua_State *L, int t, size_t i, import_spec *sp)
{
    memset(sp, 0, sizeof(*sp));
    lua_pushnil(L);
    while (lua_next(L, t)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        if (!k || (strcmp(k, "name") && strcmp(k, "match") && strcmp(k, "transform") &&
                   strcmp(k, "target") && strcmp(k, "remove")))
            luaL_error(L, "import_headers: spec %d: unknown field '%s'", (int)i,
                       k ? k : luaL_typename(L, -2));
        lua_pop(L, 1);
    }
    const char *name = spec_string(L, t, "name", i, true);
    size_t n = strlen(name);
    const char *star = strchr(name, '*');
    if (star) {
        if (n == 1)
            luaL_error(L, "import_headers: spec %d: a bare '*' pattern is not supported", (int)i);
        if (star != name + n - 1)
            luaL_error(L,
                       "import_headers: spec %d: '%s': only a single trailing '*' wildcard is "
                       "supported",
                       (int)i, name);
        sp->prefix = true;
        n--;
    }
    if (n == 0)
        luaL_error(L, "import_headers: spec %d: empty header name", (int)i);
    sp->name = name;
    sp->name_len = n;
    const char *match = spec_string(L, t, "match", i, false);
    if (!match || strcmp(match, "last") == 0)
        sp->match = MATCH_LAST;
    else if (strcmp(match, "first") == 0)
        sp->match = MATCH_FIRST;
    else if (strcmp(match, "all") == 0)
        sp->match = MATCH_ALL;
    else
        luaL_error(L, "import_headers: spec %d: invalid match '%s' (first, last or all)", (int)i,
                   match);
    const char *tr = spec_string(L, t, "transform", i, false);
    if (!tr || strcmp(tr, "snake_case") == 0)
        sp->transform = T_SNAKE;
    else if (strcmp(tr, "kebab_case") == 0)
        sp->transform = T_KEBAB;
    else if (strcmp(tr, "camel_case") == 0)
        sp->transform = T_CAMEL;
    else if (strcmp(tr, "pascal_case") == 0)
        sp->transform = T_PASCAL;
    else
        luaL_error(L,
                   "import_headers: spec %d: invalid transform '%s' (snake_case, kebab_case, "
                   "camel_case or pascal_case)",
                   (int)i, tr);
    sp->target = spec_string(L, t, "target", i, false);
    if (sp->target && sp->prefix)
        luaL_error(L, "import_headers: spec %d: 'target' cannot be used with the wildcard '%s'",
                   (int)i, name);
    lua_getfield(L, t, "remove");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
        luaL_error(L, "import_headers: spec %d: 'remove' must be a boolean", (int)i);
    sp->remove = lua_toboolean(L, -1);
    lua_pop(L, 1);
}

static bool spec_matches(const import_spec *sp, const hdr_field *f)
{
    if (sp->prefix)
        return f->name_len >= sp->name_len && strncasecmp(f->name, sp->name, sp->name_len) == 0;
    return f->name_len == sp->name_len && strncasecmp(f->name, sp->name, sp->name_len) == 0;
}

/* Pushes the metadata key of header name n[0..len) under transform t. */
static void push_key(lua_State *L, const char *n, size_t len, enum name_transform t)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    bool word_start = true, first_word = true;
    for (size_t i = 0; i < len; i++) {
        char c = n[i];
        if (c == '-' || c == '_' || c == ' ') {
            if (t == T_SNAKE)
                luaL_addchar(&b, '_');
            else if (t == T_KEBAB)
                luaL_addchar(&b, '-');
            word_start = true;
            continue;
        }
        char lc = (char)tolower((unsigned char)c);
        if (word_start && (t == T_PASCAL || (t == T_CAMEL && !first_word)))
            lc = (char)toupper((unsigned char)c);
        luaL_addchar(&b, lc);
        if (word_start)
            first_word = false;
        word_start = false;
    }
    luaL_pushresult(&b);
}

static int l_msg_import_headers(lua_State *L)
{
    message *m = klua_msg_need_data(L, 1, "import_headers");
    luaL_checktype(L, 2, LUA_TTABLE);
    size_t ns = lua_rawlen(L, 2);
    import_spec *specs = lua_newuserdatauv(L, (ns ? ns : 1) * sizeof(*specs), 0);
    for (size_t i = 0; i < ns; i++) {
        lua_rawgeti(L, 2, (lua_Integer)i + 1);
        if (!lua_istable(L, -1))
            return luaL_error(L, "import_headers: spec %d is not a table", (int)i + 1);
        parse_spec(L, lua_gettop(L), i + 1, &specs[i]);
        lua_pop(L, 1);
    }
    const hdr_index *ix = klua_msg_need_headers(L, m, "import_headers");
    lua_newtable(L); /* key -> value or array of values */
    int acc = lua_gettop(L);
    bool *drop = lua_newuserdatauv(L, ix->n ? ix->n : 1, 0);
    memset(drop, 0, ix->n ? ix->n : 1);
    bool any_drop = false;
    for (size_t k = 0; k < ix->n; k++) {
        const hdr_field *f = &ix->fields[k];
        if (f->name_len == 0)
            continue;
        const import_spec *sp = NULL;
        for (size_t i = 0; i < ns && !sp; i++)
            if (spec_matches(&specs[i], f))
                sp = &specs[i];
        if (!sp)
            continue;
        if (sp->target)
            lua_pushstring(L, sp->target);
        else
            push_key(L, f->name, f->name_len, sp->transform);
        int key = lua_gettop(L);
        if (sp->match == MATCH_ALL) {
            lua_pushvalue(L, key);
            if (lua_rawget(L, acc) != LUA_TTABLE) {
                lua_pop(L, 1);
                lua_newtable(L);
                lua_pushvalue(L, key);
                lua_pushvalue(L, -2);
                lua_rawset(L, acc);
            }
            klua_push_header_value(L, f);
            lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
            lua_pop(L, 1);
        } else {
            lua_pushvalue(L, key);
            bool have = lua_rawget(L, acc) != LUA_TNIL;
            lua_pop(L, 1);
            if (sp->match == MATCH_LAST || !have) {
                lua_pushvalue(L, key);
                klua_push_header_value(L, f);
                lua_rawset(L, acc);
            }
        }
        lua_pop(L, 1);
        if (sp->remove) {
            drop[k] = true;
            any_drop = true;
        }
    }
    lua_pushnil(L);
    while (lua_next(L, acc)) {
        char err[128];
        json_t *v = klua_to_json(L, -1, err, sizeof(err));
        if (!v)
            return luaL_error(L, "import_headers: %s", err);
        json_object_set_new(m->meta, lua_tostring(L, -2), v);
        m->meta_dirty = true;
        lua_pop(L, 1);
    }
    if (any_drop) {
        size_t len = 0;
        char *buf = hdr_index_remove(ix, m->data, m->data_len, drop, &len);
        if (!buf)
            return luaL_error(L, "import_headers: out of memory");
        message_set_data_take(m, buf, len);
    }
    return 0;
}

/* ---- scheduling ----------------------------------------------------------------- */

static int l_msg_import_scheduling_header(lua_State *L)
{
    message *m = klua_msg_need_data(L, 1, "import_scheduling_header");
    const char *name = luaL_checkstring(L, 2);
    bool remove = lua_toboolean(L, 3);
    const hdr_index *ix = klua_msg_need_headers(L, m, "import_scheduling_header");
    long k = hdr_index_find(ix, name, 0);
    if (k < 0) {
        lua_pushnil(L);
        return 1;
    }
    char *v = hdr_value(&ix->fields[k]);
    if (!v)
        return luaL_error(L, "import_scheduling_header: out of memory");
    json_error_t e;
    json_t *s = json_loads(v, JSON_REJECT_DUPLICATES, &e);
    free(v);
    if (!s)
        return luaL_error(L, "import_scheduling_header: header %s is not valid JSON: %s", name,
                          e.text);
    klua_msg_apply_scheduling(L, m, s, "import_scheduling_header");
    if (remove) {
        bool *drop = lua_newuserdatauv(L, ix->n, 0);
        for (size_t i = 0; i < ix->n; i++)
            drop[i] = hdr_name_eq(&ix->fields[i], name);
        size_t len = 0;
        char *buf = hdr_index_remove(ix, m->data, m->data_len, drop, &len);
        if (!buf)
            return luaL_error(L, "import_scheduling_header: out of memory");
        message_set_data_take(m, buf, len);
        lua_pop(L, 1);
    }
    return 1; /* the scheduling table pushed by klua_msg_apply_scheduling */
}

static int l_msg_set_due(lua_State *L)
{
    message *m = klua_check_message(L, 1);
    if (lua_isnoneornil(L, 2)) {
        m->due_ns = 0;
        return 0;
    }
    const char *s = luaL_checkstring(L, 2);
    int64_t ns;
    if (rfc3339_parse(s, &ns) != 0)
        return luaL_error(L, "set_due: '%s' is not an ISO 8601 date and time", s);
    m->due_ns = ns > 0 ? ns : 1; /* 0 means "now": a due time in 1970 is due at once too */
    return 0;
}

/* ---- save and shrink ---------------------------------------------------------- */

typedef struct save_wait {
    klua_call *c;
    reactor *r;
    message *m;
    int err;
    bool release_data;
    const char *method;
} save_wait;

static void save_resume(void *arg)
{
    save_wait *w = arg;
    lua_State *co = klua_call_thread(w->c);
    lua_checkstack(co, 4);
    message *m = w->m;
    if (w->err == 0) {
        if (w->release_data && !m->data_dirty) {
            /* the body is durable in the spool; it is loaded again on demand */
            message_set_data_take(m, NULL, 0);
            m->data_dirty = false;
        }
        lua_pushboolean(co, 1);
        lua_pushnil(co);
    } else {
        /* the spool refused it: the next save writes everything again */
        m->meta_dirty = m->data_dirty = true;
        lua_pushboolean(co, 0);
        lua_pushfstring(co, "%s: the spool failed to save the message: %s", w->method,
                        kerr_str(w->err));
    }
    message_unref(m);
    klua_call *c = w->c;
    free(w);
    klua_wait_resume(c, 2);
}

static void save_done(void *ud, int err)
{
    save_wait *w = ud; /* on a spool thread: go back to the VM's reactor */
    w->err = err;
    reactor_post(w->r, save_resume, w);
}

static int save_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    int top = lua_gettop(L);
    if (!lua_toboolean(L, top - 1))
        return lua_error(L);
    return 0;
}

/* Saves meta and data (sync: durable before the policy goes on) and, when
 * release_data, drops the in-memory body afterwards. */
static int save_and_wait(lua_State *L, message *m, bool release_data, const char *method)
{
    spool *sp = services_spool();
    if (!sp)
        return luaL_error(L, "%s: the spool is not open", method);
    reactor *r = reactor_current();
    if (!r || !lua_isyieldable(L))
        return luaL_error(L, "%s: may only be called from an event handler", method);
    save_wait *w = calloc(1, sizeof(*w));
    size_t ml;
    char *meta = w ? message_meta_to_json(m, &ml) : NULL;
    char *data = NULL;
    bool with_data = m->data && (m->data_dirty || !m->in_spool);
    if (with_data && meta) {
        data = malloc(m->data_len + 1);
        if (data)
            memcpy(data, m->data, m->data_len);
    }
    if (!w || !meta || (with_data && !data)) {
        free(w);
        free(meta);
        free(data);
        return luaL_error(L, "%s: out of memory", method);
    }
    /* nothing may raise an error from here on: the call now waits */
    klua_call *c = klua_wait_begin(L);
    if (!c) {
        free(w);
        free(meta);
        free(data);
        return luaL_error(L, "%s: may only be called from an event handler", method);
    }
    w->c = c;
    w->r = r;
    w->m = m;
    w->release_data = release_data;
    w->method = method;
    message_ref(m);
    bool first = !m->in_spool;
    m->in_spool = true;
    m->meta_dirty = false;
    if (with_data)
        m->data_dirty = false;
    if (first)
        spool_save_new(sp, &m->id, meta, ml, data, m->data_len, true, save_done, w);
    else
        spool_save(sp, &m->id, meta, ml, data, data ? m->data_len : 0, true, save_done, w);
    return lua_yieldk(L, 0, 0, save_k);
}

static int l_msg_save(lua_State *L)
{
    return save_and_wait(L, klua_check_message(L, 1), false, "save");
}

/* shrink / shrink_data: journalled first, then the body is released. A
 * message still in reception (never saved before this event) keeps its
 * body: the reception path saves it once more after the event and needs it
 * (see the report of the msgmeth branch). */
static int shrink(lua_State *L, const char *method)
{
    message *m = klua_check_message(L, 1);
    bool was_in_spool = m->in_spool;
    if (!m->data && !m->meta_dirty && m->in_spool)
        return 0; /* nothing resident to journal or release */
    return save_and_wait(L, m, was_in_spool, method);
}

static int l_msg_shrink(lua_State *L)
{
    return shrink(L, "shrink");
}

static int l_msg_shrink_data(lua_State *L)
{
    return shrink(L, "shrink_data");
}

/* ---- MIME ------------------------------------------------------------------------- */

/* Parses the message data; the tree is anchored on the Lua stack (as a
 * MimePart handle) so that an error raised later frees it. */
static mpart *parse_data(lua_State *L, message *m, const char *method)
{
    mpart *p;
    if (mpart_parse(m->data, m->data_len, &p) != 0)
        luaL_error(L, "%s: out of memory", method);
    klua_push_mimepart(L, p);
    mpart_unref(p);
    return p;
}

static void assign_tree(lua_State *L, message *m, const mpart *root, const char *method)
{
    size_t len;
    char *s = mpart_serialize(root, &len);
    if (!s)
        luaL_error(L, "%s: out of memory", method);
    message_set_data_take(m, s, len);
}

static int l_msg_parse_mime(lua_State *L)
{
    message *m = klua_msg_need_data(L, 1, "parse_mime");
    parse_data(L, m, "parse_mime");
    return 1;
}

static int l_msg_check_fix_conformance(lua_State *L)
{
    message *m = klua_msg_need_data(L, 1, "check_fix_conformance");
    const char *checks_s = luaL_optstring(L, 2, "");
    const char *fixes_s = luaL_optstring(L, 3, "");
    unsigned checks, fixes;
    char err[512];
    if (mconf_parse(checks_s, &checks, err, sizeof(err)) != 0 ||
        mconf_parse(fixes_s, &fixes, err, sizeof(err)) != 0)
        return luaL_error(L, "check_fix_conformance: %s", err);
    const char *from_charset = NULL;
    if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 4)) {
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
            if (strcmp(k, "detect_encoding") && strcmp(k, "include_encodings") &&
                strcmp(k, "exclude_encodings") && strcmp(k, "message_id"))
                return luaL_error(L, "check_fix_conformance: unknown setting '%s'", k);
            lua_pop(L, 1);
        }
        lua_getfield(L, 4, "detect_encoding");
        bool detect = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (detect) {
            /* kumod has no statistical detector: the first allowed encoding
             * that is not excluded is assumed (windows-1252 by default) */
            from_charset = "windows-1252";
            lua_getfield(L, 4, "include_encodings");
            lua_getfield(L, 4, "exclude_encodings");
            int inc = lua_gettop(L) - 1, exc = lua_gettop(L);
            size_t ni = lua_istable(L, inc) ? lua_rawlen(L, inc) : 0;
            for (size_t i = 1; i <= ni; i++) {
                lua_rawgeti(L, inc, (lua_Integer)i);
                const char *cs = lua_tostring(L, -1);
                bool excluded = false;
                size_t ne = lua_istable(L, exc) ? lua_rawlen(L, exc) : 0;
                for (size_t e = 1; cs && e <= ne; e++) {
                    lua_rawgeti(L, exc, (lua_Integer)e);
                    const char *x = lua_tostring(L, -1);
                    excluded |= x && strcasecmp(x, cs) == 0;
                    lua_pop(L, 1);
                }
                lua_pop(L, 1);
                if (cs && !excluded) {
                    from_charset = cs; /* anchored by the settings table */
                    break;
                }
            }
            lua_pop(L, 2);
        }
    }
    mpart *root = parse_data(L, m, "check_fix_conformance");
    unsigned found = mpart_conformance(root);
    unsigned check = checks & ~fixes; /* what will be fixed raises no error */
    if (check & found) {
        char *names = mconf_format(check & found);
        if (!names)
            return luaL_error(L, "check_fix_conformance: out of memory");
        lua_pushfstring(L, "Message has conformance issues: %s", names);
        free(names);
        return 1;
    }
    unsigned to_fix = fixes & found;
    if (!to_fix) {
        lua_pushnil(L);
        return 1;
    }
    if (to_fix & ~(unsigned)MCONF_MISSING_HEADERS) {
        root = mpart_rebuild(root, from_charset);
        if (!root)
            return luaL_error(L, "check_fix_conformance: out of memory");
        klua_push_mimepart(L, root);
        mpart_unref(root);
    }
    int rc = 0;
    if (to_fix & MCONF_MISSING_DATE_HEADER) {
        char date[64];
        rfc5322_date_format((int64_t)time(NULL), date, sizeof(date));
        rc |= mpart_hdr_set(root, "Date", date);
    }
    if (to_fix & MCONF_MISSING_MIME_VERSION)
        rc |= mpart_hdr_set(root, "Mime-Version", "1.0");
    if (to_fix & MCONF_MISSING_MESSAGE_ID_HEADER) {
        const char *given = NULL;
        if (lua_istable(L, 4)) {
            lua_getfield(L, 4, "message_id");
            given = lua_tostring(L, -1);
            lua_pop(L, 1); /* anchored by the settings table */
        }
        char hex[SPOOLID_HEX_LEN + 1];
        spoolid_to_hex(&m->id, hex);
        const char *dom = address_domain(m->sender);
        /* KumoMTA's form: the spool id at the sender's domain */
        const char *id =
            given ? lua_pushfstring(L, "<%s>", given) : lua_pushfstring(L, "<%s@%s>", hex, dom);
        rc |= mpart_hdr_set(root, "Message-ID", id);
    }
    if (rc)
        return luaL_error(L, "check_fix_conformance: out of memory");
    assign_tree(L, m, root, "check_fix_conformance");
    lua_pushnil(L);
    return 1;
}

static int append_text(lua_State *L, const char *ctype, const char *method)
{
    message *m = klua_msg_need_data(L, 1, method);
    size_t cl;
    const char *content = luaL_checklstring(L, 2, &cl);
    mpart *root = parse_data(L, m, method);
    mpart *part = mpart_find_text(root, ctype);
    if (!part) {
        lua_pushboolean(L, 0);
        return 1;
    }
    size_t len;
    bool text;
    char *body = mpart_body_decoded(part, &len, &text);
    if (!body)
        return luaL_error(L, "%s: out of memory", method);
    size_t at = len;
    if (strcmp(ctype, "text/html") == 0) {
        /* ahead of the closing body tag when there is one */
        for (size_t i = 0; i + 7 <= len; i++)
            if (strncasecmp(body + i, "</body>", 7) == 0) {
                at = i;
                break;
            }
    }
    char *nb = malloc(len + cl + 1);
    if (!nb) {
        free(body);
        return luaL_error(L, "%s: out of memory", method);
    }
    memcpy(nb, body, at);
    memcpy(nb + at, content, cl);
    memcpy(nb + at + cl, body + at, len - at);
    free(body);
    int rc = mpart_set_body(part, nb, len + cl, true, NULL);
    free(nb);
    if (rc)
        return luaL_error(L, "%s: out of memory", method);
    assign_tree(L, m, root, method);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_msg_append_text_plain(lua_State *L)
{
    return append_text(L, "text/plain", "append_text_plain");
}

static int l_msg_append_text_html(lua_State *L)
{
    return append_text(L, "text/html", "append_text_html");
}

/* ---- RFC 3464 ------------------------------------------------------------------------- */

/* The parser is msg/rfc3464.c, the same one that makes the OOB records of
 * a log_oob listener domain. */
static int l_msg_parse_rfc3464(lua_State *L)
{
    message *m = klua_msg_need_data(L, 1, "parse_rfc3464");
    json_t *report;
    char err[256];
    int rc = rfc3464_parse(m->data, m->data_len, &report, err, sizeof(err));
    if (rc == KERR_NOMEM)
        return luaL_error(L, "parse_rfc3464: out of memory");
    if (rc)
        return luaL_error(L, "parse_rfc3464: %s", err);
    if (!report) {
        lua_pushnil(L);
        return 1;
    }
    klua_push_json(L, report);
    json_decref(report);
    return 1;
}

void message_more_lua_methods(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"from_header", l_msg_from_header},
        {"to_header", l_msg_to_header},
        {"get_address_header", l_msg_get_address_header},
        {"import_headers", l_msg_import_headers},
        {"import_scheduling_header", l_msg_import_scheduling_header},
        {"set_due", l_msg_set_due},
        {"save", l_msg_save},
        {"shrink", l_msg_shrink},
        {"shrink_data", l_msg_shrink_data},
        {"parse_mime", l_msg_parse_mime},
        {"check_fix_conformance", l_msg_check_fix_conformance},
        {"append_text_plain", l_msg_append_text_plain},
        {"append_text_html", l_msg_append_text_html},
        {"parse_rfc3464", l_msg_parse_rfc3464},
        {NULL, NULL},
    };
    luaL_setfuncs(L, methods, 0);
}
