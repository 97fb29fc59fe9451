/* The Lua faces of parsed header addresses: the AddressHeader object
 * (docs/reference/addressheader/) returned by msg:from_header() and friends,
 * its list entries, and the plain-table forms (Mailbox, Group, AddressList)
 * that HeaderMap getters return and setters accept
 * (docs/reference/headermap/_index.md). Reactor threads. */
#ifndef KUMOD_LUA_ADDRESS_LUA_H
#define KUMOD_LUA_ADDRESS_LUA_H
#include <lua.h>

#include "msg/address.h"
#include "core/sbuf.h"

/* Pushes an AddressHeader userdata; takes the contents of *l (which is left
 * empty). */
void klua_push_addrheader_take(lua_State *L, addr_list *l);
/* {name=, address={local_part=, domain=}} (name absent when NULL). */
void klua_push_mailbox_table(lua_State *L, const addr_mailbox *m);
/* An array of mailbox tables and group tables ({name=, entries={...}}). */
void klua_push_addrlist_table(lua_State *L, const addr_list *l);
/* Formats the AddressList / Mailbox table at idx as a header value
 * ("Name <local@domain>, Group: a@b;"); names are RFC 2047-encoded when not
 * ASCII. Raises a Lua error naming what when the table is malformed.
 * Pushes the string. */
void klua_format_addrlist_table(lua_State *L, int idx, const char *what);
/* A growable buffer living in a userdata pushed on L: freed by the garbage
 * collector, so a Lua error raised while it is being filled leaks nothing. */
sbuf *klua_new_sbuf(lua_State *L);
/* Registers the metatables (called for every VM). */
void address_lua_open(lua_State *L);

#endif
