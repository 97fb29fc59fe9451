/* The dashboard's static files, compiled into kumod from share/ui by
 * scripts/embed-ui.cmake (the generated ui_assets.c lives in the build
 * tree), so the page works without an installed share directory and
 * without the Internet. */
#ifndef KUMOD_HTTP_UI_ASSETS_H
#define KUMOD_HTTP_UI_ASSETS_H
#include <stddef.h>

typedef struct ui_asset {
    const char *name;         /* "index.html" */
    const char *content_type; /* "text/html; charset=utf-8" */
    const unsigned char *data;
    size_t len;
} ui_asset;

extern const ui_asset ui_assets[];
extern const size_t ui_assets_count;

#endif
