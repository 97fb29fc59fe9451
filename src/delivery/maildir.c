/* The maildir delivery protocol (KumoMTA's `protocol = { maildir_path =
 * ... }`): writes each message into a maildir (tmp/ then rename into new/,
 * fsync'd), creating the tmp, new and cur folders with dir_mode. The path
 * may use {{ meta.NAME }}, {{ queue }}, {{ domain }} and {{ user }}
 * (the first recipient's parts).
 *
 * A direct protocol of the delivery-protocol interface (queue/dispatch.h):
 * the scheduled queue calls deliver_direct on its own reactor once the
 * message is loaded with its data, without a ready queue or a connection.
 * Failures (a folder or file that cannot be created, written, synced or
 * renamed; a message that could not be loaded) are reported as a
 * transient failure; the queue retries about a minute later. Partial
 * files are removed. */
#include "delivery/maildir.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/diag.h"
#include "core/duration.h"
#include "core/kerr.h"
#include "queue/dispatch.h"

#define QMOD "kumod::queue"

static int mkdir_p(const char *path, int mode)
{
    char buf[4400];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/* Expands {meta_name} style template fields of maildir_path from meta. */
static void expand_path(const char *tmpl, message *m, char *out, size_t outlen)
{
    size_t o = 0;
    for (const char *p = tmpl; *p && o + 1 < outlen;) {
        if (p[0] == '{' && p[1] == '{') {
            const char *end = strstr(p, "}}");
            if (end) {
                char key[128];
                const char *k = p + 2;
                while (*k == ' ')
                    k++;
                size_t kl = (size_t)(end - k);
                while (kl && k[kl - 1] == ' ')
                    kl--;
                snprintf(key, sizeof(key), "%.*s", (int)kl, k);
                const char *v = NULL;
                char *dom = NULL;
                if (strcmp(key, "meta.queue") == 0 || strcmp(key, "queue") == 0)
                    v = json_string_value(json_object_get(m->meta, "queue"));
                else if (strncmp(key, "meta.", 5) == 0)
                    v = json_string_value(json_object_get(m->meta, key + 5));
                else if (strcmp(key, "domain") == 0 || strcmp(key, "user") == 0) {
                    const char *r = m->n_rcpts ? m->rcpts[0] : "";
                    const char *at = strrchr(r, '@');
                    if (key[0] == 'd')
                        v = at ? at + 1 : "";
                    else
                        v = dom = strndup(r, at ? (size_t)(at - r) : strlen(r));
                }
                o += (size_t)snprintf(out + o, outlen - o, "%s", v ? v : "");
                free(dom);
                p = end + 2;
                continue;
            }
        }
        out[o++] = *p++;
    }
    out[o] = 0;
}

static int maildir_write(const queue_config *c, message *m, char *err, size_t errlen,
                         char *name_out, size_t name_len)
{
    char base[4096];
    expand_path(c->maildir_path, m, base, sizeof(base));
    static const char *const subs[] = {"tmp", "new", "cur"};
    char path[4200], tmp[4400], final[4400];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", base, subs[i]);
        int rc = mkdir_p(path, c->dir_mode);
        if (rc) {
            snprintf(err, errlen, "creating %.300s: %s", path, strerror(-rc));
            return KERR_IO;
        }
    }
    static atomic_ulong seq;
    char hostname[128] = "localhost";
    gethostname(hostname, sizeof(hostname) - 1);
    char hex[SPOOLID_HEX_LEN + 1];
    spoolid_to_hex(&m->id, hex);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char uniq[256];
    snprintf(uniq, sizeof(uniq), "%lld.M%ldP%dQ%lu_%s.%s", (long long)ts.tv_sec,
             ts.tv_nsec / 1000, (int)getpid(), atomic_fetch_add(&seq, 1), hex, hostname);
    snprintf(tmp, sizeof(tmp), "%s/tmp/%s", base, uniq);
    snprintf(final, sizeof(final), "%s/new/%s", base, uniq);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, c->file_mode);
    if (fd < 0) {
        snprintf(err, errlen, "creating %.300s: %s", tmp, strerror(errno));
        return KERR_IO;
    }
    size_t off = 0;
    while (off < m->data_len) {
        ssize_t w = write(fd, m->data + off, m->data_len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            snprintf(err, errlen, "writing %.300s: %s", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            return KERR_IO;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        snprintf(err, errlen, "syncing %.300s: %s", tmp, strerror(errno));
        unlink(tmp);
        return KERR_IO;
    }
    if (rename(tmp, final) != 0) {
        snprintf(err, errlen, "renaming %.300s: %s", tmp, strerror(errno));
        unlink(tmp);
        return KERR_IO;
    }
    snprintf(name_out, name_len, "%s", uniq);
    return 0;
}

static disp_outcome maildir_deliver(const disp_direct *j, disp_response *r, char *buf,
                                    size_t buflen)
{
    char why[512];
    char id[300];
    const char *rcpt = j->m && j->m->n_rcpts ? j->m->rcpts[0] : "";
    if (j->failure) {
        snprintf(why, sizeof(why), "%s", j->failure);
    } else if (maildir_write(j->cfg, j->m, why, sizeof(why), id, sizeof(id)) == 0) {
        snprintf(buf, buflen, "%s: wrote to maildir with id=%s", rcpt, id);
        *r = (disp_response){200, 0, 0, 0, buf, NULL};
        return OUTCOME_DELIVERED;
    }
    /* "Failures to write to the maildir will cause the message to be delayed
     * and retried approximately 1 minute later." */
    DWARN(QMOD, "queue=%s maildir delivery failed: %s", j->queue, why);
    snprintf(buf, buflen, "%s: failed to write to maildir: %s", rcpt, why);
    *r = (disp_response){400, 0, 0, 0, buf, NULL};
    return OUTCOME_TRANSIENT;
}

/* For when maildir goes through ready queues: a write is one fsync. */
static int64_t maildir_watchdog_ns(const egress_path_config *cfg)
{
    (void)cfg;
    return 60 * NS_PER_SEC;
}

static const disp_driver maildir_driver = {
    .delivery_protocol = "Maildir",
    .deliver_direct = maildir_deliver,
    .watchdog_ns = maildir_watchdog_ns,
};

void maildir_register(void)
{
    dispatch_register_driver(QPROTO_MAILDIR, &maildir_driver);
}
