/* kumo.file_type. KumoMTA answers from the Rust file_type crate's database
 * (thousands of types from Wikidata, PRONOM and others); kumod carries a
 * table of the types that mail policies look at in attachments: documents,
 * archives, images, audio/video, executables and text formats, with the
 * names, extensions and media types that database gives them. Bytes that
 * match no signature are "Plain text" when they are valid UTF-8 text, else
 * "Arbitrary binary data". Pure table lookups; any thread. */
#include "lua/lib/file_type.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "lua/klua.h"

struct ftype {
    const char *name;
    const char *const *ext;
    const char *const *media;
    const char *magic; /* NULL: no signature */
    size_t magic_len;
    size_t offset;
};

#define L_(...) ((const char *const[]){__VA_ARGS__, NULL})
#define M_(s) s, sizeof(s) - 1

static const struct ftype types[] = {
    {"Java class file", L_("class"),
     L_("application/java", "application/java-byte-code", "application/java-vm",
        "application/x-httpd-java", "application/x-java", "application/x-java-class",
        "application/x-java-vm"),
     M_("\xCA\xFE\xBA\xBE"), 0},
    {"Portable Network Graphics", L_("png"), L_("image/png"), M_("\x89PNG\r\n\x1a\n"), 0},
    {"JPEG File Interchange Format", L_("jpg", "jpeg", "jpe", "jfif"), L_("image/jpeg"),
     M_("\xFF\xD8\xFF"), 0},
    {"Graphics Interchange Format", L_("gif"), L_("image/gif"), M_("GIF8"), 0},
    {"Windows Bitmap", L_("bmp", "dib"), L_("image/bmp", "image/x-bmp"), M_("BM"), 0},
    {"Tagged Image File Format", L_("tif", "tiff"), L_("image/tiff"), M_("II*\0"), 0},
    {"WebP", L_("webp"), L_("image/webp"), M_("WEBP"), 8},
    {"Portable Document Format", L_("pdf"), L_("application/pdf"), M_("%PDF-"), 0},
    {"ZIP format", L_("zip"), L_("application/zip", "application/x-zip-compressed"),
     M_("PK\x03\x04"), 0},
    {"GZIP Format", L_("gz", "tgz"), L_("application/gzip", "application/x-gzip"), M_("\x1F\x8B"),
     0},
    {"bzip2", L_("bz2"), L_("application/x-bzip2"), M_("BZh"), 0},
    {"XZ", L_("xz"), L_("application/x-xz"),
     M_("\xFD"
        "7zXZ\0"),
     0},
    {"7z", L_("7z"), L_("application/x-7z-compressed"), M_("7z\xBC\xAF\x27\x1C"), 0},
    {"RAR", L_("rar"), L_("application/vnd.rar", "application/x-rar-compressed"),
     M_("Rar!\x1A\x07"), 0},
    {"Microsoft Compound File Binary Format", L_("doc", "xls", "ppt", "msg"),
     L_("application/x-ole-storage", "application/msword", "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint"),
     M_("\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1"), 0},
    {"Rich Text Format", L_("rtf"), L_("application/rtf", "text/rtf"), M_("{\\rtf"), 0},
    {"Windows Portable Executable", L_("exe", "dll", "scr", "com"),
     L_("application/vnd.microsoft.portable-executable", "application/x-msdownload"), M_("MZ"), 0},
    {"Executable and Linkable Format", L_("elf", "so", "o"), L_("application/x-elf"),
     M_("\x7F"
        "ELF"),
     0},
    {"MP3", L_("mp3"), L_("audio/mpeg"), M_("ID3"), 0},
    {"Ogg", L_("ogg", "oga", "ogv"), L_("application/ogg", "audio/ogg"), M_("OggS"), 0},
    {"Waveform Audio File Format", L_("wav"), L_("audio/wav", "audio/x-wav"), M_("WAVE"), 8},
    {"ISO base media file format", L_("mp4", "m4a", "m4v", "mov"), L_("video/mp4"), M_("ftyp"), 4},
    {"WebAssembly", L_("wasm"), L_("application/wasm"), M_("\0asm"), 0},
    {"Q1193600", L_("markdown", "md", "mdown", "mdtext", "mdtxt", "mkd"), L_("text/markdown"), NULL,
     0, 0},
    {"HyperText Markup Language", L_("html", "htm"), L_("text/html"), NULL, 0, 0},
    {"Comma-separated values", L_("csv"), L_("text/csv"), NULL, 0, 0},
    {"JavaScript Object Notation", L_("json"), L_("application/json"), NULL, 0, 0},
    {"Extensible Markup Language", L_("xml"), L_("application/xml", "text/xml"), M_("<?xml"), 0},
    {"vCard", L_("vcf", "vcard"), L_("text/vcard", "text/x-vcard"), M_("BEGIN:VCARD"), 0},
    {"iCalendar", L_("ics", "ical"), L_("text/calendar"), M_("BEGIN:VCALENDAR"), 0},
    {"Plain text", L_("txt", "text"), L_("text/plain"), NULL, 0, 0},
    {"Arbitrary binary data", L_("bin"), L_("application/octet-stream"), NULL, 0, 0},
};
#define N_TYPES (sizeof(types) / sizeof(types[0]))
#define T_PLAIN (N_TYPES - 2)
#define T_BINARY (N_TYPES - 1)

int ftype_sniff(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < N_TYPES; i++) {
        const struct ftype *t = &types[i];
        if (t->magic && n >= t->offset + t->magic_len &&
            memcmp(p + t->offset, t->magic, t->magic_len) == 0)
            return (int)i;
    }
    return -1;
}

static bool looks_like_text(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        if (c < 0x80) {
            if (c < 0x20 && c != '\t' && c != '\n' && c != '\r' && c != '\f')
                return false;
            i++;
            continue;
        }
        size_t len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!len || c == 0xC0 || c == 0xC1 || c > 0xF4)
            return false;
        for (size_t k = 1; k < len; k++)
            if (i + k >= n || (p[i + k] & 0xC0) != 0x80)
                return false;
        i += len;
    }
    return true;
}

static void push_list(lua_State *L, const char *const *v)
{
    lua_newtable(L);
    for (int i = 0; v[i]; i++) {
        lua_pushstring(L, v[i]);
        lua_rawseti(L, -2, i + 1);
    }
}

static void push_type(lua_State *L, const struct ftype *t)
{
    lua_createtable(L, 0, 3);
    lua_pushstring(L, t->name);
    lua_setfield(L, -2, "name");
    push_list(L, t->ext);
    lua_setfield(L, -2, "extensions");
    push_list(L, t->media);
    lua_setfield(L, -2, "media_types");
}

static const char *check_str(lua_State *L, const char *fname, size_t *n)
{
    if (lua_type(L, 1) != LUA_TSTRING)
        luaL_error(L, "kumo.file_type.%s: argument #1 must be a string, got %s", fname,
                   luaL_typename(L, 1));
    return lua_tolstring(L, 1, n);
}

static int l_from_bytes(lua_State *L)
{
    size_t n;
    const unsigned char *p = (const unsigned char *)check_str(L, "from_bytes", &n);
    int i = ftype_sniff(p, n);
    if (i < 0)
        i = (int)(looks_like_text(p, n > 4096 ? 4096 : n) ? T_PLAIN : T_BINARY);
    push_type(L, &types[i]);
    return 1;
}

static int lookup(lua_State *L, const char *fname, bool by_ext)
{
    size_t n;
    const char *key = check_str(L, fname, &n);
    if (by_ext && key[0] == '.')
        key++;
    lua_newtable(L);
    int k = 0;
    for (size_t i = 0; i < N_TYPES; i++) {
        const char *const *v = by_ext ? types[i].ext : types[i].media;
        for (int j = 0; v[j]; j++)
            if (strcasecmp(v[j], key) == 0) {
                push_type(L, &types[i]);
                lua_rawseti(L, -2, ++k);
                break;
            }
    }
    return 1;
}

static int l_from_extension(lua_State *L)
{
    return lookup(L, "from_extension", true);
}

static int l_from_media_type(lua_State *L)
{
    return lookup(L, "from_media_type", false);
}

static void file_type_open(lua_State *L)
{
    static const luaL_Reg fns[] = {{"from_bytes", l_from_bytes},
                                   {"from_extension", l_from_extension},
                                   {"from_media_type", l_from_media_type},
                                   {NULL, NULL}};
    luaL_newlib(L, fns);
    lua_setfield(L, -2, "file_type");
}

void file_type_lua_register(void)
{
    klua_register_opener(file_type_open);
}
