/* Comment stripping for JSON (see jsonc.h): a four-state scanner over the
 * text, then jansson on the result. Pure; any thread. */
#include "lua/lib/jsonc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void jsonc_strip_comments(char *buf, size_t len)
{
    enum { CODE, STRING, LINE, BLOCK } st = CODE;
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        switch (st) {
        case CODE:
            if (c == '"') {
                st = STRING;
            } else if (c == '#') {
                st = LINE;
                buf[i] = ' ';
            } else if (c == '/' && i + 1 < len && (buf[i + 1] == '/' || buf[i + 1] == '*')) {
                st = buf[i + 1] == '/' ? LINE : BLOCK;
                buf[i] = buf[i + 1] = ' ';
                i++;
            }
            break;
        case STRING:
            if (c == '\\' && i + 1 < len)
                i++; /* the escaped character cannot end the string */
            else if (c == '"')
                st = CODE;
            break;
        case LINE:
            if (c == '\n')
                st = CODE;
            else
                buf[i] = ' ';
            break;
        case BLOCK:
            if (c == '*' && i + 1 < len && buf[i + 1] == '/') {
                buf[i] = buf[i + 1] = ' ';
                i++;
                st = CODE;
            } else if (c != '\n') {
                buf[i] = ' ';
            }
            break;
        }
    }
}

json_t *jsonc_parse(const char *text, size_t len, char *err, size_t errlen)
{
    char *copy = malloc(len ? len : 1);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    memcpy(copy, text, len);
    jsonc_strip_comments(copy, len);
    json_error_t e;
    json_t *j = json_loadb(copy, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    free(copy);
    if (!j)
        snprintf(err, errlen, "line %d column %d: %s", e.line, e.column, e.text);
    return j;
}
