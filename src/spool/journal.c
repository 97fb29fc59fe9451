/* The spool journal; see journal.h for what it is for and its layout. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/kerr.h"
#include "spool/journal.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#define J_BLOCK 4096u
#define J_SLOT 512u
/* Records start and end on this boundary, so that they can be written with
 * O_DIRECT (a 512-byte logical block; see journal_direct). */
#define J_ALIGN 512u
#define J_HDR_MAGIC 0x4a444d4bu /* "KMDJ" */
#define J_REC_MAGIC 0x43455231u /* "1REC" */
#define J_VERSION 1u
#define J_IOV_MAX 1024

/* A header slot: where recovery starts and which lap is current. */
typedef struct jhdr {
    uint32_t magic;
    uint32_t crc; /* of the bytes after this field */
    uint32_t version;
    uint32_t pad;
    uint64_t generation; /* the slot with the higher one is current */
    uint64_t size;       /* file size */
    uint64_t ckpt_seq;   /* every record up to here is in the stores */
} jhdr;

typedef struct jrec {
    uint32_t magic;
    uint32_t crc; /* of the bytes after this field up to len */
    uint64_t seq;
    uint32_t len; /* whole record, header included, a multiple of 8 */
    uint32_t nops;
} jrec;

typedef struct jop_hdr {
    uint8_t kind;
    uint8_t pad[3];
    uint32_t meta_len;
    uint32_t data_len;
    uint32_t pad2;
    uint8_t id[16];
} jop_hdr;

struct spool__journal {
    char *path;
    int fd;
    uint64_t size;      /* of the file */
    uint64_t want_size; /* asked at open; applied at the next checkpoint */
    uint64_t generation;
    uint64_t ckpt_seq;
    uint64_t last_seq; /* last record appended (or replayed) */
    uint64_t off;      /* where the next record goes */
    uint64_t checkpoints;
    unsigned char *scratch; /* record and op headers */
    size_t scratch_cap;
    /* Records written with O_DIRECT through dfd (-1: through fd and the
     * page cache), from an aligned copy in bounce. */
    bool want_direct;
    int dfd;
    unsigned char *bounce;
    size_t bounce_cap;
};

/* ---- CRC-32C ------------------------------------------------------------ */

static uint32_t crc_table[256];

static void crc_table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc_table[i] = c;
    }
}

static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static uint32_t crc_sw(uint32_t crc, const unsigned char *p, size_t len)
{
    pthread_once(&crc_once, crc_table_init);
    while (len--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const unsigned char *p,
                                                          size_t len)
{
    uint64_t c = crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = _mm_crc32_u8(c32, *p++);
    return c32;
}
#endif

uint32_t spool__crc32c(uint32_t crc, const void *buf, size_t len)
{
    crc = ~crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2"))
        return ~crc_hw(crc, buf, len);
#endif
    return ~crc_sw(crc, buf, len);
}

/* ---- file helpers ------------------------------------------------------- */

/* errno is left as the failing call set it, for the caller's log line. */
static int kerr_from_errno(int e)
{
    return e == ENOMEM ? KERR_NOMEM : e == ENOSPC || e == EDQUOT ? KERR_NOSPACE : KERR_IO;
}

static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return kerr_from_errno(errno);
        }
        p += w;
        len -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

static int pread_all(int fd, void *buf, size_t len, uint64_t off)
{
    char *p = buf;
    while (len > 0) {
        ssize_t r = pread(fd, p, len, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return kerr_from_errno(errno);
        }
        if (r == 0)
            return KERR_PARSE; /* short file */
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static int data_sync(int fd)
{
    /* No retry after a failure: the kernel may have dropped the dirty pages
     * (the fsyncgate lesson), so a second call proves nothing. */
    return fdatasync(fd) == 0 ? 0 : kerr_from_errno(errno);
}

static uint32_t hdr_crc(const jhdr *h)
{
    return spool__crc32c(0, (const char *)h + 8, sizeof(*h) - 8);
}

/* Writes the next header slot (generation + 1) and syncs it. */
static int write_header(int fd, uint64_t *generation, uint64_t size, uint64_t ckpt_seq)
{
    unsigned char slot[J_SLOT];
    jhdr h = {J_HDR_MAGIC, 0, J_VERSION, 0, *generation + 1, size, ckpt_seq};
    h.crc = hdr_crc(&h);
    memset(slot, 0, sizeof(slot));
    memcpy(slot, &h, sizeof(h));
    int rc = pwrite_all(fd, slot, sizeof(slot), (h.generation & 1) * J_SLOT);
    if (rc == 0)
        rc = data_sync(fd);
    if (rc == 0)
        *generation = h.generation;
    return rc;
}

/* Creates path with size bytes of zeros and a first header, under a
 * temporary name that becomes path once everything is synced. Returns the
 * open fd or a negative KERR_* code. */
static int create_file(const char *path, uint64_t size, uint64_t ckpt_seq, uint64_t *generation,
                       char *err, size_t errlen)
{
    char tmp[PATH_MAX];
    void *zeros = NULL;
    int fd = -1, rc;

    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.new", path) >= sizeof(tmp)) {
        snprintf(err, errlen, "journal path too long: %s", path);
        return KERR_INVAL;
    }
    (void)unlink(tmp);
    fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = kerr_from_errno(errno);
        snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        return rc;
    }
    /* Real zeros, not fallocate: unwritten extents would make every first
     * write to a block a metadata update again. */
    zeros = calloc(1, 1u << 20);
    if (zeros == NULL) {
        rc = KERR_NOMEM;
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (uint64_t off = 0; off < size; off += 1u << 20) {
        size_t n = size - off < (1u << 20) ? (size_t)(size - off) : 1u << 20;
        rc = pwrite_all(fd, zeros, n, off);
        if (rc < 0) {
            snprintf(err, errlen, "cannot write %s: %s", tmp, kerr_str(rc));
            goto fail;
        }
    }
    *generation = 0;
    rc = write_header(fd, generation, size, ckpt_seq);
    if (rc == 0 && fsync(fd) != 0)
        rc = kerr_from_errno(errno);
    if (rc < 0) {
        snprintf(err, errlen, "cannot sync %s: %s", tmp, kerr_str(rc));
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        rc = kerr_from_errno(errno);
        snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        goto fail;
    }
    /* The new name must survive a crash too. */
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash != NULL)
        *slash = '\0';
    else
        snprintf(dir, sizeof(dir), ".");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    free(zeros);
    return fd;

fail:
    free(zeros);
    close(fd);
    (void)unlink(tmp);
    return rc;
}

/* Reads both header slots; 0 with the current one in out, or KERR_PARSE. */
static int read_header(int fd, jhdr *out)
{
    unsigned char buf[2 * J_SLOT];
    bool found = false;
    int rc = pread_all(fd, buf, sizeof(buf), 0);
    if (rc < 0)
        return rc;
    for (int i = 0; i < 2; i++) {
        jhdr h;
        memcpy(&h, buf + i * J_SLOT, sizeof(h));
        if (h.magic != J_HDR_MAGIC || h.version != J_VERSION || h.crc != hdr_crc(&h))
            continue;
        if (!found || h.generation > out->generation)
            *out = h;
        found = true;
    }
    return found ? 0 : KERR_PARSE;
}

static uint64_t round_size(uint64_t size)
{
    return (size + J_BLOCK - 1) / J_BLOCK * J_BLOCK;
}

int spool__journal_open(const char *path, uint64_t size, spool__journal **out, char *err,
                        size_t errlen)
{
    spool__journal *j;
    struct stat stt;
    int rc;

    *out = NULL;
    size = round_size(size);
    if (size < SPOOL_JOURNAL_SIZE_MIN || size > SPOOL_JOURNAL_SIZE_MAX) {
        snprintf(err, errlen, "journal size %llu out of range", (unsigned long long)size);
        return KERR_INVAL;
    }
    j = calloc(1, sizeof(*j));
    if (j == NULL || (j->path = strdup(path)) == NULL) {
        free(j);
        snprintf(err, errlen, "out of memory");
        return KERR_NOMEM;
    }
    j->want_size = size;
    j->dfd = -1;
    j->fd = open(path, O_RDWR | O_CLOEXEC);
    if (j->fd < 0 && errno == ENOENT) {
        rc = create_file(path, size, 0, &j->generation, err, errlen);
        if (rc < 0)
            goto fail;
        j->fd = rc;
        j->size = size;
    } else if (j->fd < 0) {
        rc = kerr_from_errno(errno);
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        goto fail;
    } else {
        jhdr h;
        if (fstat(j->fd, &stt) != 0) {
            rc = kerr_from_errno(errno);
            snprintf(err, errlen, "cannot stat %s: %s", path, strerror(errno));
            goto fail;
        }
        rc = read_header(j->fd, &h);
        if (rc < 0 || h.size != (uint64_t)stt.st_size || h.size < 2 * J_BLOCK) {
            snprintf(err, errlen,
                     "%s is not a kumod journal, or its header is damaged (%s); messages "
                     "acknowledged since the last checkpoint may be in it: move it away to "
                     "start without it",
                     path, rc < 0 ? kerr_str(rc) : "size does not match");
            rc = KERR_PARSE;
            goto fail;
        }
        j->size = h.size;
        j->generation = h.generation;
        j->ckpt_seq = h.ckpt_seq;
    }
    j->last_seq = j->ckpt_seq;
    j->off = J_BLOCK;
    *out = j;
    return 0;

fail:
    if (j->fd >= 0)
        close(j->fd);
    free(j->path);
    free(j);
    return rc;
}

/* ---- records ------------------------------------------------------------- */

size_t spool__journal_record_len(const spool__jop *ops, size_t n)
{
    size_t len = sizeof(jrec) + n * sizeof(jop_hdr);
    for (size_t i = 0; i < n; i++)
        len += ops[i].meta_len + ops[i].data_len;
    return (len + J_ALIGN - 1) & ~(size_t)(J_ALIGN - 1);
}

/* ---- direct I/O ------------------------------------------------------- */

/* (Re)opens the O_DIRECT descriptor when direct writes are wanted. A file
 * system without O_DIRECT leaves the buffered path. */
static void direct_open(spool__journal *j)
{
    if (j->dfd >= 0) {
        close(j->dfd);
        j->dfd = -1;
    }
    if (j->want_direct)
        j->dfd = open(j->path, O_RDWR | O_DIRECT | O_CLOEXEC);
}

void spool__journal_set_direct(spool__journal *j, bool on)
{
    j->want_direct = on;
    direct_open(j);
}

bool spool__journal_direct(const spool__journal *j)
{
    return j->dfd >= 0;
}

#define J_NO_DIRECT 1 /* direct_append: not done, take the buffered path */

/* Writes the record (head: its headers, CRC not set yet) from an aligned
 * copy with O_DIRECT; with sync, RWF_DSYNC makes it durable in the same
 * call (the device's cache flushed after the write), so a group commit is
 * one syscall and the record never sits in the page cache. 0, a negative
 * KERR_* code, or J_NO_DIRECT when the kernel refused the direct write
 * before doing anything (alignment it does not take, no RWF_DSYNC). */
static int direct_append(spool__journal *j, const spool__jop *ops, size_t n, size_t head,
                         size_t len, bool sync)
{
    if (j->bounce_cap < len) {
        void *b = NULL;
        if (posix_memalign(&b, J_BLOCK, len) != 0)
            return KERR_NOMEM;
        free(j->bounce);
        j->bounce = b;
        j->bounce_cap = len;
    }
    unsigned char *p = j->bounce;
    memcpy(p, j->scratch, head);
    size_t pos = head;
    for (size_t i = 0; i < n; i++) {
        if (ops[i].meta_len)
            memcpy(p + pos, ops[i].meta, ops[i].meta_len);
        pos += ops[i].meta_len;
        if (ops[i].data_len)
            memcpy(p + pos, ops[i].data, ops[i].data_len);
        pos += ops[i].data_len;
    }
    memset(p + pos, 0, len - pos);
    uint32_t crc = spool__crc32c(0, p + 8, len - 8);
    memcpy(p + offsetof(jrec, crc), &crc, sizeof(crc));

    struct iovec v = {p, len};
    ssize_t w;
    do
        w = pwritev2(j->dfd, &v, 1, (off_t)j->off, sync ? RWF_DSYNC : 0);
    while (w < 0 && errno == EINTR);
    int rc = 0;
    if (w < 0)
        rc = errno == EINVAL || errno == EOPNOTSUPP ? J_NO_DIRECT : kerr_from_errno(errno);
    else if ((size_t)w != len)
        rc = KERR_IO;
    if (j->bounce_cap > (1u << 20)) {
        /* a huge group: do not keep its copy */
        free(j->bounce);
        j->bounce = NULL;
        j->bounce_cap = 0;
    }
    return rc;
}

bool spool__journal_takes(const spool__journal *j, size_t len)
{
    return len <= (j->size - J_BLOCK) / 4;
}

bool spool__journal_room(const spool__journal *j, size_t len)
{
    return j->off + len <= j->size;
}

int spool__journal_append(spool__journal *j, const spool__jop *ops, size_t n, size_t len,
                          bool sync)
{
    static const char pad[J_ALIGN];
    size_t head = sizeof(jrec) + n * sizeof(jop_hdr), body = 0;
    struct iovec iov[J_IOV_MAX];
    int rc;

    if (j->scratch_cap < head) {
        unsigned char *s = realloc(j->scratch, head);
        if (s == NULL)
            return KERR_NOMEM;
        j->scratch = s;
        j->scratch_cap = head;
    }
    jrec *r = (jrec *)j->scratch;
    *r = (jrec){J_REC_MAGIC, 0, j->last_seq + 1, (uint32_t)len, (uint32_t)n};
    for (size_t i = 0; i < n; i++) {
        jop_hdr oh = {(uint8_t)ops[i].kind, {0}, (uint32_t)ops[i].meta_len,
                      (uint32_t)ops[i].data_len, 0, {0}};
        memcpy(oh.id, ops[i].id.b, sizeof(oh.id));
        memcpy(j->scratch + sizeof(jrec) + i * sizeof(jop_hdr), &oh, sizeof(oh));
        body += ops[i].meta_len + ops[i].data_len;
    }
    size_t padlen = len - head - body;

    if (j->dfd >= 0 && j->off % J_ALIGN == 0 && len % J_ALIGN == 0) {
        rc = direct_append(j, ops, n, head, len, sync);
        if (rc != J_NO_DIRECT) {
            if (rc < 0)
                return rc;
            j->off += len;
            j->last_seq++;
            return 0;
        }
        close(j->dfd); /* the buffered path from now on */
        j->dfd = -1;
    }

    uint32_t crc = spool__crc32c(0, j->scratch + 8, head - 8);
    for (size_t i = 0; i < n; i++) {
        crc = spool__crc32c(crc, ops[i].meta, ops[i].meta_len);
        crc = spool__crc32c(crc, ops[i].data, ops[i].data_len);
    }
    crc = spool__crc32c(crc, pad, padlen);
    r->crc = crc;

    /* Write in runs of at most J_IOV_MAX pieces. */
    uint64_t off = j->off;
    int k = 0;
    size_t run = 0;
    iov[k++] = (struct iovec){j->scratch, head};
    run = head;
    for (size_t i = 0; i <= n; i++) {
        const void *bufs[2];
        size_t lens[2];
        int nb = 0;
        if (i < n) {
            bufs[0] = ops[i].meta;
            lens[0] = ops[i].meta_len;
            bufs[1] = ops[i].data;
            lens[1] = ops[i].data_len;
            nb = 2;
        } else {
            bufs[0] = pad;
            lens[0] = padlen;
            nb = 1;
        }
        for (int b = 0; b < nb; b++) {
            if (lens[b] == 0)
                continue;
            if (k == J_IOV_MAX) {
                ssize_t w = pwritev(j->fd, iov, k, (off_t)off);
                if (w < 0 || (size_t)w != run)
                    return w < 0 ? kerr_from_errno(errno) : KERR_IO;
                off += run;
                k = 0;
                run = 0;
            }
            iov[k++] = (struct iovec){(void *)bufs[b], lens[b]};
            run += lens[b];
        }
    }
    if (k > 0) {
        ssize_t w = pwritev(j->fd, iov, k, (off_t)off);
        if (w < 0 || (size_t)w != run)
            return w < 0 ? kerr_from_errno(errno) : KERR_IO;
    }
    if (sync && (rc = data_sync(j->fd)) < 0)
        return rc;
    j->off += len;
    j->last_seq++;
    return 0;
}

int spool__journal_replay(spool__journal *j, spool__journal_replay_fn fn, void *ud,
                          uint64_t *records, uint64_t *nops)
{
    unsigned char *buf = NULL;
    spool__jop *ops = NULL;
    size_t cap = 0, ops_cap = 0;
    uint64_t off = J_BLOCK;
    int rc = 0;

    *records = *nops = 0;
    while (off + sizeof(jrec) <= j->size) {
        jrec r;
        if ((rc = pread_all(j->fd, &r, sizeof(r), off)) < 0)
            break;
        if (r.magic != J_REC_MAGIC || r.seq != j->last_seq + 1 || r.len < sizeof(jrec) ||
            r.len % 8 != 0 || off + r.len > j->size ||
            (uint64_t)r.nops * sizeof(jop_hdr) > r.len - sizeof(jrec))
            break; /* the end: older lap, zeros, or a torn header */
        if (cap < r.len) {
            unsigned char *b = realloc(buf, r.len);
            if (b == NULL) {
                rc = KERR_NOMEM;
                break;
            }
            buf = b;
            cap = r.len;
        }
        if ((rc = pread_all(j->fd, buf, r.len, off)) < 0)
            break;
        if (spool__crc32c(0, buf + 8, r.len - 8) != r.crc)
            break; /* torn: never acknowledged */
        if (ops_cap < r.nops) {
            spool__jop *o = realloc(ops, r.nops * sizeof(*o));
            if (o == NULL) {
                rc = KERR_NOMEM;
                break;
            }
            ops = o;
            ops_cap = r.nops;
        }
        size_t pos = sizeof(jrec) + r.nops * sizeof(jop_hdr);
        bool bad = false;
        for (uint32_t i = 0; i < r.nops && !bad; i++) {
            jop_hdr oh;
            memcpy(&oh, buf + sizeof(jrec) + i * sizeof(jop_hdr), sizeof(oh));
            if ((oh.kind != JOP_SAVE && oh.kind != JOP_SAVE_META && oh.kind != JOP_REMOVE) ||
                (uint64_t)oh.meta_len + oh.data_len > r.len - pos) {
                bad = true;
                break;
            }
            ops[i].kind = (spool__jop_kind)oh.kind;
            memcpy(ops[i].id.b, oh.id, sizeof(oh.id));
            ops[i].meta = (const char *)buf + pos;
            ops[i].meta_len = oh.meta_len;
            pos += oh.meta_len;
            ops[i].data = (const char *)buf + pos;
            ops[i].data_len = oh.data_len;
            pos += oh.data_len;
        }
        if (bad) {
            /* A whole record with a good checksum that does not parse is
             * not a torn write: refuse to guess. */
            rc = KERR_PARSE;
            break;
        }
        if ((rc = fn(ud, ops, r.nops)) < 0)
            break;
        j->last_seq = r.seq;
        off += r.len;
        j->off = off; /* an append without a checkpoint goes after it */
        (*records)++;
        *nops += r.nops;
    }
    free(buf);
    free(ops);
    return rc < 0 ? rc : 0;
}

int spool__journal_checkpoint(spool__journal *j)
{
    int rc;
    if (j->want_size != j->size) {
        char err[256];
        uint64_t gen = 0;
        int fd = create_file(j->path, j->want_size, j->last_seq, &gen, err, sizeof(err));
        if (fd < 0)
            return fd;
        close(j->fd);
        j->fd = fd;
        j->size = j->want_size;
        j->generation = gen;
        direct_open(j);
    } else if ((rc = write_header(j->fd, &j->generation, j->size, j->last_seq)) < 0) {
        return rc;
    }
    j->ckpt_seq = j->last_seq;
    j->off = J_BLOCK;
    j->checkpoints++;
    return 0;
}

const char *spool__journal_path(const spool__journal *j)
{
    return j->path;
}

uint64_t spool__journal_size(const spool__journal *j)
{
    return j->size;
}

uint64_t spool__journal_checkpoints(const spool__journal *j)
{
    return j->checkpoints;
}

void spool__journal_close(spool__journal *j)
{
    if (j == NULL)
        return;
    if (j->fd >= 0)
        close(j->fd);
    if (j->dfd >= 0)
        close(j->dfd);
    free(j->bounce);
    free(j->scratch);
    free(j->path);
    free(j);
}
