/* Spool ids: RFC 4122 version 1 UUIDs, the format of KumoMTA's SpoolId, so the
 * creation time of a message can be read back from its id (start-up uses it to
 * infer a message's age without reading its body). We build the UUID here
 * rather than call libuuid's uuid_generate_time_safe: that may talk to uuidd
 * or take a file lock per call, which a reactor thread must not do, and its
 * uniqueness state is per thread. Instead the process owns one atomic "last
 * timestamp" shared by all threads, and each new id takes the next 100 ns tick
 * after it, so ids are unique and strictly increasing in time within the
 * process even when the wall clock steps back or many ids are made in one
 * tick. The node id and clock sequence are random per process (RFC 4122 §4.5,
 * multicast bit set), which keeps ids from different processes and restarts
 * apart. Any thread; nothing here fails (if the kernel has no randomness we
 * fall back to time and pid, which only weakens uniqueness across processes). */
#include "core/spoolid.h"

#include <stdint.h>

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "core/hex.h"
#include "core/kerr.h"

/* 100 ns intervals from the Gregorian reform (1582-10-15) to the Unix epoch. */
#define UUID_EPOCH_OFFSET 0x01B21DD213814000ULL
#define UUID_TS_MASK 0x0FFFFFFFFFFFFFFFULL

static _Atomic uint64_t last_ts;
static uint8_t node_clockseq[8]; /* bytes 8..15 of every id, fixed per process */
static pthread_once_t seed_once = PTHREAD_ONCE_INIT;

static void seed_fill(void)
{
    uint8_t r[8];
    if (getrandom(r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x =
            (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40);
        memcpy(r, &x, sizeof(r));
    }
    /* Clock sequence with the RFC 4122 variant bits (10xxxxxx). */
    node_clockseq[0] = (uint8_t)((r[0] & 0x3f) | 0x80);
    node_clockseq[1] = r[1];
    /* A random node id must have the multicast bit set so that it can never
     * equal a real IEEE 802 address (RFC 4122 §4.5). */
    memcpy(&node_clockseq[2], &r[2], 6);
    node_clockseq[2] |= 0x01;
}

/* A forked child would otherwise share node, clock sequence and last
 * timestamp with its parent and could mint the same ids. */
static void seed_after_fork(void)
{
    seed_fill();
}

static void seed_init(void)
{
    seed_fill();
    pthread_atfork(NULL, NULL, seed_after_fork);
}

static uint64_t now_uuid_ts(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_sec * 10000000ULL + (uint64_t)ts.tv_nsec / 100 + UUID_EPOCH_OFFSET) &
           UUID_TS_MASK;
}

void spoolid_new(spoolid *out)
{
    pthread_once(&seed_once, seed_init);

    uint64_t now = now_uuid_ts();
    uint64_t prev = atomic_load_explicit(&last_ts, memory_order_relaxed);
    uint64_t ts;
    do {
        ts = now > prev ? now : prev + 1;
    } while (!atomic_compare_exchange_weak_explicit(&last_ts, &prev, ts, memory_order_relaxed,
                                                    memory_order_relaxed));

    uint32_t time_low = (uint32_t)ts;
    uint16_t time_mid = (uint16_t)(ts >> 32);
    uint16_t time_hi = (uint16_t)(((ts >> 48) & 0x0fff) | 0x1000); /* version 1 */
    out->b[0] = (uint8_t)(time_low >> 24);
    out->b[1] = (uint8_t)(time_low >> 16);
    out->b[2] = (uint8_t)(time_low >> 8);
    out->b[3] = (uint8_t)time_low;
    out->b[4] = (uint8_t)(time_mid >> 8);
    out->b[5] = (uint8_t)time_mid;
    out->b[6] = (uint8_t)(time_hi >> 8);
    out->b[7] = (uint8_t)time_hi;
    memcpy(&out->b[8], node_clockseq, sizeof(node_clockseq));
}

void spoolid_to_hex(const spoolid *id, char out[SPOOLID_HEX_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out[2 * i] = hex[id->b[i] >> 4];
        out[2 * i + 1] = hex[id->b[i] & 0x0f];
    }
    out[SPOOLID_HEX_LEN] = '\0';
}

int spoolid_from_hex(const char *s, spoolid *out)
{
    if (!s || !out)
        return KERR_INVAL;
    size_t len = strlen(s);
    bool dashed = len == 36;
    if (len != SPOOLID_HEX_LEN && !dashed)
        return KERR_PARSE;
    spoolid id;
    const char *p = s;
    for (int i = 0; i < 16; i++) {
        /* The dashed form is 8-4-4-4-12: a dash before bytes 4, 6, 8 and 10. */
        if (dashed && (i == 4 || i == 6 || i == 8 || i == 10)) {
            if (*p++ != '-')
                return KERR_PARSE;
        }
        int hi = hex_digit_value(p[0]);
        int lo = hi < 0 ? -1 : hex_digit_value(p[1]);
        if (lo < 0)
            return KERR_PARSE;
        id.b[i] = (uint8_t)(hi << 4 | lo);
        p += 2;
    }
    *out = id;
    return 0;
}

int64_t spoolid_created_ns(const spoolid *id)
{
    const uint8_t *b = id->b;
    uint64_t time_low = (uint64_t)b[0] << 24 | (uint64_t)b[1] << 16 | (uint64_t)b[2] << 8 | b[3];
    uint64_t time_mid = (uint64_t)b[4] << 8 | b[5];
    uint64_t time_hi = ((uint64_t)b[6] << 8 | b[7]) & 0x0fff;
    uint64_t ts = time_hi << 48 | time_mid << 32 | time_low;
    /* Signed: an id minted by a clock set before 1970 yields a negative time
     * rather than a huge one. */
    int64_t ticks = (int64_t)ts - (int64_t)UUID_EPOCH_OFFSET;
    /* an id from a client (explain of a made-up id) may lie so far before
     * 1970 that the nanoseconds do not fit: saturate */
    if (ticks < INT64_MIN / 100)
        return INT64_MIN / 100 * 100;
    if (ticks > INT64_MAX / 100) /* or so far after (ffff...: explain's tests) */
        return INT64_MAX / 100 * 100;
    return ticks * 100;
}

bool spoolid_eq(const spoolid *a, const spoolid *b)
{
    return memcmp(a->b, b->b, sizeof(a->b)) == 0;
}

/* The splitmix64 finaliser: every input bit affects every output bit. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

uint64_t spoolid_hash(const spoolid *id)
{
    uint64_t lo, hi;
    memcpy(&lo, &id->b[0], 8);
    memcpy(&hi, &id->b[8], 8);
    /* The time bytes differ between ids made close together, the node bytes
     * almost never; mixing both halves keeps the result well spread. */
    return mix64(lo ^ mix64(hi));
}

void spoolid_to_uuid_str(const spoolid *id, char out[SPOOLID_UUID_LEN + 1])
{
    char hex[SPOOLID_HEX_LEN + 1];
    spoolid_to_hex(id, hex);
    size_t o = 0;
    for (size_t i = 0; i < SPOOLID_HEX_LEN; i++) {
        if (i == 8 || i == 12 || i == 16 || i == 20)
            out[o++] = '-';
        out[o++] = hex[i];
    }
    out[o] = 0;
}
