/* The maildir delivery protocol (KumoMTA's `protocol = { maildir_path =
 * ... }`): writes the message into a maildir for each recipient (tmp/ then
 * rename into new/, fsync'd), creating the tmp, new and cur folders with
 * dir_mode. The path is a template with the values of protocol.md's
 * "Advanced Maildir Path" ({{ meta.NAME }}, {{ queue }}, {{ domain }},
 * {{ local_part }}, {{ domain_part }}, {{ sender_email }}...), rendered
 * per recipient; an address part that would not be a safe path component
 * ('/' in it, "." or "..") fails that recipient.
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
#include "msg/queue_name.h"
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

/* The normalized local part (address.user): quotes and backslash escapes
 * of a quoted local part removed. malloc'd. */
static char *local_part(const char *addr)
{
    const char *at = strrchr(addr, '@');
    size_t n = at ? (size_t)(at - addr) : strlen(addr);
    char *out = malloc(n + 1);
    if (!out)
        abort();
    size_t o = 0;
    if (n >= 2 && addr[0] == '"' && addr[n - 1] == '"') {
        for (size_t i = 1; i + 1 < n; i++) {
            if (addr[i] == '\\' && i + 2 < n)
                i++;
            out[o++] = addr[i];
        }
    } else {
        memcpy(out, addr, n);
        o = n;
    }
    out[o] = 0;
    return out;
}

/* One template value as text: strings as they are, numbers and booleans
 * printed, null and absent empty (KumoMTA renders with minijinja). */
static void json_text(const json_t *v, char *buf, size_t len)
{
    buf[0] = 0;
    if (json_is_string(v))
        snprintf(buf, len, "%s", json_string_value(v));
    else if (json_is_integer(v))
        snprintf(buf, len, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        snprintf(buf, len, "%g", json_real_value(v));
    else if (json_is_boolean(v))
        snprintf(buf, len, "%s", json_is_true(v) ? "true" : "false");
}

/* Whether a value taken from an envelope address can be a path component:
 * a local part may hold '/', or be "..", which would leave the maildir
 * root. */
static bool path_safe(const char *v)
{
    return !strchr(v, '/') && strcmp(v, ".") != 0 && strcmp(v, "..") != 0;
}

/* Expands the template fields of maildir_path for recipient rcpt: meta.NAME,
 * queue, campaign, tenant, domain, routing_domain (of the queue name),
 * local_part, domain_part, email (of the recipient), sender_local_part,
 * sender_domain_part, sender_email. Returns 0, or KERR_PARSE with err set
 * when an address part would not make a safe path. */
static int expand_path(const char *tmpl, message *m, const char *rcpt, char *out, size_t outlen,
                       char *err, size_t errlen)
{
    char *queue = queue_name_of_message(m);
    queue_name_parts parts = {0};
    if (queue)
        queue_name_parse(queue, &parts);
    const char *sender = m->sender ? m->sender : "";
    int rc = 0;
    size_t o = 0;
    for (const char *p = tmpl; *p && o + 1 < outlen;) {
        const char *end = p[0] == '{' && p[1] == '{' ? strstr(p, "}}") : NULL;
        if (!end) {
            out[o++] = *p++;
            continue;
        }
        char key[128];
        const char *k = p + 2;
        while (*k == ' ')
            k++;
        size_t kl = (size_t)(end - k);
        while (kl && k[kl - 1] == ' ')
            kl--;
        snprintf(key, sizeof(key), "%.*s", (int)kl, k);
        p = end + 2;
        char val[1024] = "";
        char *own = NULL;
        bool from_address = true;
        const char *at;
        if (strncmp(key, "meta.", 5) == 0) {
            json_text(json_object_get(m->meta, key + 5), val, sizeof(val));
            from_address = false;
        } else if (strcmp(key, "queue") == 0 || strcmp(key, "campaign") == 0 ||
                   strcmp(key, "tenant") == 0 || strcmp(key, "domain") == 0 ||
                   strcmp(key, "routing_domain") == 0) {
            const char *v = key[0] == 'q'   ? queue
                            : key[0] == 'c' ? parts.campaign
                            : key[0] == 't' ? parts.tenant
                            : key[0] == 'd' ? parts.domain
                                            : parts.routing_domain;
            snprintf(val, sizeof(val), "%s", v ? v : "");
            from_address = false;
        } else if (strcmp(key, "local_part") == 0) {
            own = local_part(rcpt);
        } else if (strcmp(key, "domain_part") == 0) {
            at = strrchr(rcpt, '@');
            snprintf(val, sizeof(val), "%s", at ? at + 1 : "");
        } else if (strcmp(key, "email") == 0) {
            snprintf(val, sizeof(val), "%s", rcpt);
        } else if (strcmp(key, "sender_local_part") == 0) {
            own = local_part(sender);
        } else if (strcmp(key, "sender_domain_part") == 0) {
            at = strrchr(sender, '@');
            snprintf(val, sizeof(val), "%s", at ? at + 1 : "");
        } else if (strcmp(key, "sender_email") == 0) {
            snprintf(val, sizeof(val), "%s", sender);
        } else {
            from_address = false; /* undefined: empty, as minijinja's default */
        }
        const char *v = own ? own : val;
        if (from_address && !path_safe(v)) {
            snprintf(err, errlen, "maildir_path: {{ %s }} is '%.200s', which is not a safe path",
                     key, v);
            rc = KERR_PARSE;
        }
        o += (size_t)snprintf(out + o, outlen - o, "%s", v);
        if (o >= outlen)
            o = outlen - 1;
        free(own);
    }
    out[o] = 0;
    queue_name_parts_fini(&parts);
    free(queue);
    return rc;
}

static int maildir_write(const queue_config *c, message *m, const char *rcpt, char *err,
                         size_t errlen, char *name_out, size_t name_len)
{
    char base[4096];
    int erc = expand_path(c->maildir_path, m, rcpt, base, sizeof(base), err, errlen);
    if (erc)
        return erc;
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

/* Appends "sep item" to a response buffer (truncated when full). */
static void add_status(char *buf, size_t len, size_t *o, const char *item)
{
    if (*o >= len - 1)
        return;
    *o += (size_t)snprintf(buf + *o, len - *o, "%s%s", *o ? ", " : "", item);
    if (*o >= len)
        *o = len - 1;
}

/* Each recipient gets its own file (the path may depend on it); the
 * statuses of those written make the Delivery response, those of the
 * failures the TransientFailure response, each "rcpt: ..." joined by ", ". */
static void maildir_deliver(const disp_direct *j, disp_direct_result *res)
{
    message *m = j->m;
    size_t ok_o = 0, fail_o = 0;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const char *rcpt = m->rcpts[i];
        char why[600], id[300], item[1200];
        if (j->failure) {
            snprintf(why, sizeof(why), "%s", j->failure);
        } else if (maildir_write(j->cfg, m, rcpt, why, sizeof(why), id, sizeof(id)) == 0) {
            snprintf(item, sizeof(item), "%s: wrote to maildir with id=%s", rcpt, id);
            add_status(res->delivered_buf, sizeof(res->delivered_buf), &ok_o, item);
            res->n_delivered++;
            continue;
        }
        /* "Failures to write to the maildir will cause the message to be
         * delayed and retried approximately 1 minute later." */
        DWARN(QMOD, "queue=%s maildir delivery failed: %s", j->queue, why);
        snprintf(item, sizeof(item), "%s: failed to write to maildir: %s", rcpt, why);
        add_status(res->failed_buf, sizeof(res->failed_buf), &fail_o, item);
        res->rcpt_failed[i] = true;
        res->n_failed++;
    }
    res->delivered = (disp_response){200, 0, 0, 0, res->delivered_buf, NULL};
    res->failed = (disp_response){400, 0, 0, 0, res->failed_buf, NULL};
}

static const disp_driver maildir_driver = {
    .delivery_protocol = "Maildir",
    .deliver_direct = maildir_deliver,
};

void maildir_register(void)
{
    dispatch_register_driver(QPROTO_MAILDIR, &maildir_driver);
}
