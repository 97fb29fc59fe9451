/* kumo.mimepart and the MimePart / HeaderMap / Header userdata. A MimePart
 * or HeaderMap handle holds a reference on its mpart, so a handle on a
 * child part stays valid whatever happens to the tree it came from; Header
 * objects are copies (as the HeaderMap page says). Typed header accessors
 * are closures over (header name, kind), one table drives both the HeaderMap
 * getters/setters and header.value. Reactor threads; errors are Lua errors
 * naming the method. */
#include "lua/mimepart_lua.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "lua/address_lua.h"
#include "msg/address.h"
#include "msg/datetime.h"
#include "msg/rfc2047.h"

#define PART_MT "kumod.MimePart"
#define MAP_MT "kumod.HeaderMap"
#define HDR_MT "kumod.Header"
#define BUILDER_MT "kumod.MimeBuilder"

enum kind {
    K_UNSTRUCTURED,
    K_ADDRESS_LIST,
    K_MAILBOX_LIST,
    K_MAILBOX,
    K_MESSAGE_ID,
    K_MESSAGE_ID_LIST,
    K_MIME_PARAMS,
    K_AUTH_RESULTS
};

static const struct typed {
    const char *method; /* HeaderMap getter; the setter is "set_" .. method */
    const char *header;
    enum kind kind;
} typed[] = {
    {"subject", "Subject", K_UNSTRUCTURED},
    {"comments", "Comments", K_UNSTRUCTURED},
    {"mime_version", "Mime-Version", K_UNSTRUCTURED},
    {"from", "From", K_MAILBOX_LIST},
    {"resent_from", "Resent-From", K_MAILBOX_LIST},
    {"to", "To", K_ADDRESS_LIST},
    {"cc", "Cc", K_ADDRESS_LIST},
    {"bcc", "Bcc", K_ADDRESS_LIST},
    {"reply_to", "Reply-To", K_ADDRESS_LIST},
    {"resent_to", "Resent-To", K_ADDRESS_LIST},
    {"resent_cc", "Resent-Cc", K_ADDRESS_LIST},
    {"resent_bcc", "Resent-Bcc", K_ADDRESS_LIST},
    {"sender", "Sender", K_MAILBOX},
    {"resent_sender", "Resent-Sender", K_MAILBOX},
    {"message_id", "Message-ID", K_MESSAGE_ID},
    {"content_id", "Content-ID", K_MESSAGE_ID},
    {"references", "References", K_MESSAGE_ID_LIST},
    {"content_type", "Content-Type", K_MIME_PARAMS},
    {"content_disposition", "Content-Disposition", K_MIME_PARAMS},
    {"content_transfer_encoding", "Content-Transfer-Encoding", K_MIME_PARAMS},
    {"authentication_results", "Authentication-Results", K_AUTH_RESULTS},
};
#define N_TYPED (sizeof(typed) / sizeof(typed[0]))

static enum kind kind_of_header(const char *name)
{
    for (size_t i = 0; i < N_TYPED; i++)
        if (strcasecmp(typed[i].header, name) == 0)
            return typed[i].kind;
    return K_UNSTRUCTURED;
}

/* ---- handles ------------------------------------------------------------------- */

void klua_push_mimepart(lua_State *L, mpart *p)
{
    mpart **ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    *ud = p;
    mpart_ref(p);
    luaL_setmetatable(L, PART_MT);
}

static mpart *check_part(lua_State *L, int idx)
{
    return *(mpart **)luaL_checkudata(L, idx, PART_MT);
}

static void push_map(lua_State *L, mpart *p)
{
    mpart **ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    *ud = p;
    mpart_ref(p);
    luaL_setmetatable(L, MAP_MT);
}

static mpart *check_map(lua_State *L, int idx)
{
    return *(mpart **)luaL_checkudata(L, idx, MAP_MT);
}

static int l_handle_gc(lua_State *L)
{
    mpart **ud = lua_touserdata(L, 1);
    mpart_unref(*ud);
    *ud = NULL;
    return 0;
}

static void nomem(lua_State *L, const void *p, const char *what)
{
    if (!p)
        luaL_error(L, "%s: out of memory", what);
}

/* ---- structured values ----------------------------------------------------------- */

static void push_mime_params(lua_State *L, const char *v, const char *what)
{
    mparams mp;
    if (mparams_parse(v, strlen(v), &mp) != 0)
        luaL_error(L, "%s: out of memory", what);
    lua_createtable(L, 0, 2);
    lua_pushstring(L, mp.value);
    lua_setfield(L, -2, "value");
    lua_createtable(L, 0, (int)mp.n);
    for (size_t i = 0; i < mp.n; i++) {
        lua_pushstring(L, mp.values[i]);
        lua_setfield(L, -2, mp.names[i]);
    }
    lua_setfield(L, -2, "parameters");
    mparams_fini(&mp);
}

/* Pushes the message ids of v ("<a@b> <c@d>") without their brackets;
 * returns how many. Raises an error for text that is not an id. */
static int push_msgids(lua_State *L, const char *v, const char *what, bool one)
{
    int n = 0;
    const char *p = v;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (!*p)
            break;
        if (*p != '<') {
            if (one && n == 0) {
                /* a bare id: accepted as it is */
                size_t l = strcspn(p, " \t");
                lua_pushlstring(L, p, l);
                p += l;
                n++;
                continue;
            }
            luaL_error(L, "%s: invalid message id list '%s'", what, v);
        }
        const char *e = strchr(p, '>');
        if (!e)
            luaL_error(L, "%s: unterminated message id in '%s'", what, v);
        lua_pushlstring(L, p + 1, (size_t)(e - p - 1));
        n++;
        p = e + 1;
    }
    if (one && n != 1)
        luaL_error(L, "%s: expected one message id in '%s'", what, v);
    return n;
}

/* Pushes the value of v interpreted as kind. */
static void push_typed(lua_State *L, const char *v, enum kind kind, const char *what)
{
    switch (kind) {
    case K_UNSTRUCTURED: {
        size_t dl;
        char *d = rfc2047_decode(v, strlen(v), &dl);
        nomem(L, d, what);
        lua_pushlstring(L, d, dl);
        free(d);
        return;
    }
    case K_ADDRESS_LIST:
    case K_MAILBOX_LIST:
    case K_MAILBOX: {
        addr_list l;
        char err[200];
        if (addr_list_parse(v, strlen(v), &l, err, sizeof(err)) != 0)
            luaL_error(L, "%s: %s", what, err);
        bool groups = false;
        for (size_t i = 0; i < l.n; i++)
            groups |= l.v[i].is_group;
        if ((kind != K_ADDRESS_LIST && groups) || (kind == K_MAILBOX && l.n != 1)) {
            addr_list_fini(&l);
            luaL_error(L, "%s: '%s' is not a %s", what, v,
                       kind == K_MAILBOX ? "single mailbox" : "mailbox list");
        }
        if (kind == K_MAILBOX)
            klua_push_mailbox_table(L, &l.v[0].mbox);
        else
            klua_push_addrlist_table(L, &l);
        addr_list_fini(&l);
        return;
    }
    case K_MESSAGE_ID:
        push_msgids(L, v, what, true);
        return;
    case K_MESSAGE_ID_LIST: {
        lua_newtable(L);
        int t = lua_gettop(L);
        int n = push_msgids(L, v, what, false);
        for (int i = n; i >= 1; i--)
            lua_rawseti(L, t, i);
        return;
    }
    case K_MIME_PARAMS:
        push_mime_params(L, v, what);
        return;
    case K_AUTH_RESULTS:
        luaL_error(L, "%s: Authentication-Results parsing is not supported by kumod yet", what);
        return;
    }
}

/* Converts the Lua value at idx into the wire form of a header of kind;
 * strings are validated by parsing them. Pushes the string. */
static void to_wire(lua_State *L, int idx, enum kind kind, const char *what)
{
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        if (kind == K_UNSTRUCTURED) {
            char *e = rfc2047_encode(s, n);
            nomem(L, e, what);
            lua_pushstring(L, e);
            free(e);
            return;
        }
        push_typed(L, s, kind, what); /* validates; the result is dropped */
        lua_pop(L, 1);
        lua_pushvalue(L, idx);
        return;
    }
    luaL_checktype(L, idx, LUA_TTABLE);
    switch (kind) {
    case K_ADDRESS_LIST:
    case K_MAILBOX_LIST:
    case K_MAILBOX:
        klua_format_addrlist_table(L, idx, what);
        return;
    case K_MESSAGE_ID_LIST: {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        size_t n = lua_rawlen(L, idx);
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, (lua_Integer)i);
            const char *id = lua_tostring(L, -1);
            if (!id)
                luaL_error(L, "%s: entry %d is not a string", what, (int)i);
            lua_pop(L, 1);
            if (i > 1)
                luaL_addchar(&b, ' ');
            luaL_addchar(&b, '<');
            luaL_addstring(&b, id);
            luaL_addchar(&b, '>');
        }
        luaL_pushresult(&b);
        return;
    }
    case K_MIME_PARAMS: {
        lua_getfield(L, idx, "value");
        const char *v = lua_tostring(L, -1);
        if (!v)
            luaL_error(L, "%s: MimeParams need a 'value' string", what);
        mparams mp = {0};
        sbuf *b = klua_new_sbuf(L); /* freed by the collector, even on error */
        int box = lua_gettop(L);
        sbuf_puts(b, v);
        lua_getfield(L, idx, "parameters");
        if (lua_istable(L, -1)) {
            lua_pushnil(L);
            while (lua_next(L, -2)) {
                const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
                const char *pv = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
                if (!k || !pv)
                    luaL_error(L, "%s: parameters must map strings to strings", what);
                mp.value = (char *)"";
                mp.names = (char **)&k;
                mp.values = (char **)&pv;
                mp.n = 1;
                char *one = mparams_format(&mp); /* ";\r\n\tname=\"value\"" */
                nomem(L, one, what);
                sbuf_puts(b, one);
                free(one);
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
        nomem(L, b->oom ? NULL : b, what);
        lua_pushlstring(L, b->p ? b->p : "", b->len);
        lua_remove(L, box);
        lua_remove(L, -2); /* the 'value' string */
        return;
    }
    default:
        luaL_error(L, "%s: expected a string", what);
        return;
    }
}

/* ---- Header ---------------------------------------------------------------------- */

typedef struct hdr_ud {
    char *name, *raw;
} hdr_ud;

static void push_header(lua_State *L, const mpart *p, size_t i)
{
    hdr_ud *h = lua_newuserdatauv(L, sizeof(*h), 0);
    memset(h, 0, sizeof(*h));
    luaL_setmetatable(L, HDR_MT);
    const mpart_hdr *f = &p->h[i];
    size_t nl = f->name_len;
    while (nl && (f->raw[nl - 1] == ' ' || f->raw[nl - 1] == '\t'))
        nl--;
    h->name = strndup(f->raw, nl);
    h->raw = mpart_hdr_value(p, i);
    if (!h->name || !h->raw)
        luaL_error(L, "out of memory");
}

static int l_hdr_index(lua_State *L)
{
    hdr_ud *h = luaL_checkudata(L, 1, HDR_MT);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "name") == 0) {
        lua_pushstring(L, h->name);
    } else if (strcmp(k, "raw_value") == 0) {
        lua_pushstring(L, h->raw);
    } else if (strcmp(k, "value") == 0) {
        push_typed(L, h->raw, kind_of_header(h->name), "header.value");
    } else if (strcmp(k, "unstructured") == 0) {
        push_typed(L, h->raw, K_UNSTRUCTURED, "header.unstructured");
    } else if (strcmp(k, "address_list") == 0) {
        push_typed(L, h->raw, K_ADDRESS_LIST, "header.address_list");
    } else if (strcmp(k, "mailbox_list") == 0) {
        push_typed(L, h->raw, K_MAILBOX_LIST, "header.mailbox_list");
    } else if (strcmp(k, "mailbox") == 0) {
        push_typed(L, h->raw, K_MAILBOX, "header.mailbox");
    } else if (strcmp(k, "message_id") == 0) {
        push_typed(L, h->raw, K_MESSAGE_ID, "header.message_id");
    } else if (strcmp(k, "message_id_list") == 0) {
        push_typed(L, h->raw, K_MESSAGE_ID_LIST, "header.message_id_list");
    } else if (strcmp(k, "mime_params") == 0) {
        push_typed(L, h->raw, K_MIME_PARAMS, "header.mime_params");
    } else if (strcmp(k, "authentication_results") == 0) {
        push_typed(L, h->raw, K_AUTH_RESULTS, "header.authentication_results");
    } else {
        lua_pushnil(L);
    }
    return 1;
}

static int l_hdr_tostring(lua_State *L)
{
    hdr_ud *h = luaL_checkudata(L, 1, HDR_MT);
    lua_pushfstring(L, "%s: %s", h->name, h->raw);
    return 1;
}

static int l_hdr_gc(lua_State *L)
{
    hdr_ud *h = luaL_checkudata(L, 1, HDR_MT);
    free(h->name);
    free(h->raw);
    h->name = h->raw = NULL;
    return 0;
}

/* ---- HeaderMap ------------------------------------------------------------------------ */

static int l_map_typed_get(lua_State *L)
{
    mpart *p = check_map(L, 1);
    const struct typed *t = &typed[lua_tointeger(L, lua_upvalueindex(1))];
    long k = mpart_hdr_find(p, t->header, 0);
    if (k < 0) {
        lua_pushnil(L);
        return 1;
    }
    char *v = mpart_hdr_value(p, (size_t)k);
    nomem(L, v, t->method);
    lua_pushstring(L, v); /* anchored while parsing */
    free(v);
    push_typed(L, lua_tostring(L, -1), t->kind, t->method);
    return 1;
}

static int l_map_typed_set(lua_State *L)
{
    mpart *p = check_map(L, 1);
    const struct typed *t = &typed[lua_tointeger(L, lua_upvalueindex(1))];
    char what[64];
    snprintf(what, sizeof(what), "set_%s", t->method);
    luaL_checkany(L, 2);
    to_wire(L, 2, t->kind, what);
    if (mpart_hdr_set(p, t->header, lua_tostring(L, -1)) != 0)
        return luaL_error(L, "%s: out of memory", what);
    return 0;
}

static int l_map_iter_next(lua_State *L)
{
    mpart *p = check_map(L, lua_upvalueindex(1));
    lua_Integer i = lua_tointeger(L, lua_upvalueindex(2));
    const char *name = lua_tostring(L, lua_upvalueindex(3));
    for (; (size_t)i < p->nh; i++) {
        if (!p->h[i].name_len)
            continue;
        if (name && mpart_hdr_find(p, name, (size_t)i) != (long)i)
            continue;
        lua_pushinteger(L, i + 1);
        lua_replace(L, lua_upvalueindex(2));
        push_header(L, p, (size_t)i);
        return 1;
    }
    lua_pushinteger(L, i);
    lua_replace(L, lua_upvalueindex(2));
    return 0;
}

static int l_map_iter(lua_State *L)
{
    check_map(L, 1);
    const char *name = luaL_optstring(L, 2, NULL);
    lua_pushvalue(L, 1);
    lua_pushinteger(L, 0);
    if (name)
        lua_pushstring(L, name);
    else
        lua_pushnil(L);
    lua_pushcclosure(L, l_map_iter_next, 3);
    return 1;
}

static int l_map_get_first_named(lua_State *L)
{
    mpart *p = check_map(L, 1);
    long k = mpart_hdr_find(p, luaL_checkstring(L, 2), 0);
    if (k < 0)
        lua_pushnil(L);
    else
        push_header(L, p, (size_t)k);
    return 1;
}

static int map_insert(lua_State *L, bool at_end, const char *what)
{
    mpart *p = check_map(L, 1);
    const char *name = luaL_checkstring(L, 2);
    size_t vl;
    const char *value = luaL_checklstring(L, 3, &vl);
    if (!*name || strpbrk(name, ": \t\r\n"))
        return luaL_error(L, "%s: invalid header name '%s'", what, name);
    char *e = rfc2047_encode(value, vl);
    nomem(L, e, what);
    int rc = mpart_hdr_insert(p, at_end ? p->nh : 0, name, e);
    free(e);
    if (rc)
        return luaL_error(L, "%s: out of memory", what);
    return 0;
}

static int l_map_append(lua_State *L)
{
    return map_insert(L, true, "append");
}

static int l_map_prepend(lua_State *L)
{
    return map_insert(L, false, "prepend");
}

static int l_map_remove_all_named(lua_State *L)
{
    mpart_hdr_remove_all(check_map(L, 1), luaL_checkstring(L, 2));
    return 0;
}

static int l_map_tostring(lua_State *L)
{
    mpart *p = check_map(L, 1);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < p->nh; i++) {
        luaL_addlstring(&b, p->h[i].raw, p->h[i].raw_len);
        luaL_addstring(&b, "\r\n");
    }
    luaL_pushresult(&b);
    return 1;
}

/* ---- MimePart --------------------------------------------------------------------- */

static void push_body(lua_State *L, mpart *p)
{
    size_t len;
    bool text;
    char *b = mpart_body_decoded(p, &len, &text);
    if (!b) {
        if (p->multipart)
            luaL_error(L, "mimepart.body: a multipart part has no body of its own");
        luaL_error(L, "mimepart.body: out of memory");
    }
    lua_pushlstring(L, b, len);
    free(b);
}

/* Text when the content type is text/... (or absent) and the data is UTF-8. */
static int set_body(lua_State *L, mpart *p, int idx, const char *ctype, const char *what)
{
    size_t len;
    const char *s = luaL_checklstring(L, idx, &len);
    char ct[128];
    if (ctype)
        snprintf(ct, sizeof(ct), "%s", ctype);
    else if (mpart_hdr_find(p, "Content-Type", 0) >= 0)
        mpart_content_type(p, ct, sizeof(ct));
    else
        snprintf(ct, sizeof(ct), "%s",
                 utf8_valid(s, len) ? "text/plain" : "application/octet-stream");
    bool text = strncmp(ct, "text/", 5) == 0 && utf8_valid(s, len);
    if (p->multipart)
        return luaL_error(L, "%s: cannot set the body of a multipart part", what);
    if (mpart_set_body(p, s, len, text, ctype) != 0)
        return luaL_error(L, "%s: out of memory", what);
    return 0;
}

mpart *mpart_find_text(mpart *p, const char *content_type)
{
    if (!p->multipart) {
        char ct[128];
        mpart_content_type(p, ct, sizeof(ct));
        mparams cd;
        long k = mpart_hdr_find(p, "Content-Disposition", 0);
        bool attachment = false;
        char *v = k >= 0 ? mpart_hdr_value(p, (size_t)k) : NULL;
        if (v && mparams_parse(v, strlen(v), &cd) == 0) {
            attachment = strcmp(cd.value, "attachment") == 0;
            mparams_fini(&cd);
        }
        free(v);
        return !attachment && strcmp(ct, content_type) == 0 ? p : NULL;
    }
    for (size_t i = 0; i < p->nkids; i++) {
        mpart *f = mpart_find_text(p->kids[i], content_type);
        if (f)
            return f;
    }
    return NULL;
}

static void collect_attachments(lua_State *L, mpart *p, int list, mpart *text, mpart *html,
                                mpart *amp, int depth)
{
    if (p->multipart) {
        for (size_t i = 0; i < p->nkids && depth < 64; i++)
            collect_attachments(L, p->kids[i], list, text, html, amp, depth + 1);
        return;
    }
    if (p == text || p == html || p == amp)
        return;
    char ct[128];
    mpart_content_type(p, ct, sizeof(ct));
    mparams cd = {0}, ctp = {0};
    bool have_cd = false, have_ct = false;
    long k = mpart_hdr_find(p, "Content-Disposition", 0);
    char *v = k >= 0 ? mpart_hdr_value(p, (size_t)k) : NULL;
    if (v && mparams_parse(v, strlen(v), &cd) == 0)
        have_cd = true;
    free(v);
    k = mpart_hdr_find(p, "Content-Type", 0);
    v = k >= 0 ? mpart_hdr_value(p, (size_t)k) : NULL;
    if (v && mparams_parse(v, strlen(v), &ctp) == 0)
        have_ct = true;
    free(v);
    /* every leaf that is not the text, html or amp body is an attachment
     * (a second text/plain in multipart/mixed is an attached file) */
    {
        lua_createtable(L, 0, 5);
        const char *fname = have_cd ? mparams_get(&cd, "filename") : NULL;
        if (!fname && have_ct)
            fname = mparams_get(&ctp, "name");
        if (fname) {
            lua_pushstring(L, fname);
            lua_setfield(L, -2, "file_name");
        }
        lua_pushboolean(L, have_cd && strcmp(cd.value, "inline") == 0);
        lua_setfield(L, -2, "inline");
        lua_pushstring(L, ct);
        lua_setfield(L, -2, "content_type");
        long c = mpart_hdr_find(p, "Content-ID", 0);
        if (c >= 0) {
            char *cid = mpart_hdr_value(p, (size_t)c);
            if (cid) {
                size_t l = strlen(cid);
                if (l >= 2 && cid[0] == '<' && cid[l - 1] == '>')
                    lua_pushlstring(L, cid + 1, l - 2);
                else
                    lua_pushstring(L, cid);
                lua_setfield(L, -2, "content_id");
            }
            free(cid);
        }
        klua_push_mimepart(L, p);
        lua_setfield(L, -2, "part");
        lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
    }
    if (have_cd)
        mparams_fini(&cd);
    if (have_ct)
        mparams_fini(&ctp);
}

void klua_push_simple_structure(lua_State *L, mpart *p)
{
    mpart *text = mpart_find_text(p, "text/plain");
    mpart *html = mpart_find_text(p, "text/html");
    mpart *amp = mpart_find_text(p, "text/x-amp-html");
    lua_createtable(L, 0, 5);
    if (text) {
        klua_push_mimepart(L, text);
        lua_setfield(L, -2, "text_part");
    }
    if (html) {
        klua_push_mimepart(L, html);
        lua_setfield(L, -2, "html_part");
    }
    if (amp) {
        klua_push_mimepart(L, amp);
        lua_setfield(L, -2, "amp_html_part");
    }
    klua_push_mimepart(L, p);
    lua_setfield(L, -2, "header_part");
    lua_newtable(L);
    collect_attachments(L, p, lua_gettop(L), text, html, amp, 0);
    lua_setfield(L, -2, "attachments");
}

static int l_part_get_simple_structure(lua_State *L)
{
    klua_push_simple_structure(L, check_part(L, 1));
    return 1;
}

static int l_part_rebuild(lua_State *L)
{
    mpart *q = mpart_rebuild(check_part(L, 1), NULL);
    nomem(L, q, "rebuild");
    klua_push_mimepart(L, q);
    mpart_unref(q);
    return 1;
}

static int l_part_append_part(lua_State *L)
{
    mpart *p = check_part(L, 1);
    mpart *c = check_part(L, 2);
    if (!p->multipart)
        return luaL_error(L, "append_part: the part is not a multipart container");
    if (c == p)
        return luaL_error(L, "append_part: a part cannot contain itself");
    if (mpart_add_child(p, c) != 0)
        return luaL_error(L, "append_part: out of memory");
    return 0;
}

static int l_part_replace_body(lua_State *L)
{
    mpart *p = check_part(L, 1);
    const char *ct = luaL_optstring(L, 3, NULL);
    return set_body(L, p, 2, ct, "replace_body");
}

static int l_part_tostring(lua_State *L)
{
    size_t len;
    char *s = mpart_serialize(check_part(L, 1), &len);
    nomem(L, s, "tostring");
    lua_pushlstring(L, s, len);
    free(s);
    return 1;
}

static int l_part_index(lua_State *L)
{
    mpart *p = check_part(L, 1);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "body") == 0) {
        push_body(L, p);
    } else if (strcmp(k, "headers") == 0) {
        push_map(L, p);
    } else if (strcmp(k, "id") == 0) {
        lua_pushstring(L, p->id);
    } else {
        luaL_getmetatable(L, PART_MT);
        lua_getfield(L, -1, "methods");
        lua_getfield(L, -1, k);
    }
    return 1;
}

static int l_part_newindex(lua_State *L)
{
    mpart *p = check_part(L, 1);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "body") != 0)
        return luaL_error(L, "mimepart: field '%s' cannot be assigned", k);
    return set_body(L, p, 3, NULL, "mimepart.body");
}

/* ---- kumo.mimepart ------------------------------------------------------------------- */

static int push_new(lua_State *L, mpart *p, const char *what)
{
    nomem(L, p, what);
    klua_push_mimepart(L, p);
    mpart_unref(p);
    return 1;
}

static int l_parse(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    mpart *p;
    if (mpart_parse(s, len, &p) != 0)
        return luaL_error(L, "kumo.mimepart.parse: out of memory");
    return push_new(L, p, "kumo.mimepart.parse");
}

static const char *check_utf8(lua_State *L, int idx, size_t *len, const char *what)
{
    const char *s = luaL_checklstring(L, idx, len);
    if (!utf8_valid(s, *len))
        luaL_error(L, "%s: CONTENT must be a UTF-8 string", what);
    return s;
}

static int l_new_text(lua_State *L)
{
    const char *ct = luaL_checkstring(L, 1);
    size_t len;
    const char *s = check_utf8(L, 2, &len, "kumo.mimepart.new_text");
    return push_new(L, mpart_new_text(ct, s, len), "kumo.mimepart.new_text");
}

static int l_new_text_plain(lua_State *L)
{
    size_t len;
    const char *s = check_utf8(L, 1, &len, "kumo.mimepart.new_text_plain");
    return push_new(L, mpart_new_text("text/plain", s, len), "kumo.mimepart.new_text_plain");
}

static int l_new_html(lua_State *L)
{
    size_t len;
    const char *s = check_utf8(L, 1, &len, "kumo.mimepart.new_html");
    return push_new(L, mpart_new_text("text/html", s, len), "kumo.mimepart.new_html");
}

static mpart *new_binary_from(lua_State *L, int ct_idx, int data_idx, int opt_idx, const char *what)
{
    const char *ct = luaL_checkstring(L, ct_idx);
    size_t len;
    const char *d = luaL_checklstring(L, data_idx, &len);
    const char *fname = NULL, *cid = NULL;
    bool is_inline = false;
    if (!lua_isnoneornil(L, opt_idx)) {
        luaL_checktype(L, opt_idx, LUA_TTABLE);
        lua_getfield(L, opt_idx, "file_name");
        fname = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
        lua_getfield(L, opt_idx, "inline");
        is_inline = lua_toboolean(L, -1);
        lua_getfield(L, opt_idx, "content_id");
        cid = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
        lua_pop(L, 3); /* strings stay anchored by the options table */
    }
    mpart *p = mpart_new_binary(ct, d, len, fname, is_inline, cid);
    nomem(L, p, what);
    return p;
}

static int l_new_binary(lua_State *L)
{
    mpart *p = new_binary_from(L, 1, 2, 3, "kumo.mimepart.new_binary");
    return push_new(L, p, "kumo.mimepart.new_binary");
}

static int l_new_multipart(lua_State *L)
{
    const char *ct = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    const char *boundary = luaL_optstring(L, 3, NULL);
    size_t n = lua_rawlen(L, 2);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, (lua_Integer)i);
        check_part(L, -1);
        lua_pop(L, 1);
    }
    mpart *p = mpart_new_multipart(ct, boundary);
    nomem(L, p, "kumo.mimepart.new_multipart");
    klua_push_mimepart(L, p);
    mpart_unref(p);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, (lua_Integer)i);
        if (mpart_add_child(p, check_part(L, -1)) != 0)
            return luaL_error(L, "kumo.mimepart.new_multipart: out of memory");
        lua_pop(L, 1);
    }
    return 1;
}

/* ---- builder -------------------------------------------------------------------------- */

/* The builder is a Lua table in a userdata's user value:
 * {text=, html=, amp=, attachments={parts...}, stable=bool}. */
static int builder_tbl(lua_State *L)
{
    luaL_checkudata(L, 1, BUILDER_MT);
    lua_getiuservalue(L, 1, 1);
    if (!lua_istable(L, -1))
        luaL_error(L, "builder: already built");
    return lua_gettop(L);
}

static int builder_set_text(lua_State *L, const char *field, const char *what)
{
    int t = builder_tbl(L);
    size_t len;
    check_utf8(L, 2, &len, what);
    lua_pushvalue(L, 2);
    lua_setfield(L, t, field);
    return 0;
}

static int l_b_text_plain(lua_State *L)
{
    return builder_set_text(L, "text", "builder:text_plain");
}

static int l_b_text_html(lua_State *L)
{
    return builder_set_text(L, "html", "builder:text_html");
}

static int l_b_text_amp_html(lua_State *L)
{
    return builder_set_text(L, "amp", "builder:text_amp_html");
}

static void builder_add_attachment(lua_State *L, int t)
{
    lua_getfield(L, t, "attachments");
    lua_insert(L, -2);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    lua_pop(L, 1);
}

static int l_b_attach(lua_State *L)
{
    int t = builder_tbl(L);
    mpart *p = new_binary_from(L, 2, 3, 4, "builder:attach");
    klua_push_mimepart(L, p);
    mpart_unref(p);
    builder_add_attachment(L, t);
    return 0;
}

static int l_b_attach_part(lua_State *L)
{
    int t = builder_tbl(L);
    check_part(L, 2);
    lua_pushvalue(L, 2);
    builder_add_attachment(L, t);
    return 0;
}

static int l_b_set_stable_content(lua_State *L)
{
    int t = builder_tbl(L);
    lua_pushboolean(L, lua_toboolean(L, 2));
    lua_setfield(L, t, "stable");
    return 0;
}

static mpart *text_field(lua_State *L, int t, const char *field, const char *ct)
{
    lua_getfield(L, t, field);
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    mpart *p = s ? mpart_new_text(ct, s, len) : NULL;
    if (s && !p)
        luaL_error(L, "builder:build: out of memory");
    lua_pop(L, 1);
    return p;
}

static int l_b_build(lua_State *L)
{
    int t = builder_tbl(L);
    lua_getfield(L, t, "stable");
    bool stable = lua_toboolean(L, -1);
    lua_pop(L, 1);
    /* each part is anchored on the Lua stack as soon as it exists */
    mpart *parts[3];
    const char *fields[3] = {"text", "html", "amp"};
    const char *cts[3] = {"text/plain", "text/html", "text/x-amp-html"};
    size_t np = 0;
    for (int i = 0; i < 3; i++) {
        mpart *p = text_field(L, t, fields[i], cts[i]);
        if (p) {
            klua_push_mimepart(L, p);
            mpart_unref(p);
            parts[np++] = p;
        }
    }
    mpart *main_part = NULL;
    if (np == 1) {
        main_part = parts[0];
    } else if (np > 1) {
        main_part = mpart_new_multipart("multipart/alternative", stable ? "ma-boundary" : NULL);
        nomem(L, main_part, "builder:build");
        klua_push_mimepart(L, main_part);
        mpart_unref(main_part);
        for (size_t i = 0; i < np; i++)
            if (mpart_add_child(main_part, parts[i]) != 0)
                return luaL_error(L, "builder:build: out of memory");
    }
    lua_getfield(L, t, "attachments");
    int atts = lua_gettop(L);
    size_t na = lua_rawlen(L, atts);
    mpart *root = main_part;
    if (na > 0) {
        root = mpart_new_multipart("multipart/mixed", stable ? "mm-boundary" : NULL);
        nomem(L, root, "builder:build");
        klua_push_mimepart(L, root);
        mpart_unref(root);
        if (main_part && mpart_add_child(root, main_part) != 0)
            return luaL_error(L, "builder:build: out of memory");
        for (size_t i = 1; i <= na; i++) {
            lua_rawgeti(L, atts, (lua_Integer)i);
            if (mpart_add_child(root, check_part(L, -1)) != 0)
                return luaL_error(L, "builder:build: out of memory");
            lua_pop(L, 1);
        }
    }
    if (!root)
        return luaL_error(L, "builder:build: no text, html or attachment was given");
    char date[64];
    if (stable)
        snprintf(date, sizeof(date), "Tue, 1 Jul 2003 10:52:37 +0200");
    else
        rfc5322_date_format((int64_t)time(NULL), date, sizeof(date));
    if (mpart_hdr_set(root, "Mime-Version", "1.0") != 0 || mpart_hdr_set(root, "Date", date) != 0)
        return luaL_error(L, "builder:build: out of memory");
    /* consumed: the builder cannot be used again */
    lua_pushnil(L);
    lua_setiuservalue(L, 1, 1);
    klua_push_mimepart(L, root);
    return 1;
}

static int l_builder(lua_State *L)
{
    lua_newuserdatauv(L, 1, 1);
    luaL_setmetatable(L, BUILDER_MT);
    lua_createtable(L, 0, 5);
    lua_newtable(L);
    lua_setfield(L, -2, "attachments");
    lua_setiuservalue(L, -2, 1);
    return 1;
}

void mimepart_lua_open(lua_State *L)
{
    /* MimePart */
    luaL_newmetatable(L, PART_MT);
    static const luaL_Reg part_methods[] = {
        {"get_simple_structure", l_part_get_simple_structure},
        {"rebuild", l_part_rebuild},
        {"append_part", l_part_append_part},
        {"replace_body", l_part_replace_body},
        {NULL, NULL},
    };
    luaL_newlib(L, part_methods);
    lua_setfield(L, -2, "methods");
    lua_pushcfunction(L, l_part_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_part_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, l_part_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, l_handle_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);

    /* HeaderMap */
    luaL_newmetatable(L, MAP_MT);
    static const luaL_Reg map_methods[] = {
        {"iter", l_map_iter},
        {"get_first_named", l_map_get_first_named},
        {"append", l_map_append},
        {"prepend", l_map_prepend},
        {"remove_all_named", l_map_remove_all_named},
        {NULL, NULL},
    };
    luaL_newlib(L, map_methods);
    for (size_t i = 0; i < N_TYPED; i++) {
        lua_pushinteger(L, (lua_Integer)i);
        lua_pushcclosure(L, l_map_typed_get, 1);
        lua_setfield(L, -2, typed[i].method);
        if (typed[i].kind == K_AUTH_RESULTS)
            continue;
        char setter[64];
        snprintf(setter, sizeof(setter), "set_%s", typed[i].method);
        lua_pushinteger(L, (lua_Integer)i);
        lua_pushcclosure(L, l_map_typed_set, 1);
        lua_setfield(L, -2, setter);
    }
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_map_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, l_handle_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);

    /* Header */
    luaL_newmetatable(L, HDR_MT);
    lua_pushcfunction(L, l_hdr_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_hdr_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, l_hdr_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);

    /* builder */
    luaL_newmetatable(L, BUILDER_MT);
    static const luaL_Reg builder_methods[] = {
        {"text_plain", l_b_text_plain},
        {"text_html", l_b_text_html},
        {"text_amp_html", l_b_text_amp_html},
        {"attach", l_b_attach},
        {"attach_part", l_b_attach_part},
        {"set_stable_content", l_b_set_stable_content},
        {"build", l_b_build},
        {NULL, NULL},
    };
    luaL_newlib(L, builder_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    /* the module, at -1 is the kumo table */
    static const luaL_Reg fns[] = {
        {"parse", l_parse},
        {"new_text", l_new_text},
        {"new_text_plain", l_new_text_plain},
        {"new_html", l_new_html},
        {"new_binary", l_new_binary},
        {"new_multipart", l_new_multipart},
        {"builder", l_builder},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    lua_setfield(L, -2, "mimepart");
}
