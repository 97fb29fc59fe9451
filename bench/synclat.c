/* synclat: the latency distribution of one durable write on this disk.
 *
 * What: writes COUNT records of SIZE bytes (argv) into a pre-written file
 * in DIR, the way kumod's spool journal makes a group commit durable
 * (O_DIRECT + pwritev2(RWF_DSYNC) over blocks written beforehand, falling
 * back to a buffered pwrite + fdatasync where O_DIRECT is refused), one
 * after the other, and prints p50/p90/p99/p99.9/max of each write's wall
 * time (CLOCK_MONOTONIC) as JSON. With --interval-us the writes are
 * spaced (a lightly loaded MTA syncs now and then, not back to back).
 * This is the floor under kumod's transaction latency (the 250 after the
 * dot waits for one such write).
 *
 * Thread: one. Built with `cc -O2 -o synclat synclat.c -lm`.
 * Failure: exits 1 with a message when the file cannot be made. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct(const int64_t *v, size_t n, double p)
{
    size_t k = (size_t)ceil(p / 100.0 * (double)n);
    k = k < 1 ? 1 : (k > n ? n : k);
    return (double)v[k - 1] / 1e6;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: synclat DIR COUNT SIZE [--interval-us US]\n");
        return 2;
    }
    const char *dir = argv[1];
    size_t count = (size_t)atol(argv[2]);
    size_t size = ((size_t)atol(argv[3]) + 511) / 512 * 512;
    long interval_us = (argc >= 6 && strcmp(argv[4], "--interval-us") == 0) ? atol(argv[5]) : 0;
    if (!count || !size)
        return 2;
    char path[4096];
    snprintf(path, sizeof(path), "%s/synclat.%d", dir, (int)getpid());
    size_t fsize = 16u << 20;
    if (fsize < size * 2)
        fsize = size * 2;
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    char *zero = calloc(1, 1 << 20);
    for (size_t off = 0; off < fsize; off += 1 << 20)
        if (pwrite(fd, zero, 1 << 20, (off_t)off) < 0) {
            perror("pwrite");
            return 1;
        }
    fsync(fd);
    close(fd);
    int direct = 1;
    fd = open(path, O_RDWR | O_DIRECT);
    if (fd < 0) {
        direct = 0;
        fd = open(path, O_RDWR);
    }
    void *buf;
    if (posix_memalign(&buf, 4096, size))
        return 1;
    memset(buf, 'j', size);
    int64_t *lat = malloc(count * sizeof(*lat));
    off_t off = 0;
    for (size_t i = 0; i < count; i++) {
        if ((size_t)off + size > fsize)
            off = 0;
        struct iovec iov = {buf, size};
        int64_t t = now_ns();
        ssize_t w;
        if (direct) {
            w = pwritev2(fd, &iov, 1, off, RWF_DSYNC);
            if (w < 0 && (errno == EINVAL || errno == EOPNOTSUPP)) {
                close(fd);
                fd = open(path, O_RDWR);
                direct = 0;
            }
        }
        if (!direct) {
            w = pwrite(fd, buf, size, off);
            if (w >= 0)
                fdatasync(fd);
        }
        if (w < 0) {
            perror("write");
            return 1;
        }
        lat[i] = now_ns() - t;
        off += (off_t)size;
        if (interval_us)
            usleep((useconds_t)interval_us);
    }
    close(fd);
    unlink(path);
    qsort(lat, count, sizeof(*lat), cmp64);
    double sum = 0;
    for (size_t i = 0; i < count; i++)
        sum += (double)lat[i];
    printf("{\"dir\": \"%s\", \"mode\": \"%s\", \"count\": %zu, \"size\": %zu, "
           "\"interval_us\": %ld, \"p50_ms\": %.3f, \"p90_ms\": %.3f, \"p99_ms\": %.3f, "
           "\"p99_9_ms\": %.3f, \"max_ms\": %.3f, \"mean_ms\": %.3f}\n",
           dir, direct ? "O_DIRECT+RWF_DSYNC" : "pwrite+fdatasync", count, size, interval_us,
           pct(lat, count, 50), pct(lat, count, 90), pct(lat, count, 99), pct(lat, count, 99.9),
           (double)lat[count - 1] / 1e6, sum / (double)count / 1e6);
    return 0;
}
