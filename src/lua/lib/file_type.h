/* kumo.file_type: from_bytes, from_extension, from_media_type over a
 * built-in table of the file types mail attachments commonly carry. */
#ifndef KUMOD_LUA_LIB_FILE_TYPE_H
#define KUMOD_LUA_LIB_FILE_TYPE_H
#include <stddef.h>

/* Index into the table of the type the bytes start with, or -1. */
int ftype_sniff(const unsigned char *p, size_t n);

void file_type_lua_register(void);

#endif
