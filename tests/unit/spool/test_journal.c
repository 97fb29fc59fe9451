/* Tests of src/spool/journal.c (the spool journal ring file) against real
 * files in a fresh mkdtemp directory per test. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <setjmp.h>
#include <stddef.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "spool/journal.h"

#define MIB (1ULL << 20)
#define REC_START 4096u /* where the first record of a lap goes */

/* ---- fixture ------------------------------------------------------------ */

typedef struct fixture {
    char dir[64];
    char path[128]; /* dir/kumod-journal, not created by the fixture */
} fixture;

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup_dir(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/kumod-journal-XXXXXX");
    if (mkdtemp(f->dir) == NULL) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof(f->path), "%s/%s", f->dir, SPOOL_JOURNAL_NAME);
    *state = f;
    return 0;
}

static int teardown_dir(void **state)
{
    fixture *f = *state;
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* ---- helpers ------------------------------------------------------------ */

/* A deterministic id, distinct per seed. */
static spoolid mkid(unsigned seed)
{
    spoolid id;
    id.b[0] = (uint8_t)(seed >> 24);
    id.b[1] = (uint8_t)(seed >> 16);
    id.b[2] = (uint8_t)(seed >> 8);
    id.b[3] = (uint8_t)seed;
    for (int i = 4; i < 16; i++)
        id.b[i] = (uint8_t)(seed * 131u + (unsigned)i * 7u + 1u);
    return id;
}

/* len bytes of a pattern that differs per seed; the caller frees. */
static char *mkbytes(size_t len, unsigned seed)
{
    char *p = malloc(len ? len : 1);
    assert_non_null(p);
    uint32_t x = seed * 2654435761u + 12345u;
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (char)(x >> 16);
    }
    return p;
}

static spool__jop mkop(spool__jop_kind kind, unsigned idseed, const char *meta, size_t meta_len,
                       const char *data, size_t data_len)
{
    spool__jop o = {kind, mkid(idseed), meta, meta_len, data, data_len};
    return o;
}

/* Every test runs twice: records through the page cache, then with
 * O_DIRECT (what kumod uses). */
static bool g_direct;

static spool__journal *jopen(const char *path, uint64_t size)
{
    spool__journal *j = NULL;
    char err[512] = "";
    int rc = spool__journal_open(path, size, &j, err, sizeof(err));
    if (rc != 0)
        fail_msg("spool__journal_open(%s): %d: %s", path, rc, err);
    assert_non_null(j);
    spool__journal_set_direct(j, g_direct);
    return j;
}

/* Whether the file system under dir takes O_DIRECT. */
static bool fs_takes_direct(const char *dir)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/probe", dir);
    int fd = open(p, O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
    if (fd >= 0)
        close(fd);
    unlink(p);
    return fd >= 0;
}

static void append(spool__journal *j, const spool__jop *ops, size_t n, bool sync)
{
    size_t len = spool__journal_record_len(ops, n);
    assert_true(spool__journal_takes(j, len));
    assert_true(spool__journal_room(j, len));
    assert_int_equal(spool__journal_append(j, ops, n, len, sync), 0);
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (uint64_t)st.st_size;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void new_path(const char *path, char *out, size_t outlen)
{
    assert_true((size_t)snprintf(out, outlen, "%s.new", path) < outlen);
}

static void write_at(const char *path, uint64_t off, const void *buf, size_t len)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
    close(fd);
}

static unsigned char read_byte(const char *path, uint64_t off)
{
    unsigned char c;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &c, 1, (off_t)off), 1);
    close(fd);
    return c;
}

/* Flips every bit of the byte at off; calling it twice restores the file. */
static int pread_file(const char *path, void *buf, size_t len, uint64_t off)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    ssize_t r = pread(fd, buf, len, (off_t)off);
    close(fd);
    return r == (ssize_t)len ? 0 : -1;
}

static void flip_byte(const char *path, uint64_t off)
{
    unsigned char c = (unsigned char)(read_byte(path, off) ^ 0xff);
    write_at(path, off, &c, 1);
}

/* ---- what a replay delivered -------------------------------------------- */

typedef struct rop {
    spool__jop_kind kind;
    spoolid id;
    char *meta;
    size_t meta_len;
    char *data;
    size_t data_len;
} rop;

typedef struct rlog {
    rop *ops;
    size_t nops, cap;
    size_t calls;
    size_t per_call[64]; /* n of each of the first 64 calls */
    size_t fail_at_call; /* 1-based: that call returns fail_rc; 0: never */
    int fail_rc;
} rlog;

static char *dup_bytes(const char *p, size_t len)
{
    char *d = malloc(len ? len : 1);
    assert_non_null(d);
    if (len > 0)
        memcpy(d, p, len);
    return d;
}

static int record_cb(void *ud, const spool__jop *ops, size_t n)
{
    rlog *l = ud;
    l->calls++;
    if (l->fail_at_call != 0 && l->calls == l->fail_at_call)
        return l->fail_rc;
    if (l->calls <= 64)
        l->per_call[l->calls - 1] = n;
    for (size_t i = 0; i < n; i++) {
        if (l->nops == l->cap) {
            l->cap = l->cap ? l->cap * 2 : 16;
            l->ops = realloc(l->ops, l->cap * sizeof(*l->ops));
            assert_non_null(l->ops);
        }
        rop *r = &l->ops[l->nops++];
        r->kind = ops[i].kind;
        r->id = ops[i].id;
        r->meta_len = ops[i].meta_len;
        r->meta = dup_bytes(ops[i].meta, ops[i].meta_len);
        r->data_len = ops[i].data_len;
        r->data = dup_bytes(ops[i].data, ops[i].data_len);
    }
    return 0;
}

static void rlog_free(rlog *l)
{
    for (size_t i = 0; i < l->nops; i++) {
        free(l->ops[i].meta);
        free(l->ops[i].data);
    }
    free(l->ops);
    memset(l, 0, sizeof(*l));
}

/* The replayed op at index i is exactly want. */
static void assert_op(const rlog *l, size_t i, const spool__jop *want)
{
    assert_true(i < l->nops);
    const rop *got = &l->ops[i];
    assert_int_equal(got->kind, want->kind);
    assert_memory_equal(got->id.b, want->id.b, sizeof(want->id.b));
    assert_int_equal(got->meta_len, want->meta_len);
    if (want->meta_len > 0)
        assert_memory_equal(got->meta, want->meta, want->meta_len);
    assert_int_equal(got->data_len, want->data_len);
    if (want->data_len > 0)
        assert_memory_equal(got->data, want->data, want->data_len);
}

/* The replay delivered exactly these records (recs[r] has ns[r] ops), one
 * callback per record, in order. */
static void assert_replayed(const rlog *l, const spool__jop *const *recs, const size_t *ns,
                            size_t nrecs)
{
    size_t k = 0;
    assert_int_equal(l->calls, nrecs);
    for (size_t r = 0; r < nrecs; r++) {
        if (r < 64)
            assert_int_equal(l->per_call[r], ns[r]);
        for (size_t i = 0; i < ns[r]; i++)
            assert_op(l, k++, &recs[r][i]);
    }
    assert_int_equal(l->nops, k);
}

/* Opens path (asking size), replays into l and checks the counters agree
 * with what the callback saw. Returns the open journal. */
static spool__journal *open_replay(const char *path, uint64_t size, rlog *l)
{
    uint64_t records = 99, nops = 99;
    spool__journal *j = jopen(path, size);
    assert_int_equal(spool__journal_replay(j, record_cb, l, &records, &nops), 0);
    assert_int_equal(records, l->calls);
    assert_int_equal(nops, l->nops);
    return j;
}

/* ---- 1. CRC-32C ----------------------------------------------------------- */

/* Bit at a time, straight from the definition (reflected, poly 0x82F63B78). */
static uint32_t crc32c_ref(const unsigned char *p, size_t len)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < len; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    }
    return ~c;
}

static void test_crc32c(void **state)
{
    (void)state;
    unsigned char buf[32];

    assert_int_equal(spool__crc32c(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(spool__crc32c(spool__crc32c(0, "1234", 4), "56789", 5), 0xE3069283u);
    assert_int_equal(spool__crc32c(spool__crc32c(0, "", 0), "123456789", 9), 0xE3069283u);
    assert_int_equal(spool__crc32c(0, "", 0), 0);

    /* RFC 3720 B.4 (iSCSI) vectors. */
    memset(buf, 0, sizeof(buf));
    assert_int_equal(spool__crc32c(0, buf, 32), 0x8A9136AAu);
    memset(buf, 0xff, sizeof(buf));
    assert_int_equal(spool__crc32c(0, buf, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        buf[i] = (unsigned char)i;
    assert_int_equal(spool__crc32c(0, buf, 32), 0x46DD794Eu);
    for (int i = 0; i < 32; i++)
        buf[i] = (unsigned char)(31 - i);
    assert_int_equal(spool__crc32c(0, buf, 32), 0x113FDB5Cu);

    /* Every split point and misaligned start agrees with the definition. */
    char *big = mkbytes(1031, 7);
    for (size_t start = 0; start < 8; start++) {
        const char *p = big + start;
        size_t len = 1031 - start;
        uint32_t want = crc32c_ref((const unsigned char *)p, len);
        assert_int_equal(spool__crc32c(0, p, len), want);
        for (size_t cut = 0; cut <= len; cut += (start == 0 ? 1 : 37)) {
            uint32_t c = spool__crc32c(0, p, cut);
            assert_int_equal(spool__crc32c(c, p + cut, len - cut), want);
        }
    }
    /* Not a constant: one changed bit changes it. */
    uint32_t a = spool__crc32c(0, big, 1031);
    big[500] ^= 1;
    assert_int_not_equal(spool__crc32c(0, big, 1031), a);
    free(big);
}

/* ---- 2. create ------------------------------------------------------------ */

static void test_create(void **state)
{
    fixture *f = *state;
    char tmp[256], err[512] = "", other[256];
    spool__journal *j = NULL;
    rlog l = {0};
    uint64_t records = 99, nops = 99;

    assert_false(file_exists(f->path));
    j = jopen(f->path, MIB + 1);
    assert_int_equal(file_size(f->path), MIB + 4096);
    assert_int_equal(spool__journal_size(j), MIB + 4096);
    assert_string_equal(spool__journal_path(j), f->path);
    assert_int_equal(spool__journal_checkpoints(j), 0);
    new_path(f->path, tmp, sizeof(tmp));
    assert_false(file_exists(tmp));

    assert_int_equal(spool__journal_replay(j, record_cb, &l, &records, &nops), 0);
    assert_int_equal(l.calls, 0);
    assert_int_equal(records, 0);
    assert_int_equal(nops, 0);
    spool__journal_close(j);

    /* Pre-zeroed: everything after the two header slots is zeros, and the
     * header slots are not. */
    {
        int fd = open(f->path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        size_t n = (size_t)(MIB + 4096);
        unsigned char *all = malloc(n);
        assert_non_null(all);
        assert_int_equal(pread(fd, all, n, 0), (ssize_t)n);
        close(fd);
        bool hdr_nonzero = false;
        for (size_t i = 0; i < 1024; i++)
            hdr_nonzero |= all[i] != 0;
        assert_true(hdr_nonzero);
        for (size_t i = 1024; i < n; i++)
            if (all[i] != 0)
                fail_msg("byte %zu of a new journal is %#x, not 0", i, all[i]);
        free(all);
    }

    /* Reopening a fresh journal: still nothing to replay, same size even if
     * asked otherwise. */
    j = open_replay(f->path, MIB + 1, &l);
    assert_int_equal(l.calls, 0);
    assert_int_equal(spool__journal_size(j), MIB + 4096);
    spool__journal_close(j);

    /* Sizes: rounded up, then checked against the range; nothing is created
     * for a refused size. */
    snprintf(other, sizeof(other), "%s/small", f->dir);
    j = (spool__journal *)1;
    assert_int_equal(spool__journal_open(other, SPOOL_JOURNAL_SIZE_MIN - 4096, &j, err,
                                         sizeof(err)),
                     KERR_INVAL);
    assert_null(j);
    assert_true(err[0] != '\0');
    assert_false(file_exists(other));
    j = jopen(other, SPOOL_JOURNAL_SIZE_MIN - 4095); /* rounds up to the minimum */
    assert_int_equal(file_size(other), SPOOL_JOURNAL_SIZE_MIN);
    spool__journal_close(j);
    snprintf(other, sizeof(other), "%s/big", f->dir);
    assert_int_equal(spool__journal_open(other, SPOOL_JOURNAL_SIZE_MAX + 1, &j, err,
                                         sizeof(err)),
                     KERR_INVAL);
    assert_false(file_exists(other));
    rlog_free(&l);
}

/* ---- 3. append, reopen, replay -------------------------------------------- */

static void test_append_reopen_replay(void **state)
{
    fixture *f = *state;
    char *m1 = mkbytes(13, 1), *d1 = mkbytes(1000, 2), *m2 = mkbytes(7, 3);
    char *m4 = mkbytes(1, 4), *d4 = mkbytes(3, 5), *m6 = mkbytes(100, 6);
    spool__jop r1[] = {
        mkop(JOP_SAVE, 1, m1, 13, d1, 1000),
        mkop(JOP_SAVE_META, 2, m2, 7, NULL, 0),
    };
    spool__jop r2[] = {mkop(JOP_REMOVE, 3, NULL, 0, NULL, 0)};
    spool__jop r3[] = {
        mkop(JOP_SAVE, 4, m4, 1, d4, 3),
        mkop(JOP_REMOVE, 1, NULL, 0, NULL, 0),
        mkop(JOP_SAVE_META, 5, m6, 100, NULL, 0),
    };
    const spool__jop *recs[] = {r1, r2, r3};
    const size_t ns[] = {2, 1, 3};
    rlog l = {0};

    /* Lengths: 24-byte header, 32 per op, the bytes, padded to 512. */
    assert_int_equal(spool__journal_record_len(r1, 2), 1536); /* 24 + 64 + 1020 */
    assert_int_equal(spool__journal_record_len(r2, 1), 512);  /* 24 + 32 */
    assert_int_equal(spool__journal_record_len(r3, 3), 512);  /* 24 + 96 + 104 */
    assert_int_equal(spool__journal_record_len(NULL, 0), 512);

    spool__journal *j = jopen(f->path, MIB);
    append(j, r1, 2, true);
    append(j, r2, 1, false);
    append(j, r3, 3, false);
    assert_int_equal(spool__journal_checkpoints(j), 0);
    spool__journal_close(j);

    j = open_replay(f->path, MIB, &l);
    assert_replayed(&l, recs, ns, 3);
    spool__journal_close(j);

    /* Replay does not consume anything: a second open replays the same. */
    rlog_free(&l);
    j = open_replay(f->path, MIB, &l);
    assert_replayed(&l, recs, ns, 3);
    spool__journal_close(j);

    rlog_free(&l);
    free(m1);
    free(d1);
    free(m2);
    free(m4);
    free(d4);
    free(m6);
}

/* Appending after a replay, without a checkpoint in between, continues the
 * ring after the replayed records: all of them and the new one replay. */
static void test_append_after_replay(void **state)
{
    fixture *f = *state;
    char *m = mkbytes(40, 7), *d = mkbytes(500, 8);
    spool__jop r1[] = {mkop(JOP_SAVE, 11, m, 40, d, 500)};
    spool__jop r2[] = {mkop(JOP_SAVE_META, 12, m, 40, NULL, 0)};
    spool__jop r3[] = {mkop(JOP_REMOVE, 11, NULL, 0, NULL, 0)};
    const spool__jop *recs[] = {r1, r2, r3};
    const size_t ns[] = {1, 1, 1};
    rlog l = {0};

    spool__journal *j = jopen(f->path, MIB);
    append(j, r1, 1, true);
    append(j, r2, 1, true);
    spool__journal_close(j);
    j = open_replay(f->path, MIB, &l);
    assert_replayed(&l, recs, ns, 2);
    append(j, r3, 1, true);
    spool__journal_close(j);
    rlog_free(&l);
    j = open_replay(f->path, MIB, &l);
    assert_replayed(&l, recs, ns, 3);
    spool__journal_close(j);
    rlog_free(&l);
    free(m);
    free(d);
}

/* ---- 4. checkpoint -------------------------------------------------------- */

static void test_checkpoint(void **state)
{
    fixture *f = *state;
    char *m = mkbytes(50, 10), *d = mkbytes(500, 11);
    char *m2 = mkbytes(50, 12), *d2 = mkbytes(500, 13);
    spool__jop a[] = {mkop(JOP_SAVE, 10, m, 50, d, 500)};
    spool__jop b[] = {mkop(JOP_SAVE_META, 11, m, 20, NULL, 0),
                      mkop(JOP_REMOVE, 12, NULL, 0, NULL, 0)};
    spool__jop c[] = {mkop(JOP_SAVE, 13, d, 300, m, 7)};
    /* Same length as a, so the record after it is the old lap's b. */
    spool__jop n[] = {mkop(JOP_SAVE, 14, m2, 50, d2, 500)};
    rlog l = {0};

    assert_int_equal(spool__journal_record_len(n, 1), spool__journal_record_len(a, 1));

    spool__journal *j = jopen(f->path, MIB);
    append(j, a, 1, true);
    append(j, b, 2, true);
    append(j, c, 1, false);
    assert_int_equal(spool__journal_checkpoint(j), 0);
    assert_int_equal(spool__journal_checkpoints(j), 1);
    spool__journal_close(j);

    j = open_replay(f->path, MIB, &l);
    assert_int_equal(l.calls, 0);
    assert_int_equal(spool__journal_checkpoints(j), 0); /* since open */

    /* One record after the checkpoint overwrites a; b and c still sit after
     * it with good checksums, from the older lap. */
    append(j, n, 1, true);
    spool__journal_close(j);

    j = open_replay(f->path, MIB, &l);
    {
        const spool__jop *recs[] = {n};
        const size_t ns[] = {1};
        assert_replayed(&l, recs, ns, 1);
    }
    spool__journal_close(j);
    rlog_free(&l);
    free(m);
    free(d);
    free(m2);
    free(d2);
}

/* Many laps: the header slots alternate; the last checkpoint wins. Also the
 * startup sequence kumod uses (replay, checkpoint, append). */
static void test_checkpoint_laps(void **state)
{
    fixture *f = *state;
    char *m = mkbytes(64, 20), *d = mkbytes(4000, 21);
    rlog l = {0};
    spool__journal *j = jopen(f->path, MIB);

    for (unsigned lap = 0; lap < 7; lap++) {
        for (unsigned i = 0; i < 3; i++) {
            spool__jop o = mkop(JOP_SAVE, 100 * lap + i, m + i, 64 - i, d + lap, 4000 - lap);
            append(j, &o, 1, i == 0);
        }
        assert_int_equal(spool__journal_checkpoint(j), 0);
        assert_int_equal(spool__journal_checkpoints(j), lap + 1);
    }
    spool__jop last = mkop(JOP_SAVE, 999, m, 64, d, 4000);
    append(j, &last, 1, true);
    spool__journal_close(j);

    j = open_replay(f->path, MIB, &l);
    {
        const spool__jop *recs[] = {&last};
        const size_t ns[] = {1};
        assert_replayed(&l, recs, ns, 1);
    }
    /* As kumod starts: replayed, the stores synced, a new lap. */
    assert_int_equal(spool__journal_checkpoint(j), 0);
    spool__jop next[] = {mkop(JOP_REMOVE, 999, NULL, 0, NULL, 0),
                         mkop(JOP_SAVE_META, 1000, m, 3, NULL, 0)};
    append(j, next, 2, true);
    spool__journal_close(j);

    rlog_free(&l);
    j = open_replay(f->path, MIB, &l);
    {
        const spool__jop *recs[] = {next};
        const size_t ns[] = {2};
        assert_replayed(&l, recs, ns, 1);
    }
    spool__journal_close(j);
    rlog_free(&l);
    free(m);
    free(d);
}

/* ---- 5. torn record ------------------------------------------------------- */

static void test_torn_record(void **state)
{
    fixture *f = *state;
    char *m = mkbytes(40, 30), *d = mkbytes(2000, 31);
    spool__jop r1[] = {mkop(JOP_SAVE, 30, m, 40, d, 2000)};
    spool__jop r2[] = {mkop(JOP_SAVE_META, 31, m + 1, 9, NULL, 0),
                       mkop(JOP_SAVE, 32, m + 2, 11, d + 3, 333)};
    spool__jop r3[] = {mkop(JOP_SAVE, 33, m + 3, 21, d + 5, 1501)}; /* padded */
    spool__jop r4[] = {mkop(JOP_REMOVE, 30, NULL, 0, NULL, 0)};
    const spool__jop *recs[] = {r1, r2, r3, r4};
    const size_t ns[] = {1, 2, 1, 1};
    rlog l = {0};

    spool__journal *j = jopen(f->path, MIB);
    append(j, r1, 1, false);
    append(j, r2, 2, false);
    append(j, r3, 1, false);
    append(j, r4, 1, true);
    spool__journal_close(j);

    size_t len1 = spool__journal_record_len(r1, 1), len2 = spool__journal_record_len(r2, 2);
    size_t len3 = spool__journal_record_len(r3, 1);
    uint64_t off3 = REC_START + len1 + len2;
    assert_int_equal(len3 % 512, 0);
    assert_true(len3 > 24 + 32 + 21 + 1501); /* has padding */

    /* Untouched: all four. */
    j = open_replay(f->path, MIB, &l);
    assert_replayed(&l, recs, ns, 4);
    spool__journal_close(j);
    rlog_free(&l);

    /* A byte of the 3rd record's data, meta, op header, crc, seq, length,
     * magic, last pad byte: each time exactly the first two come back (the
     * 4th, whole, is after the tear and must not), and once repaired all
     * four again. */
    const uint64_t where[] = {
        off3 + 24 + 32 + 21 + 700, /* data */
        off3 + 24 + 32 + 5,        /* meta */
        off3 + 24 + 0,             /* op kind */
        off3 + 24 + 4,             /* op meta_len */
        off3 + 24 + 20,            /* op id */
        off3 + 4,                  /* crc */
        off3 + 8,                  /* seq */
        off3 + 16,                 /* len */
        off3 + 20,                 /* nops */
        off3 + 0,                  /* magic */
        off3 + len3 - 1,           /* padding */
    };
    for (size_t w = 0; w < sizeof(where) / sizeof(where[0]); w++) {
        flip_byte(f->path, where[w]);
        j = open_replay(f->path, MIB, &l);
        if (l.calls != 2)
            fail_msg("byte %llu of the 3rd record flipped: %zu records replayed, want 2",
                     (unsigned long long)(where[w] - off3), l.calls);
        assert_replayed(&l, recs, ns, 2);
        spool__journal_close(j);
        rlog_free(&l);

        flip_byte(f->path, where[w]);
        j = open_replay(f->path, MIB, &l);
        assert_replayed(&l, recs, ns, 4);
        spool__journal_close(j);
        rlog_free(&l);
    }

    /* Torn in the first record: nothing. */
    flip_byte(f->path, REC_START + 24 + 32 + 3);
    j = open_replay(f->path, MIB, &l);
    assert_int_equal(l.calls, 0);
    spool__journal_close(j);
    rlog_free(&l);
    free(m);
    free(d);
}

/* ---- 6. damaged header ---------------------------------------------------- */

static void test_damaged_header(void **state)
{
    fixture *f = *state;
    char err[512] = "", other[256];
    char *m = mkbytes(10, 40);
    spool__jop a = mkop(JOP_SAVE_META, 40, m, 10, NULL, 0);
    spool__jop b = mkop(JOP_SAVE, 41, m, 5, m + 5, 5);
    rlog l = {0};
    spool__journal *j;

    /* Two header generations: one from create, one from the checkpoint. */
    j = jopen(f->path, MIB);
    append(j, &a, 1, true);
    assert_int_equal(spool__journal_checkpoint(j), 0);
    append(j, &b, 1, true);
    spool__journal_close(j);

    /* The older slot (slot 1, generation 1) damaged: the newer still
     * stands and b is replayed. */
    char *junk = mkbytes(1024, 41);
    write_at(f->path, 512, junk, 512);
    j = open_replay(f->path, MIB, &l);
    {
        const spool__jop *recs[] = {&b};
        const size_t ns[] = {1};
        assert_replayed(&l, recs, ns, 1);
    }
    spool__journal_close(j);
    rlog_free(&l);

    /* Both damaged: refused, saying which file. */
    write_at(f->path, 0, junk, 1024);
    j = (spool__journal *)1;
    err[0] = '\0';
    int rc = spool__journal_open(f->path, MIB, &j, err, sizeof(err));
    assert_true(rc < 0);
    assert_int_equal(rc, KERR_PARSE);
    assert_null(j);
    if (strstr(err, f->path) == NULL)
        fail_msg("error does not name %s: %s", f->path, err);
    /* ... and left alone. */
    assert_int_equal(file_size(f->path), MIB);
    assert_int_equal(read_byte(f->path, 0), (unsigned char)junk[0]);

    /* Zeros in both slots (a never-finished file): refused too. */
    memset(junk, 0, 1024);
    write_at(f->path, 0, junk, 1024);
    err[0] = '\0';
    rc = spool__journal_open(f->path, MIB, &j, err, sizeof(err));
    assert_int_equal(rc, KERR_PARSE);
    assert_non_null(strstr(err, f->path));

    /* A good header whose size does not match the file: refused. */
    snprintf(other, sizeof(other), "%s/grown", f->dir);
    j = jopen(other, MIB);
    spool__journal_close(j);
    assert_int_equal(truncate(other, (off_t)(MIB + 4096)), 0);
    err[0] = '\0';
    rc = spool__journal_open(other, MIB, &j, err, sizeof(err));
    assert_true(rc < 0);
    assert_non_null(strstr(err, other));

    /* Some other file entirely. */
    snprintf(other, sizeof(other), "%s/text", f->dir);
    {
        FILE *fp = fopen(other, "w");
        assert_non_null(fp);
        for (int i = 0; i < 1000; i++)
            fputs("not a journal\n", fp);
        fclose(fp);
    }
    err[0] = '\0';
    rc = spool__journal_open(other, MIB, &j, err, sizeof(err));
    assert_true(rc < 0);
    assert_non_null(strstr(err, other));
    free(junk);
    free(m);
}

/* A checkpoint whose header write tore (a crash in the middle of it): the
 * other slot still holds the previous header, so the journal opens and the
 * records of the lap before come back (the stores were synced before the
 * checkpoint, so replaying them again is harmless). The damage keeps the
 * magic and version: only the header checksum can tell. */
static void test_header_slots(void **state)
{
    fixture *f = *state;
    char *m = mkbytes(24, 45);
    spool__jop a = mkop(JOP_SAVE, 45, m, 12, m + 12, 12);
    spool__jop b = mkop(JOP_REMOVE, 46, NULL, 0, NULL, 0);
    rlog l = {0};
    int fallback = 0, current = 0;

    spool__journal *j = jopen(f->path, MIB);
    append(j, &a, 1, true);
    append(j, &b, 1, true);
    assert_int_equal(spool__journal_checkpoint(j), 0);
    spool__journal_close(j);

    /* Damage one slot at a time (a byte of its ckpt_seq, offset 32 in the
     * slot): it always opens; damaging the current slot falls back to the
     * previous checkpoint (a and b again), damaging the other changes
     * nothing (no records). */
    for (uint64_t slot = 0; slot < 1024; slot += 512) {
        flip_byte(f->path, slot + 32);
        j = open_replay(f->path, MIB, &l);
        if (l.calls == 0) {
            current++;
        } else {
            const spool__jop *recs[] = {&a, &b};
            const size_t ns[] = {1, 1};
            assert_replayed(&l, recs, ns, 2);
            fallback++;
        }
        spool__journal_close(j);
        rlog_free(&l);
        flip_byte(f->path, slot + 32);
    }
    assert_int_equal(fallback, 1);
    assert_int_equal(current, 1);
    free(m);
}

/* ---- hand-built records: the on-disk format ---------------------------- */

#define REC_MAGIC 0x43455231u

/* Encodes a record the way the journal header describes it: 24-byte header
 * (magic, CRC-32C of the rest, seq, len, nops), 32-byte op headers (kind,
 * 3 pad, meta_len, data_len, pad, id), the bytes, zero padding to 8. */
/* A record padded to align bytes: 512 today, 8 in journals written before
 * the records were aligned for O_DIRECT (those must still replay). */
static size_t encode_record_aligned(unsigned char *out, uint64_t seq, const spool__jop *ops,
                                    size_t n, size_t align)
{
    size_t len = 24 + 32 * n, pos;
    for (size_t i = 0; i < n; i++)
        len += ops[i].meta_len + ops[i].data_len;
    len = (len + align - 1) & ~(align - 1);
    memset(out, 0, len);
    uint32_t magic = REC_MAGIC, len32 = (uint32_t)len, n32 = (uint32_t)n;
    memcpy(out, &magic, 4);
    memcpy(out + 8, &seq, 8);
    memcpy(out + 16, &len32, 4);
    memcpy(out + 20, &n32, 4);
    pos = 24 + 32 * n;
    for (size_t i = 0; i < n; i++) {
        unsigned char *h = out + 24 + 32 * i;
        uint32_t ml = (uint32_t)ops[i].meta_len, dl = (uint32_t)ops[i].data_len;
        h[0] = (unsigned char)ops[i].kind;
        memcpy(h + 4, &ml, 4);
        memcpy(h + 8, &dl, 4);
        memcpy(h + 16, ops[i].id.b, 16);
        if (ml > 0)
            memcpy(out + pos, ops[i].meta, ml);
        pos += ml;
        if (dl > 0)
            memcpy(out + pos, ops[i].data, dl);
        pos += dl;
    }
    uint32_t crc = spool__crc32c(0, out + 8, len - 8);
    memcpy(out + 4, &crc, 4);
    return len;
}

static size_t encode_record(unsigned char *out, uint64_t seq, const spool__jop *ops, size_t n)
{
    return encode_record_aligned(out, seq, ops, n, 512);
}

static void reseal(unsigned char *rec, size_t len)
{
    uint32_t crc = spool__crc32c(0, rec + 8, len - 8);
    memcpy(rec + 4, &crc, 4);
}

static void test_record_format(void **state)
{
    fixture *f = *state;
    char *m = mkbytes(64, 95), *d = mkbytes(640, 96);
    spool__jop r1[] = {mkop(JOP_SAVE, 95, m, 13, d, 601), mkop(JOP_SAVE_META, 96, m, 3, NULL, 0)};
    spool__jop r2[] = {mkop(JOP_REMOVE, 97, NULL, 0, NULL, 0)};
    spool__jop r3[] = {mkop(JOP_SAVE, 98, m + 1, 50, d + 2, 9)};
    unsigned char want[4096], got[4096], rec[2048];
    rlog l = {0};
    uint64_t records = 0, nops = 0;

    spool__journal *j = jopen(f->path, MIB);
    append(j, r1, 2, true);
    append(j, r2, 1, true);
    spool__journal_close(j);

    /* What append wrote is byte for byte the documented format, followed
     * by the zeros of a new file. */
    size_t l1 = encode_record(want, 1, r1, 2);
    size_t l2 = encode_record(want + l1, 2, r2, 1);
    assert_int_equal(l1, spool__journal_record_len(r1, 2));
    assert_int_equal(l2, spool__journal_record_len(r2, 1));
    memset(want + l1 + l2, 0, sizeof(want) - l1 - l2);
    {
        int fd = open(f->path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(pread(fd, got, sizeof(got), REC_START), (ssize_t)sizeof(got));
        close(fd);
    }
    assert_memory_equal(got, want, sizeof(want));

    /* A record built here with the next sequence number is replayed, also
     * in the older format (padded to 8 bytes, not 512). */
    uint64_t off3 = REC_START + l1 + l2;
    size_t l3 = encode_record_aligned(rec, 3, r3, 1, 8);
    assert_int_equal(l3 % 512 != 0, 1);
    write_at(f->path, off3, rec, l3);
    j = open_replay(f->path, MIB, &l);
    {
        const spool__jop *recs[] = {r1, r2, r3};
        const size_t ns[] = {2, 1, 1};
        assert_replayed(&l, recs, ns, 3);
    }
    spool__journal_close(j);
    rlog_free(&l);

    /* A whole record (good checksum) with an unknown op kind is not a torn
     * write: the replay refuses it, after delivering the two before. */
    rec[24] = 9;
    reseal(rec, l3);
    write_at(f->path, off3, rec, l3);
    j = jopen(f->path, MIB);
    assert_int_equal(spool__journal_replay(j, record_cb, &l, &records, &nops), KERR_PARSE);
    assert_int_equal(records, 2);
    assert_int_equal(nops, 3);
    assert_int_equal(l.calls, 2);
    spool__journal_close(j);
    rlog_free(&l);

    /* Good checksum, op lengths beyond the record: refused as well. */
    l3 = encode_record(rec, 3, r3, 1);
    {
        uint32_t big = 1000;
        memcpy(rec + 24 + 8, &big, 4); /* data_len */
    }
    reseal(rec, l3);
    write_at(f->path, off3, rec, l3);
    j = jopen(f->path, MIB);
    assert_int_equal(spool__journal_replay(j, record_cb, &l, &records, &nops), KERR_PARSE);
    assert_int_equal(records, 2);
    assert_int_equal(l.calls, 2);
    spool__journal_close(j);
    rlog_free(&l);

    /* Good checksum, one more op header than the record holds (40 valid
     * empty ones, nops 41; larger than any record before, so the replay's
     * buffer ends where it does): nothing is read beyond it (ASan would
     * say) and nothing more delivered. */
    {
        spool__jop empty[40];
        for (unsigned i = 0; i < 40; i++)
            empty[i] = mkop(JOP_REMOVE, 200 + i, NULL, 0, NULL, 0);
        l3 = encode_record(rec, 3, empty, 40);
        assert_true(l3 > l1 && l3 > l2 && l3 <= sizeof(rec));
        uint32_t many = 41;
        memcpy(rec + 20, &many, 4);
    }
    reseal(rec, l3);
    write_at(f->path, off3, rec, l3);
    j = jopen(f->path, MIB);
    int rc = spool__journal_replay(j, record_cb, &l, &records, &nops);
    assert_true(rc == 0 || rc == KERR_PARSE);
    assert_int_equal(records, 2);
    assert_int_equal(l.calls, 2);
    spool__journal_close(j);
    rlog_free(&l);

    /* A length that runs past the end of the file: the end, nothing read. */
    l3 = encode_record(rec, 3, r3, 1);
    {
        uint32_t huge = (uint32_t)MIB;
        memcpy(rec + 16, &huge, 4);
    }
    reseal(rec, l3);
    write_at(f->path, off3, rec, l3);
    j = jopen(f->path, MIB);
    assert_int_equal(spool__journal_replay(j, record_cb, &l, &records, &nops), 0);
    assert_int_equal(records, 2);
    spool__journal_close(j);
    rlog_free(&l);
    free(m);
    free(d);
}

/* ---- 7. room and takes ---------------------------------------------------- */

static void test_room_takes(void **state)
{
    fixture *f = *state;
    const uint64_t size = SPOOL_JOURNAL_SIZE_MIN;
    const size_t ring = (size_t)size - REC_START; /* 1044480 */
    const size_t quarter = ring / 4;               /* 261120 */
    char *m = mkbytes(100, 50), *d = mkbytes(300000, 51);
    rlog l = {0};

    spool__journal *j = jopen(f->path, size);

    /* takes: a quarter of the ring at most. */
    assert_true(spool__journal_takes(j, 24));
    assert_true(spool__journal_takes(j, quarter));
    assert_false(spool__journal_takes(j, quarter + 1));
    assert_false(spool__journal_takes(j, ring));
    spool__jop fits = mkop(JOP_SAVE, 50, m, 100, d, quarter - 24 - 32 - 100);
    spool__jop big = mkop(JOP_SAVE, 50, m, 100, d, quarter - 24 - 32 - 100 + 1);
    assert_int_equal(spool__journal_record_len(&fits, 1), quarter);
    assert_int_equal(spool__journal_record_len(&big, 1), quarter + 512);
    assert_true(spool__journal_takes(j, spool__journal_record_len(&fits, 1)));
    assert_false(spool__journal_takes(j, spool__journal_record_len(&big, 1)));

    /* room: 100 KiB records, ten fit in 1020 KiB, the eleventh does not. */
    const size_t L = 102400;
    spool__jop recs[12];
    for (unsigned i = 0; i < 12; i++)
        recs[i] = mkop(JOP_SAVE, 60 + i, m + i, 100 - i, d + 7 * i, L - 24 - 32 - (100 - i));
    for (unsigned i = 0; i < 12; i++)
        assert_int_equal(spool__journal_record_len(&recs[i], 1), L);
    assert_true(spool__journal_room(j, ring));
    assert_false(spool__journal_room(j, ring + 1));
    unsigned appended = 0;
    while (spool__journal_room(j, L)) {
        assert_true(appended < 12);
        assert_int_equal(spool__journal_append(j, &recs[appended], 1, L, appended % 3 == 0),
                         0);
        appended++;
    }
    assert_int_equal(appended, 10);
    const size_t left = ring - 10 * L; /* 20480 */
    assert_true(spool__journal_room(j, left));
    assert_false(spool__journal_room(j, left + 8));

    /* A record that fills the ring to its last byte. */
    spool__jop filler = mkop(JOP_SAVE, 70, m, 1, d + 1, left - 24 - 32 - 1);
    assert_int_equal(spool__journal_record_len(&filler, 1), left);
    append(j, &filler, 1, true);
    assert_false(spool__journal_room(j, 8));
    assert_false(spool__journal_room(j, 24));
    spool__journal_close(j);

    /* All eleven come back, the last ending exactly at the end of the file. */
    j = open_replay(f->path, size, &l);
    {
        const spool__jop *rs[11];
        size_t ns[11];
        for (int i = 0; i < 10; i++) {
            rs[i] = &recs[i];
            ns[i] = 1;
        }
        rs[10] = &filler;
        ns[10] = 1;
        assert_replayed(&l, rs, ns, 11);
    }
    rlog_free(&l);

    /* A checkpoint makes the whole ring free again. */
    assert_int_equal(spool__journal_checkpoint(j), 0);
    assert_true(spool__journal_room(j, L));
    assert_true(spool__journal_room(j, ring));
    assert_false(spool__journal_room(j, ring + 1));
    /* Same length as the old lap's, so the old lap's third record (good
     * checksum, older sequence number) follows them. */
    append(j, &recs[10], 1, false);
    append(j, &recs[11], 1, true);
    spool__journal_close(j);

    j = open_replay(f->path, size, &l);
    {
        const spool__jop *rs[] = {&recs[10], &recs[11]};
        const size_t ns[] = {1, 1};
        assert_replayed(&l, rs, ns, 2);
    }
    spool__journal_close(j);
    rlog_free(&l);
    free(m);
    free(d);
}

/* ---- 8. resize ------------------------------------------------------------ */

static void test_resize(void **state)
{
    fixture *f = *state;
    char tmp[256];
    char *m = mkbytes(30, 80), *d = mkbytes(5000, 81);
    spool__jop r1[] = {mkop(JOP_SAVE, 80, m, 30, d, 5000)};
    spool__jop r2[] = {mkop(JOP_SAVE_META, 81, m + 3, 27, NULL, 0),
                       mkop(JOP_REMOVE, 82, NULL, 0, NULL, 0)};
    spool__jop r3[] = {mkop(JOP_SAVE, 83, m, 1, d, 1)};
    rlog l = {0};

    new_path(f->path, tmp, sizeof(tmp));
    spool__journal *j = jopen(f->path, MIB);
    append(j, r1, 1, true);
    append(j, r2, 2, false);
    spool__journal_close(j);

    /* Asked for 2 MiB: the records are still there, the file still 1 MiB. */
    j = open_replay(f->path, 2 * MIB, &l);
    {
        const spool__jop *recs[] = {r1, r2};
        const size_t ns[] = {1, 2};
        assert_replayed(&l, recs, ns, 2);
    }
    assert_int_equal(spool__journal_size(j), MIB);
    assert_int_equal(file_size(f->path), MIB);
    rlog_free(&l);

    assert_int_equal(spool__journal_checkpoint(j), 0);
    assert_int_equal(spool__journal_size(j), 2 * MIB);
    assert_int_equal(file_size(f->path), 2 * MIB);
    assert_false(file_exists(tmp));
    assert_true(spool__journal_takes(j, (2 * MIB - REC_START) / 4));
    assert_true(spool__journal_room(j, 2 * MIB - REC_START));
    spool__journal_close(j);

    j = open_replay(f->path, 2 * MIB, &l);
    assert_int_equal(l.calls, 0);
    assert_int_equal(spool__journal_size(j), 2 * MIB);

    /* The sequence goes on in the new file. */
    append(j, r3, 1, true);
    spool__journal_close(j);
    j = open_replay(f->path, 2 * MIB, &l);
    {
        const spool__jop *recs[] = {r3};
        const size_t ns[] = {1};
        assert_replayed(&l, recs, ns, 1);
    }
    rlog_free(&l);

    /* And back down. */
    assert_int_equal(spool__journal_checkpoint(j), 0);
    spool__journal_close(j);
    j = open_replay(f->path, MIB, &l);
    assert_int_equal(l.calls, 0);
    assert_int_equal(spool__journal_size(j), 2 * MIB);
    assert_int_equal(spool__journal_checkpoint(j), 0);
    assert_int_equal(spool__journal_size(j), MIB);
    assert_int_equal(file_size(f->path), MIB);
    assert_false(file_exists(tmp));
    append(j, r2, 2, false);
    spool__journal_close(j);
    j = open_replay(f->path, MIB, &l);
    {
        const spool__jop *recs[] = {r2};
        const size_t ns[] = {2};
        assert_replayed(&l, recs, ns, 1);
    }
    spool__journal_close(j);
    rlog_free(&l);
    free(m);
    free(d);
}

/* ---- 9. the callback stops the replay ------------------------------------- */

static void test_replay_callback_error(void **state)
{
    fixture *f = *state;
    char *m = mkbytes(16, 90);
    spool__jop r1[] = {mkop(JOP_SAVE_META, 90, m, 16, NULL, 0),
                       mkop(JOP_SAVE, 91, m, 8, m + 8, 8)};
    spool__jop r2[] = {mkop(JOP_REMOVE, 92, NULL, 0, NULL, 0)};
    spool__jop r3[] = {mkop(JOP_SAVE_META, 93, m, 4, NULL, 0)};
    uint64_t records = 99, nops = 99;
    rlog l = {0};

    spool__journal *j = jopen(f->path, MIB);
    append(j, r1, 2, true);
    append(j, r2, 1, true);
    append(j, r3, 1, true);
    spool__journal_close(j);

    j = jopen(f->path, MIB);
    l.fail_at_call = 2;
    l.fail_rc = -4242;
    assert_int_equal(spool__journal_replay(j, record_cb, &l, &records, &nops), -4242);
    assert_int_equal(l.calls, 2); /* the third record was never offered */
    assert_int_equal(records, 1);
    assert_int_equal(nops, 2);
    {
        const spool__jop *recs[] = {r1};
        const size_t ns[] = {2};
        l.calls = 1; /* the failing call delivered nothing */
        assert_replayed(&l, recs, ns, 1);
    }
    spool__journal_close(j);
    rlog_free(&l);

    /* A KERR_* code as well, stopping at the first record. */
    j = jopen(f->path, MIB);
    l.fail_at_call = 1;
    l.fail_rc = KERR_IO;
    assert_int_equal(spool__journal_replay(j, record_cb, &l, &records, &nops), KERR_IO);
    assert_int_equal(l.calls, 1);
    assert_int_equal(records, 0);
    assert_int_equal(nops, 0);
    spool__journal_close(j);
    rlog_free(&l);

    /* Nothing was lost: a later start replays all three. */
    j = open_replay(f->path, MIB, &l);
    {
        const spool__jop *recs[] = {r1, r2, r3};
        const size_t ns[] = {2, 1, 1};
        assert_replayed(&l, recs, ns, 3);
    }
    spool__journal_close(j);
    rlog_free(&l);
    free(m);
}

/* ---- 10. records of more than 1024 pieces --------------------------------- */

static spool__jop *many_ops(size_t n, unsigned seed, char **meta, char **data)
{
    spool__jop *ops = calloc(n, sizeof(*ops));
    size_t mtot = 0, dtot = 0;
    assert_non_null(ops);
    for (size_t i = 0; i < n; i++) {
        mtot += 1 + i % 17;
        dtot += 1 + (i * 7) % 29;
    }
    *meta = mkbytes(mtot, seed);
    *data = mkbytes(dtot, seed + 1);
    mtot = dtot = 0;
    for (size_t i = 0; i < n; i++) {
        size_t ml = 1 + i % 17, dl = 1 + (i * 7) % 29;
        ops[i] = mkop(JOP_SAVE, seed * 10000u + (unsigned)i, *meta + mtot, ml, *data + dtot, dl);
        mtot += ml;
        dtot += dl;
    }
    return ops;
}

static void test_many_pieces(void **state)
{
    fixture *f = *state;
    char *m1, *d1, *m2, *d2, *m3 = mkbytes(5, 3);
    spool__jop *a = many_ops(600, 1, &m1, &d1);   /* 1 + 1200 + pad pieces */
    spool__jop *b = many_ops(1100, 2, &m2, &d2);  /* 1 + 2200 + pad: two full runs */
    spool__jop c[] = {mkop(JOP_SAVE_META, 3, m3, 5, NULL, 0)};
    rlog l = {0};

    assert_true(spool__journal_record_len(a, 600) % 8 == 0);
    spool__journal *j = jopen(f->path, MIB);
    append(j, a, 600, false);
    append(j, b, 1100, false);
    append(j, c, 1, true);
    spool__journal_close(j);

    j = open_replay(f->path, MIB, &l);
    {
        const spool__jop *recs[] = {a, b, c};
        const size_t ns[] = {600, 1100, 1};
        assert_replayed(&l, recs, ns, 3);
    }
    spool__journal_close(j);
    rlog_free(&l);
    free(a);
    free(b);
    free(m1);
    free(d1);
    free(m2);
    free(d2);
    free(m3);
}

/* With direct I/O on, records go through the O_DIRECT descriptor (on a
 * file system that takes it) and are the same bytes as buffered ones; an
 * append at an offset O_DIRECT cannot take (after replaying a journal whose
 * records are padded to 8 bytes only) goes through the page cache, and
 * everything still replays; the next lap is aligned again. */
static void test_direct_writes(void **state)
{
    fixture *f = *state;
    if (!g_direct)
        skip();
    char *m = mkbytes(64, 70), *d = mkbytes(3000, 71);
    spool__jop r1[] = {mkop(JOP_SAVE, 70, m, 33, d, 2999)};
    spool__jop r2[] = {mkop(JOP_REMOVE, 71, NULL, 0, NULL, 0)};
    spool__jop r3[] = {mkop(JOP_SAVE_META, 72, m, 5, NULL, 0)};
    const spool__jop *recs[] = {r1, r2, r3, r1};
    const size_t ns[] = {1, 1, 1, 1};
    unsigned char want[8192], got[8192];
    rlog l = {0};

    spool__journal *j = jopen(f->path, MIB);
    assert_int_equal(spool__journal_direct(j), fs_takes_direct(f->dir));
    if (!spool__journal_direct(j)) {
        spool__journal_close(j);
        free(m);
        free(d);
        skip();
    }
    append(j, r1, 1, true);
    append(j, r2, 1, false);
    assert_true(spool__journal_direct(j));
    spool__journal_close(j);
    size_t l1 = encode_record(want, 1, r1, 1);
    size_t l2 = encode_record(want + l1, 2, r2, 1);
    assert_int_equal(pread_file(f->path, got, l1 + l2, REC_START), 0);
    assert_memory_equal(got, want, l1 + l2);

    /* an old-format record after them: the next append is unaligned */
    size_t l3 = encode_record_aligned(want, 3, r3, 1, 8);
    assert_true(l3 % 512 != 0);
    write_at(f->path, REC_START + l1 + l2, want, l3);
    j = open_replay(f->path, MIB, &l);
    assert_replayed(&l, recs, ns, 3);
    rlog_free(&l);
    append(j, r1, 1, true);
    spool__journal_close(j);
    j = open_replay(f->path, MIB, &l);
    assert_replayed(&l, recs, ns, 4);
    rlog_free(&l);
    assert_int_equal(spool__journal_checkpoint(j), 0);
    append(j, r2, 1, true);
    assert_true(spool__journal_direct(j));
    spool__journal_close(j);
    l2 = encode_record(want, 5, r2, 1);
    assert_int_equal(pread_file(f->path, got, l2, REC_START), 0);
    assert_memory_equal(got, want, l2);
    free(m);
    free(d);
}

static int group_buffered(void **state)
{
    (void)state;
    g_direct = false;
    return 0;
}

static int group_direct(void **state)
{
    (void)state;
    g_direct = true;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test_setup_teardown(test_create, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_append_reopen_replay, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_append_after_replay, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_checkpoint, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_checkpoint_laps, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_torn_record, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_damaged_header, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_header_slots, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_record_format, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_room_takes, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_resize, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_replay_callback_error, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_many_pieces, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_direct_writes, setup_dir, teardown_dir),
    };
    int failed = cmocka_run_group_tests_name("buffered", tests, group_buffered, NULL);
    return failed + cmocka_run_group_tests_name("direct", tests, group_direct, NULL);
}
