/* AddressHeader and HeaderAddress userdata over a parsed addr_list, and the
 * table forms of addresses used by HeaderMap. The userdata own their copy of
 * the parsed list (freed by __gc). Accessors that need a single simple
 * address raise the errors KumoMTA documents ("no addresses", "is not a
 * simple address", "is not a simple single address"). Reactor threads. */
#include "lua/address_lua.h"

#include <jansson.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "msg/rfc2047.h"
#include "core/sbuf.h"

#define AH_MT "kumod.AddressHeader"
#define HA_MT "kumod.HeaderAddress"
#define SBUF_MT "kumod.sbuf"

static void mbox_free(addr_mailbox *m)
{
    free(m->name);
    free(m->local);
    free(m->domain);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* ---- one address ------------------------------------------------------------ */

static void push_header_address(lua_State *L, const addr_mailbox *m)
{
    addr_mailbox *ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    memset(ud, 0, sizeof(*ud));
    luaL_setmetatable(L, HA_MT);
    ud->name = dup_or_null(m->name);
    ud->local = dup_or_null(m->local);
    ud->domain = dup_or_null(m->domain);
    if ((m->name && !ud->name) || (m->local && !ud->local) || (m->domain && !ud->domain))
        luaL_error(L, "out of memory");
}

static json_t *mbox_json(const addr_mailbox *m)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", m->name ? json_string(m->name) : json_null());
    char *email = addr_spec_format(m->local, m->domain);
    json_object_set_new(o, "address", email ? json_string(email) : json_null());
    free(email);
    return o;
}

static void push_json_text(lua_State *L, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(j);
    if (!s)
        luaL_error(L, "out of memory");
    lua_pushstring(L, s);
    free(s);
}

/* The fields shared by HeaderAddress and a single-address AddressHeader. */
static int push_mbox_field(lua_State *L, const addr_mailbox *m, const char *k)
{
    if (strcmp(k, "user") == 0 || strcmp(k, "domain") == 0) {
        const char *v = k[0] == 'u' ? m->local : m->domain;
        if (!v)
            return luaL_error(L, "no address");
        lua_pushstring(L, v);
    } else if (strcmp(k, "email") == 0) {
        char *e = addr_spec_format(m->local, m->domain);
        if (e)
            lua_pushstring(L, e);
        else
            lua_pushnil(L);
        free(e);
    } else if (strcmp(k, "name") == 0) {
        if (m->name)
            lua_pushstring(L, m->name);
        else
            lua_pushnil(L);
    } else {
        lua_pushnil(L);
    }
    return 1;
}

static int l_ha_index(lua_State *L)
{
    addr_mailbox *m = luaL_checkudata(L, 1, HA_MT);
    return push_mbox_field(L, m, luaL_checkstring(L, 2));
}

static int l_ha_tostring(lua_State *L)
{
    push_json_text(L, mbox_json(luaL_checkudata(L, 1, HA_MT)));
    return 1;
}

static int l_ha_gc(lua_State *L)
{
    addr_mailbox *m = luaL_checkudata(L, 1, HA_MT);
    mbox_free(m);
    memset(m, 0, sizeof(*m));
    return 0;
}

/* ---- the header ------------------------------------------------------------- */

void klua_push_addrheader_take(lua_State *L, addr_list *l)
{
    addr_list *ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    *ud = *l;
    l->v = NULL;
    l->n = 0;
    luaL_setmetatable(L, AH_MT);
}

static const addr_mailbox *single(lua_State *L, const addr_list *l)
{
    if (l->n == 0)
        luaL_error(L, "no addresses");
    if (l->n > 1)
        luaL_error(L, "is not a simple single address");
    if (l->v[0].is_group)
        luaL_error(L, "is not a simple address");
    return &l->v[0].mbox;
}

static int l_ah_index(lua_State *L)
{
    addr_list *l = luaL_checkudata(L, 1, AH_MT);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "list") == 0) {
        /* groups are flattened into their members */
        lua_newtable(L);
        lua_Integer i = 1;
        for (size_t e = 0; e < l->n; e++) {
            const addr_entry *en = &l->v[e];
            if (!en->is_group) {
                push_header_address(L, &en->mbox);
                lua_rawseti(L, -2, i++);
                continue;
            }
            for (size_t k2 = 0; k2 < en->n_members; k2++) {
                push_header_address(L, &en->members[k2]);
                lua_rawseti(L, -2, i++);
            }
        }
        return 1;
    }
    if (strcmp(k, "user") && strcmp(k, "domain") && strcmp(k, "email") && strcmp(k, "name")) {
        lua_pushnil(L);
        return 1;
    }
    return push_mbox_field(L, single(L, l), k);
}

static int l_ah_tostring(lua_State *L)
{
    addr_list *l = luaL_checkudata(L, 1, AH_MT);
    json_t *a = json_array();
    for (size_t e = 0; e < l->n; e++) {
        const addr_entry *en = &l->v[e];
        json_t *wrap = json_object();
        if (!en->is_group) {
            json_object_set_new(wrap, "Address", mbox_json(&en->mbox));
        } else {
            json_t *g = json_object();
            json_object_set_new(g, "name",
                                en->group_name ? json_string(en->group_name) : json_null());
            json_t *members = json_array();
            for (size_t k = 0; k < en->n_members; k++)
                json_array_append_new(members, mbox_json(&en->members[k]));
            json_object_set_new(g, "addresses", members);
            json_object_set_new(wrap, "Group", g);
        }
        json_array_append_new(a, wrap);
    }
    push_json_text(L, a);
    return 1;
}

static int l_ah_gc(lua_State *L)
{
    addr_list_fini(luaL_checkudata(L, 1, AH_MT));
    return 0;
}

/* ---- table forms ---------------------------------------------------------------- */

void klua_push_mailbox_table(lua_State *L, const addr_mailbox *m)
{
    lua_createtable(L, 0, 2);
    if (m->name) {
        lua_pushstring(L, m->name);
        lua_setfield(L, -2, "name");
    }
    lua_createtable(L, 0, 2);
    if (m->local) {
        lua_pushstring(L, m->local);
        lua_setfield(L, -2, "local_part");
    }
    if (m->domain) {
        lua_pushstring(L, m->domain);
        lua_setfield(L, -2, "domain");
    }
    lua_setfield(L, -2, "address");
}

void klua_push_addrlist_table(lua_State *L, const addr_list *l)
{
    lua_createtable(L, (int)(l->n < 100000 ? l->n : 0), 0);
    for (size_t e = 0; e < l->n; e++) {
        const addr_entry *en = &l->v[e];
        if (!en->is_group) {
            klua_push_mailbox_table(L, &en->mbox);
        } else {
            lua_createtable(L, 0, 2);
            if (en->group_name) {
                lua_pushstring(L, en->group_name);
                lua_setfield(L, -2, "name");
            }
            lua_createtable(L, (int)en->n_members, 0);
            for (size_t k = 0; k < en->n_members; k++) {
                klua_push_mailbox_table(L, &en->members[k]);
                lua_rawseti(L, -2, (lua_Integer)k + 1);
            }
            lua_setfield(L, -2, "entries");
        }
        lua_rawseti(L, -2, (lua_Integer)e + 1);
    }
}

/* A display name as a phrase: atoms as they are, else a quoted string, or
 * encoded words when not ASCII. */
static void put_phrase(sbuf *b, const char *name)
{
    size_t n = strlen(name);
    bool ascii = true, plain = n > 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c >= 0x80)
            ascii = false;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c && strchr("!#$%&'*+-/=?^_`{|}~ ", c))))
            plain = false;
    }
    if (!ascii) {
        char *e = rfc2047_encode(name, n);
        if (e)
            sbuf_puts(b, e);
        else
            b->oom = true;
        free(e);
        return;
    }
    if (plain) {
        sbuf_put(b, name, n);
        return;
    }
    sbuf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        if (name[i] == '"' || name[i] == '\\')
            sbuf_putc(b, '\\');
        sbuf_putc(b, name[i]);
    }
    sbuf_putc(b, '"');
}

static const char *opt_string_field(lua_State *L, int t, const char *k, const char *what)
{
    lua_getfield(L, t, k);
    const char *v = NULL;
    if (lua_type(L, -1) == LUA_TSTRING)
        v = lua_tostring(L, -1);
    else if (!lua_isnil(L, -1))
        luaL_error(L, "%s: field '%s' must be a string", what, k);
    lua_pop(L, 1); /* the string stays referenced by the table */
    return v;
}

static void put_mailbox_table(lua_State *L, sbuf *b, int t, const char *what)
{
    t = lua_absindex(L, t);
    if (!lua_istable(L, t))
        luaL_error(L, "%s: expected a mailbox table", what);
    const char *name = opt_string_field(L, t, "name", what);
    lua_getfield(L, t, "address");
    if (!lua_istable(L, -1))
        luaL_error(L, "%s: mailbox without an 'address' table", what);
    int a = lua_gettop(L);
    const char *local = opt_string_field(L, a, "local_part", what);
    const char *domain = opt_string_field(L, a, "domain", what);
    if (!local || !domain)
        luaL_error(L, "%s: address needs local_part and domain", what);
    char *spec = addr_spec_format(local, domain);
    if (!spec)
        luaL_error(L, "out of memory");
    if (name) {
        put_phrase(b, name);
        sbuf_puts(b, " <");
        sbuf_puts(b, spec);
        sbuf_putc(b, '>');
    } else {
        sbuf_puts(b, spec);
    }
    free(spec);
    lua_pop(L, 1);
}

static int l_sbuf_gc(lua_State *L)
{
    sbuf_fini(luaL_checkudata(L, 1, SBUF_MT));
    return 0;
}

sbuf *klua_new_sbuf(lua_State *L)
{
    sbuf *b = lua_newuserdatauv(L, sizeof(*b), 0);
    memset(b, 0, sizeof(*b));
    luaL_setmetatable(L, SBUF_MT);
    return b;
}

void klua_format_addrlist_table(lua_State *L, int idx, const char *what)
{
    idx = lua_absindex(L, idx);
    luaL_checktype(L, idx, LUA_TTABLE);
    /* a userdata, so that a Lua error while formatting frees it */
    sbuf *bp = klua_new_sbuf(L);
    int box = lua_gettop(L);
    lua_getfield(L, idx, "address");
    bool single_mbox = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (single_mbox) {
        put_mailbox_table(L, bp, idx, what);
    } else {
        size_t n = lua_rawlen(L, idx);
        for (size_t i = 1; i <= n; i++) {
            if (i > 1)
                sbuf_puts(bp, ", ");
            lua_rawgeti(L, idx, (lua_Integer)i);
            int e = lua_gettop(L);
            if (!lua_istable(L, e))
                luaL_error(L, "%s: entry %d is not a table", what, (int)i);
            lua_getfield(L, e, "entries");
            if (lua_istable(L, -1)) {
                const char *gname = opt_string_field(L, e, "name", what);
                put_phrase(bp, gname ? gname : "");
                sbuf_puts(bp, ": ");
                size_t m = lua_rawlen(L, -1);
                for (size_t k = 1; k <= m; k++) {
                    if (k > 1)
                        sbuf_puts(bp, ", ");
                    lua_rawgeti(L, -1, (lua_Integer)k);
                    put_mailbox_table(L, bp, -1, what);
                    lua_pop(L, 1);
                }
                sbuf_putc(bp, ';');
            } else {
                put_mailbox_table(L, bp, e, what);
            }
            lua_pop(L, 2);
        }
    }
    if (bp->oom)
        luaL_error(L, "out of memory");
    lua_pushlstring(L, bp->p ? bp->p : "", bp->len);
    lua_remove(L, box);
}

void address_lua_open(lua_State *L)
{
    luaL_newmetatable(L, AH_MT);
    lua_pushcfunction(L, l_ah_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_ah_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, l_ah_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newmetatable(L, SBUF_MT);
    lua_pushcfunction(L, l_sbuf_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newmetatable(L, HA_MT);
    lua_pushcfunction(L, l_ha_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_ha_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, l_ha_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
}
