/* JSONL segment reader (jsonl_read.h). Owns one open segment at a time: its
 * fd, a zstd decompression context when the file starts with the zstd
 * magic, and the bytes of the current partial line. At end of file it asks
 * whether the segment is complete (read-only); if so it drains once more
 * (the writer may have written between our read and its chmod), hands out
 * a last line without '\n', and looks for the next name in the directory
 * (rescanned each time, so segments that appear later are found). Fails
 * per file (corrupt stream, unreadable file): the error is returned once
 * and the reader goes on with the next file. Any one thread at a time. */
#include "lua/lib/jsonl_read.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "core/kerr.h"

#define READ_CHUNK (64 * 1024)
/* a line longer than this is cut off at the limit (never unbounded memory) */
#define MAX_LINE (64u * 1024 * 1024)

struct jsonl_src {
    char *dir, *pattern;
    char *cur;      /* base name of the open (or last) segment; NULL before the first */
    int fd;
    bool plain;     /* not zstd: lines are the file's bytes */
    bool sniffed;   /* the first bytes were looked at */
    bool draining;  /* the segment was seen read-only: the next EOF ends it */
    ZSTD_DCtx *dctx;
    unsigned char *in;
    size_t in_pos, in_len;
    char *linebuf;  /* decompressed bytes not yet handed out */
    size_t lb_start, lb_len, lb_cap;
    char *out_path; /* dir/cur of the last line */
    uint64_t line;  /* lines handed out from cur */
    uint64_t out_line;
    bool skip_rest; /* the segment failed: drop what is left of it */
};

/* The smallest matching name greater than after (or the greatest of all
 * when newest); NULL when none (or out of memory). */
static char *pick_file(const jsonl_src *s, const char *after, bool newest)
{
    DIR *d = opendir(s->dir);
    if (!d)
        return NULL;
    char *best = NULL;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *n = de->d_name;
        if (n[0] == '.' || fnmatch(s->pattern, n, FNM_PERIOD) != 0)
            continue;
        if (de->d_type != DT_REG && de->d_type != DT_UNKNOWN)
            continue;
        if (after && strcmp(n, after) <= 0)
            continue;
        if (!best || (newest ? strcmp(n, best) > 0 : strcmp(n, best) < 0)) {
            free(best);
            best = strdup(n);
        }
    }
    closedir(d);
    return best;
}

static void close_cur(jsonl_src *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    s->in_pos = s->in_len = 0;
    s->lb_start = s->lb_len = 0;
    s->sniffed = s->plain = s->draining = s->skip_rest = false;
    s->line = 0;
    if (s->dctx)
        ZSTD_DCtx_reset(s->dctx, ZSTD_reset_session_only);
}

/* Opens name (taking it) as the current segment. */
static int open_file(jsonl_src *s, char *name)
{
    close_cur(s);
    free(s->cur);
    s->cur = name;
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", s->dir, name);
    s->fd = open(path, O_RDONLY | O_CLOEXEC);
    return s->fd < 0 ? KERR_IO : 0;
}

int jsonl_src_open(const char *dir, const char *pattern, const char *start_file, bool tail,
                   jsonl_src **out)
{
    jsonl_src *s = calloc(1, sizeof(*s));
    if (!s)
        return KERR_NOMEM;
    s->fd = -1;
    s->dir = strdup(dir);
    s->pattern = strdup(pattern ? pattern : "*");
    s->in = malloc(READ_CHUNK);
    s->dctx = ZSTD_createDCtx();
    s->out_path = strdup("");
    if (!s->dir || !s->pattern || !s->in || !s->dctx || !s->out_path) {
        jsonl_src_free(s);
        return KERR_NOMEM;
    }
    DIR *d = opendir(dir);
    if (!d) {
        int e = errno;
        jsonl_src_free(s);
        errno = e;
        return KERR_IO;
    }
    closedir(d);
    if (tail) {
        char *n = pick_file(s, NULL, true);
        if (n)
            open_file(s, n);
    } else if (start_file && *start_file) {
        const char *base = strrchr(start_file, '/');
        base = base ? base + 1 : start_file;
        /* the checkpoint's file itself if it is still there, else the next */
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, base);
        if (access(path, R_OK) == 0) {
            char *n = strdup(base);
            if (n)
                open_file(s, n);
        } else {
            /* remember the position: pick_file starts after it */
            s->cur = strdup(base);
        }
    }
    *out = s;
    return 0;
}

static int lb_reserve(jsonl_src *s, size_t add)
{
    if (s->lb_start && s->lb_start + s->lb_len + add > s->lb_cap) {
        memmove(s->linebuf, s->linebuf + s->lb_start, s->lb_len);
        s->lb_start = 0;
    }
    if (s->lb_len + add <= s->lb_cap)
        return 0;
    size_t cap = s->lb_cap ? s->lb_cap : READ_CHUNK;
    while (cap < s->lb_len + add)
        cap *= 2;
    char *n = realloc(s->linebuf, cap);
    if (!n)
        return KERR_NOMEM;
    s->linebuf = n;
    s->lb_cap = cap;
    return 0;
}

/* A complete line in the buffer: hands it out. */
static bool take_line(jsonl_src *s, const char **line, size_t *len, bool at_end)
{
    if (!s->lb_len)
        return false;
    char *b = s->linebuf + s->lb_start;
    char *nl = memchr(b, '\n', s->lb_len);
    size_t n;
    size_t consumed;
    if (nl) {
        n = (size_t)(nl - b);
        consumed = n + 1;
    } else if (at_end || s->lb_len >= MAX_LINE) {
        n = consumed = s->lb_len;
    } else {
        return false;
    }
    if (n && b[n - 1] == '\r')
        n--;
    s->lb_start += consumed;
    s->lb_len -= consumed;
    if (!s->lb_len)
        s->lb_start = 0;
    s->line++;
    s->out_line = s->line;
    char path[4096];
    int pl = snprintf(path, sizeof(path), "%s/%s", s->dir, s->cur);
    if (pl > 0 && strcmp(path, s->out_path) != 0) {
        char *p = strdup(path);
        if (p) {
            free(s->out_path);
            s->out_path = p;
        }
    }
    *line = b;
    *len = n;
    return true;
}

/* Decompresses (or copies) what is in s->in into the line buffer. */
static int feed(jsonl_src *s)
{
    if (!s->sniffed && s->in_len - s->in_pos >= 4) {
        static const unsigned char magic[4] = {0x28, 0xB5, 0x2F, 0xFD};
        s->plain = memcmp(s->in + s->in_pos, magic, 4) != 0;
        s->sniffed = true;
    }
    if (!s->sniffed)
        return 0;
    if (s->plain) {
        size_t n = s->in_len - s->in_pos;
        if (lb_reserve(s, n))
            return KERR_NOMEM;
        memcpy(s->linebuf + s->lb_start + s->lb_len, s->in + s->in_pos, n);
        s->lb_len += n;
        s->in_pos = s->in_len;
        return 0;
    }
    while (s->in_pos < s->in_len) {
        if (lb_reserve(s, READ_CHUNK))
            return KERR_NOMEM;
        ZSTD_inBuffer in = {s->in, s->in_len, s->in_pos};
        ZSTD_outBuffer o = {s->linebuf + s->lb_start + s->lb_len,
                            s->lb_cap - s->lb_start - s->lb_len, 0};
        size_t r = ZSTD_decompressStream(s->dctx, &o, &in);
        if (ZSTD_isError(r))
            return KERR_PARSE;
        s->in_pos = in.pos;
        s->lb_len += o.pos;
        if (o.pos == 0 && in.pos == in.size)
            break;
    }
    return 0;
}

int jsonl_src_next(jsonl_src *s, const char **line, size_t *len, size_t *budget, bool *more)
{
    *more = false;
    for (;;) {
        if (s->fd >= 0 && !s->skip_rest && take_line(s, line, len, false))
            return 1;
        if (s->fd < 0 || s->skip_rest) {
            /* between files: the next name after the current one */
            char *n = pick_file(s, s->cur, false);
            if (!n)
                return 0;
            if (open_file(s, n) != 0) {
                s->skip_rest = true; /* unreadable: skip it */
                return KERR_IO;
            }
            continue;
        }
        if (*budget == 0) {
            *more = true;
            return 0;
        }
        /* keep the compressed bytes that zstd has not consumed yet */
        if (s->in_pos) {
            memmove(s->in, s->in + s->in_pos, s->in_len - s->in_pos);
            s->in_len -= s->in_pos;
            s->in_pos = 0;
        }
        ssize_t r = s->in_len < READ_CHUNK ? read(s->fd, s->in + s->in_len, READ_CHUNK - s->in_len)
                                           : 0;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            s->skip_rest = true;
            return KERR_IO;
        }
        if (r > 0) {
            s->in_len += (size_t)r;
            *budget = (size_t)r >= *budget ? 0 : *budget - (size_t)r;
            int rc = feed(s);
            if (rc) {
                s->skip_rest = true;
                return rc;
            }
            if (s->in_pos < s->in_len && s->in_len == READ_CHUNK && s->in_pos == 0)
                return KERR_PARSE; /* zstd made no progress on a full buffer */
            continue;
        }
        /* end of file: a complete (read-only) segment ends here */
        if (!s->draining) {
            struct stat st;
            if (fstat(s->fd, &st) == 0 && !(st.st_mode & 0222)) {
                s->draining = true;
                continue; /* one more read: written before the chmod */
            }
            return 0; /* still being written */
        }
        if (!s->sniffed && s->in_len) {
            /* fewer than 4 bytes in all: not zstd */
            s->sniffed = true;
            s->plain = true;
        }
        int rc = feed(s);
        if (rc)
            s->skip_rest = true;
        if (!s->skip_rest && take_line(s, line, len, true))
            return 1; /* stays on the file until its buffer is empty */
        close_cur(s);
        if (rc)
            return rc;
    }
}

const char *jsonl_src_file(const jsonl_src *s)
{
    return s->out_path;
}

uint64_t jsonl_src_line(const jsonl_src *s)
{
    return s->out_line;
}

const char *jsonl_src_segment(const jsonl_src *s)
{
    return s->cur ? s->cur : "";
}

void jsonl_src_free(jsonl_src *s)
{
    if (!s)
        return;
    if (s->fd >= 0)
        close(s->fd);
    ZSTD_freeDCtx(s->dctx);
    free(s->in);
    free(s->linebuf);
    free(s->dir);
    free(s->pattern);
    free(s->cur);
    free(s->out_path);
    free(s);
}
