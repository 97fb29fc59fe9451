/* kcli logs: prints, follows and filters kumod's local delivery logs.
 *
 * The logs are zstd-compressed segments of JSON records, one per line, in a
 * log directory (kumo.configure_local_logs). kcli reads them itself, without
 * asking kumod: it works while kumod is stopped, and on a copy of the logs.
 * The segment being written is a zstd stream without its end yet; zstdcat
 * refuses it ("premature end"), kcli decompresses whatever has arrived and
 * holds back a trailing partial line until its end is written. With
 * --follow it polls the directory for new bytes and new segments.
 *
 * Segments are read in name order (kumod names them by creation time), each
 * from its beginning; per_record subdirectories are read too. */
#include "logs.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "core/duration.h"

typedef struct segment {
    char *path;
    off_t consumed; /* compressed bytes fed to the decoder */
    ZSTD_DStream *zs;
    char *line;     /* partial line carried to the next read */
    size_t line_len;
} segment;

typedef struct filter {
    const char **types;
    size_t n_types;
    const char *queue;
    int64_t since_s; /* 0: no bound */
    bool json;
} filter;

static segment *segs;
static size_t n_segs;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular file under dir (one level of subdirectories: per_record
 * suffixes), sorted by file name so segments come in creation order. */
static void scan_dir(const char *dir, char ***out, size_t *n, size_t *cap, int depth)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode) && depth < 1) {
            scan_dir(path, out, n, cap, depth + 1);
        } else if (S_ISREG(st.st_mode)) {
            if (*n == *cap) {
                *cap = *cap ? *cap * 2 : 64;
                *out = realloc(*out, *cap * sizeof(char *));
                if (!*out) {
                    perror("kcli");
                    exit(1);
                }
            }
            (*out)[(*n)++] = strdup(path);
        }
    }
    closedir(d);
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static int cmp_base(const void *a, const void *b)
{
    int c = strcmp(base_name(*(char *const *)a), base_name(*(char *const *)b));
    return c ? c : cmp_str(a, b);
}

/* Adds the segments that appeared since the last scan. */
static void refresh_segments(const char *dir)
{
    char **paths = NULL;
    size_t n = 0, cap = 0;
    scan_dir(dir, &paths, &n, &cap, 0);
    if (n)
        qsort(paths, n, sizeof(char *), cmp_base);
    for (size_t i = 0; i < n; i++) {
        bool known = false;
        for (size_t j = 0; j < n_segs && !known; j++)
            known = strcmp(segs[j].path, paths[i]) == 0;
        if (known) {
            free(paths[i]);
            continue;
        }
        segs = realloc(segs, (n_segs + 1) * sizeof(*segs));
        if (!segs) {
            perror("kcli");
            exit(1);
        }
        segs[n_segs++] = (segment){.path = paths[i], .zs = ZSTD_createDStream()};
        ZSTD_initDStream(segs[n_segs - 1].zs);
    }
    free(paths);
}

static bool type_wanted(const filter *f, const char *type)
{
    if (!f->n_types)
        return true;
    for (size_t i = 0; i < f->n_types; i++)
        if (type && strcasecmp(f->types[i], type) == 0)
            return true;
    return false;
}

static void emit(const filter *f, const char *line, size_t len)
{
    json_error_t e;
    json_t *r = json_loadb(line, len, JSON_ALLOW_NUL, &e);
    if (!json_is_object(r)) {
        json_decref(r);
        return; /* not a record: a torn line at a crash, or a custom template */
    }
    const char *type = json_string_value(json_object_get(r, "type"));
    const char *queue = json_string_value(json_object_get(r, "queue"));
    json_int_t ts = json_integer_value(json_object_get(r, "timestamp"));
    if (!type_wanted(f, type) || (f->queue && (!queue || strcmp(queue, f->queue) != 0)) ||
        (f->since_s && ts < f->since_s)) {
        json_decref(r);
        return;
    }
    if (f->json) {
        fwrite(line, 1, len, stdout);
        fputc('\n', stdout);
    } else {
        char when[32] = "-";
        time_t t = (time_t)ts;
        struct tm tm;
        if (ts && gmtime_r(&t, &tm))
            strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        json_t *resp = json_object_get(r, "response");
        const char *content = json_string_value(json_object_get(resp, "content"));
        json_t *rcpt = json_object_get(r, "recipient");
        const char *to = json_is_string(rcpt) ? json_string_value(rcpt)
                         : json_is_array(rcpt) ? json_string_value(json_array_get(rcpt, 0))
                                               : NULL;
        printf("%s %-16s %s %s %s -> %s %lld %s\n", when, type ? type : "?",
               json_string_value(json_object_get(r, "id")) ?: "-", queue ? queue : "-",
               json_string_value(json_object_get(r, "sender")) ?: "-", to ? to : "-",
               (long long)json_integer_value(json_object_get(resp, "code")),
               content ? content : "");
    }
    json_decref(r);
}

/* Feeds what the segment gained since the last call to its decoder and
 * emits every complete line. Returns true when anything was read. */
static bool pump(segment *s, const filter *f)
{
    FILE *fp = fopen(s->path, "rb");
    if (!fp)
        return false;
    if (fseeko(fp, s->consumed, SEEK_SET) != 0) {
        fclose(fp);
        return false;
    }
    static char in[1 << 16], out[1 << 17];
    bool any = false;
    size_t got;
    while ((got = fread(in, 1, sizeof(in), fp)) > 0) {
        any = true;
        s->consumed += (off_t)got;
        ZSTD_inBuffer ib = {in, got, 0};
        while (ib.pos < ib.size) {
            ZSTD_outBuffer ob = {out, sizeof(out), 0};
            size_t rc = ZSTD_decompressStream(s->zs, &ob, &ib);
            if (ZSTD_isError(rc)) {
                fprintf(stderr, "kcli: %s: %s (the rest of this segment is skipped)\n", s->path,
                        ZSTD_getErrorName(rc));
                s->consumed = (off_t)1 << 62; /* never again */
                fclose(fp);
                return any;
            }
            /* split into lines; the tail waits for its newline */
            size_t start = 0;
            for (size_t i = 0; i < ob.pos; i++) {
                if (out[i] != '\n')
                    continue;
                if (s->line_len) {
                    size_t add = i - start;
                    s->line = realloc(s->line, s->line_len + add + 1);
                    memcpy(s->line + s->line_len, out + start, add);
                    emit(f, s->line, s->line_len + add);
                    s->line_len = 0;
                } else if (i > start) {
                    emit(f, out + start, i - start);
                }
                start = i + 1;
            }
            if (start < ob.pos) {
                size_t add = ob.pos - start;
                s->line = realloc(s->line, s->line_len + add + 1);
                memcpy(s->line + s->line_len, out + start, add);
                s->line_len += add;
            }
            if (ob.pos == 0 && ib.pos < ib.size && rc == 0)
                ZSTD_initDStream(s->zs); /* a new frame follows */
        }
    }
    fclose(fp);
    return any;
}

/* --since: a duration ago ("10m", "2 hours") or an RFC 3339 UTC time. */
static int parse_since(const char *s, int64_t *out)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (end && (*end == 'Z' || *end == 0)) {
        *out = (int64_t)timegm(&tm);
        return 0;
    }
    int64_t ns;
    if (duration_parse(s, &ns) != 0)
        return -1;
    *out = (int64_t)time(NULL) - ns / 1000000000LL;
    return 0;
}

int kcli_logs(const char *name, int argc, char **argv)
{
    enum { O_DIR = 256, O_TYPE, O_QUEUE, O_SINCE, O_JSON };
    static const struct option opts[] = {
        {"dir", required_argument, NULL, O_DIR},     {"type", required_argument, NULL, O_TYPE},
        {"queue", required_argument, NULL, O_QUEUE}, {"since", required_argument, NULL, O_SINCE},
        {"json", no_argument, NULL, O_JSON},         {"follow", no_argument, NULL, 'f'},
        {NULL, 0, NULL, 0},
    };
    const char *dir = "/var/log/kumomta";
    filter f = {0};
    bool follow = false;
    const char *types[32];
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":f", opts, NULL)) != -1) {
        switch (ch) {
        case O_DIR:
            dir = optarg;
            break;
        case O_TYPE:
            if (f.n_types < 32)
                types[f.n_types++] = optarg;
            break;
        case O_QUEUE:
            f.queue = optarg;
            break;
        case O_SINCE:
            if (parse_since(optarg, &f.since_s) != 0) {
                fprintf(stderr, "kcli %s: --since %s: expected a duration (10m) or a time "
                                "(2026-12-07T10:00:00Z)\n", name, optarg);
                return 2;
            }
            break;
        case O_JSON:
            f.json = true;
            break;
        case 'f':
            follow = true;
            break;
        default:
            fprintf(stderr, "kcli %s: bad option %s\nRun 'kcli %s --help' for usage.\n", name,
                    argv[optind - 1], name);
            return 2;
        }
    }
    f.types = types;
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "kcli: log directory %s: %s\n", dir,
                stat(dir, &st) != 0 ? strerror(errno) : "not a directory");
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) {
        refresh_segments(dir);
        bool any = false;
        for (size_t i = 0; i < n_segs; i++)
            any |= pump(&segs[i], &f);
        if (!follow)
            break;
        if (!any)
            usleep(200 * 1000);
    }
    for (size_t i = 0; i < n_segs; i++) {
        ZSTD_freeDStream(segs[i].zs);
        free(segs[i].path);
        free(segs[i].line);
    }
    free(segs);
    return 0;
}
