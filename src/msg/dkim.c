/* DKIM signing and the DKIM-Signature tag parser (see dkim.h). The header
 * block is walked once with hdr_next into a local array of fields; the body
 * is fed to the streaming canonicalizer straight from the message buffer
 * and digested as it goes. Keys are EVP_PKEYs parsed once; every OpenSSL
 * status is checked and turned into a KERR_* code with its text. Pure
 * functions; dkim_sign_digest runs on any thread. */
#include "msg/dkim.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/sbuf.h"
#include "core/kerr.h"
#include "msg/headers.h"

struct dkim_key {
    atomic_int refs;
    enum dkim_alg alg;
    EVP_PKEY *pkey;
};

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* The first OpenSSL error of the thread, for messages. */
static const char *ossl_reason(void)
{
    unsigned long e = ERR_get_error();
    ERR_clear_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "unknown reason";
}

/* ---- keys ---- */

int dkim_key_parse(enum dkim_alg alg, const void *data, size_t len, dkim_key **out, char *err,
                   size_t errlen)
{
    *out = NULL;
    if (len == 0 || len > INT32_MAX)
        return fail(err, errlen, KERR_INVAL, "key data is empty or too large");
    EVP_PKEY *pkey = NULL;
    if (memmem(data, len, "-----BEGIN", 10)) {
        BIO *bio = BIO_new_mem_buf(data, (int)len);
        if (!bio)
            return fail(err, errlen, KERR_NOMEM, "out of memory");
        pkey = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
        BIO_free(bio);
    } else {
        const unsigned char *p = data;
        pkey = d2i_AutoPrivateKey(NULL, &p, (long)len);
    }
    if (!pkey)
        return fail(err, errlen, KERR_PARSE, "cannot parse the private key: %s", ossl_reason());
    int want = alg == DKIM_ALG_RSA_SHA256 ? EVP_PKEY_RSA : EVP_PKEY_ED25519;
    if (EVP_PKEY_get_base_id(pkey) != want) {
        EVP_PKEY_free(pkey);
        return fail(err, errlen, KERR_INVAL, "the key is not an %s key",
                    alg == DKIM_ALG_RSA_SHA256 ? "RSA" : "Ed25519");
    }
    if (alg == DKIM_ALG_RSA_SHA256 && EVP_PKEY_get_bits(pkey) < 1024) {
        EVP_PKEY_free(pkey);
        return fail(err, errlen, KERR_INVAL, "RSA keys must have at least 1024 bits");
    }
    if ((size_t)EVP_PKEY_get_size(pkey) > DKIM_MAX_SIG) {
        EVP_PKEY_free(pkey);
        return fail(err, errlen, KERR_INVAL, "the key is larger than %d bits", DKIM_MAX_SIG * 8);
    }
    dkim_key *k = calloc(1, sizeof(*k));
    if (!k) {
        EVP_PKEY_free(pkey);
        return fail(err, errlen, KERR_NOMEM, "out of memory");
    }
    atomic_init(&k->refs, 1);
    k->alg = alg;
    k->pkey = pkey;
    *out = k;
    return 0;
}

void dkim_key_ref(dkim_key *k)
{
    atomic_fetch_add_explicit(&k->refs, 1, memory_order_relaxed);
}

void dkim_key_unref(dkim_key *k)
{
    if (!k || atomic_fetch_sub_explicit(&k->refs, 1, memory_order_acq_rel) != 1)
        return;
    EVP_PKEY_free(k->pkey);
    free(k);
}

enum dkim_alg dkim_key_alg(const dkim_key *k)
{
    return k->alg;
}

size_t dkim_key_sig_size(const dkim_key *k)
{
    return (size_t)EVP_PKEY_get_size(k->pkey);
}

int dkim_sign_digest(dkim_key *k, const unsigned char digest[32], unsigned char *sig,
                     size_t *siglen, char *err, size_t errlen)
{
    size_t n = DKIM_MAX_SIG;
    int ok = 0;
    if (k->alg == DKIM_ALG_RSA_SHA256) {
        /* RSASSA-PKCS1-v1_5 over the SHA-256 digest (RFC 6376 §3.3.1) */
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(k->pkey, NULL);
        ok = ctx && EVP_PKEY_sign_init(ctx) == 1 &&
             EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) == 1 &&
             EVP_PKEY_sign(ctx, sig, &n, digest, 32) == 1;
        EVP_PKEY_CTX_free(ctx);
    } else {
        /* RFC 8463: PureEdDSA over the SHA-256 hash of the header data */
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        ok = ctx && EVP_DigestSignInit(ctx, NULL, NULL, NULL, k->pkey) == 1 &&
             EVP_DigestSign(ctx, sig, &n, digest, 32) == 1;
        EVP_MD_CTX_free(ctx);
    }
    if (!ok)
        return fail(err, errlen, KERR_IO, "signing failed: %s", ossl_reason());
    *siglen = n;
    return 0;
}

/* ---- building the header ---- */


#define FOLD_AT 78

/* Appends "; name=value" (or "name=value" first, while *first is set),
 * folding before the tag when it would pass FOLD_AT. */
static void add_tag_f(sbuf *b, size_t *col, bool *first, const char *name, const char *value,
                      size_t vlen)
{
    size_t need = strlen(name) + 1 + vlen + 1;
    if (!*first) {
        sbuf_put(b, ";", 1);
        (*col)++;
        if (*col + 1 + need > FOLD_AT) {
            sbuf_put(b, "\r\n\t", 3);
            *col = 8;
        } else {
            sbuf_put(b, " ", 1);
            (*col)++;
        }
    }
    *first = false;
    sbuf_puts(b, name);
    sbuf_put(b, "=", 1);
    sbuf_put(b, value, vlen);
    *col += strlen(name) + 1 + vlen;
}

/* h=: names joined with ':', folded after a colon when the line is full. */
static void add_h_tag(sbuf *b, size_t *col, const char *const *names, size_t n)
{
    sbuf_put(b, ";", 1);
    (*col)++;
    if (*col + 4 + (n ? strlen(names[0]) : 0) > FOLD_AT) {
        sbuf_put(b, "\r\n\t", 3);
        *col = 8;
    } else {
        sbuf_put(b, " ", 1);
        (*col)++;
    }
    sbuf_put(b, "h=", 2);
    *col += 2;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(names[i]);
        if (i > 0) {
            sbuf_put(b, ":", 1);
            (*col)++;
            if (*col + l + 1 > FOLD_AT) {
                sbuf_put(b, "\r\n\t", 3);
                *col = 8;
            }
        }
        char low[256];
        size_t k = l < sizeof(low) ? l : sizeof(low);
        for (size_t j = 0; j < k; j++)
            low[j] =
                (char)((names[i][j] >= 'A' && names[i][j] <= 'Z') ? names[i][j] + 32 : names[i][j]);
        sbuf_put(b, low, k);
        *col += k;
    }
}

/* dkim-quoted-printable (RFC 6376 §2.11) for i=. */
static void qp_encode(sbuf *b, const char *s)
{
    static const char hexd[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c > 0x20 && c < 0x7f && c != ';' && c != '=') {
            sbuf_put(b, (const char *)&c, 1);
        } else {
            char e[3] = {'=', hexd[c >> 4], hexd[c & 15]};
            sbuf_put(b, e, 3);
        }
    }
}

static bool tag_value_ok(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c >= 0x7f || c == ';')
            return false;
    }
    return true;
}

static bool field_name_ok(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c >= 0x7f || c == ':')
            return false;
    }
    return true;
}

int dkim_sign_params_check(const dkim_sign_params *p, char *err, size_t errlen)
{
    if (!p->domain || !tag_value_ok(p->domain))
        return fail(err, errlen, KERR_INVAL, "domain must be a non-empty domain name");
    if (!p->selector || !tag_value_ok(p->selector))
        return fail(err, errlen, KERR_INVAL, "selector must be a non-empty selector name");
    bool from = false;
    for (size_t i = 0; i < p->n_headers; i++) {
        if (!field_name_ok(p->headers[i]) || strlen(p->headers[i]) > 255)
            return fail(err, errlen, KERR_INVAL, "'%s' is not a header field name", p->headers[i]);
        from |= strcasecmp(p->headers[i], "from") == 0;
    }
    if (!from)
        return fail(err, errlen, KERR_INVAL, "missing From in signed headers");
    if (p->atps && !tag_value_ok(p->atps))
        return fail(err, errlen, KERR_INVAL, "atps must be a domain name");
    if (p->atpsh && !p->atps)
        return fail(err, errlen, KERR_INVAL, "atpsh needs atps");
    if (p->atpsh && strcmp(p->atpsh, "sha1") != 0 && strcmp(p->atpsh, "sha256") != 0 &&
        strcmp(p->atpsh, "none") != 0)
        return fail(err, errlen, KERR_INVAL, "atpsh must be sha1, sha256 or none");
    if (p->auid) {
        /* RFC 6376 §3.5: the AUID's domain is d= or a subdomain of it */
        const char *at = strrchr(p->auid, '@');
        const char *dom = at ? at + 1 : NULL;
        size_t dl = dom ? strlen(dom) : 0, ml = strlen(p->domain);
        bool ok =
            dom && (strcasecmp(dom, p->domain) == 0 || (dl > ml && dom[dl - ml - 1] == '.' &&
                                                        strcasecmp(dom + dl - ml, p->domain) == 0));
        if (!ok)
            return fail(err, errlen, KERR_INVAL,
                        "agent_user_identifier must be an address at the signing domain or "
                        "one of its subdomains");
    }
    if (p->expiration < 0)
        return fail(err, errlen, KERR_INVAL, "expiration must not be negative");
    return 0;
}

/* ---- hashing ---- */

static void md_sink(void *ctx, const char *p, size_t n)
{
    EVP_DigestUpdate(ctx, p, n);
}

typedef struct field {
    const char *name, *raw;
    size_t name_len, raw_len;
    bool used;
} field;

static bool name_is(const field *f, const char *name)
{
    size_t l = strlen(name);
    return f->name_len == l && strncasecmp(f->name, name, l) == 0;
}

static void b64(sbuf *b, const unsigned char *in, size_t n)
{
    size_t need = 4 * ((n + 2) / 3);
    char *tmp = malloc(need + 1);
    if (!tmp) {
        b->oom = true;
        return;
    }
    EVP_EncodeBlock((unsigned char *)tmp, in, (int)n);
    sbuf_put(b, tmp, need);
    free(tmp);
}

/* The three kinds of signature header share this: a DKIM-Signature (arc
 * NULL), an ARC-Message-Signature (arc->cv NULL: i= is the instance, no v=,
 * AUID, l=, r= or ATPS) and an ARC-Seal (arc->cv set: no c=, bh= or h=; the
 * header hash covers the fields arc->fields names, relaxed, RFC 8617
 * §5.1.1). */
static int sign_prepare(const dkim_sign_params *p, const dkim_arc_params *arc, const char *data,
                        size_t len, int64_t now, dkim_sign_job *job, char *err, size_t errlen)
{
    memset(job, 0, sizeof(*job));
    bool seal = arc && arc->cv;
    int rc = 0;
    if (!seal && (rc = dkim_sign_params_check(p, err, errlen)) != 0)
        return rc;
    if (seal && (!p->domain || !tag_value_ok(p->domain) || !p->selector ||
                 !tag_value_ok(p->selector)))
        return fail(err, errlen, KERR_INVAL, "domain and selector must be non-empty names");
    if (arc && (arc->instance < 1 || arc->instance > DKIM_ARC_MAX_INSTANCE))
        return fail(err, errlen, KERR_INVAL, "ARC instance %d is out of range", arc->instance);

    /* the header fields, once, in order */
    size_t nf = 0, capf = 32, pos = 0;
    field *fs = malloc(capf * sizeof(*fs));
    hdr_field hf;
    while (!seal && fs && hdr_next(data, len, &pos, &hf)) {
        if (nf == capf) {
            field *n2 = realloc(fs, 2 * capf * sizeof(*fs));
            if (!n2) {
                free(fs);
                fs = NULL;
                break;
            }
            fs = n2;
            capf *= 2;
        }
        fs[nf++] = (field){hf.name, hf.raw, hf.name_len, hf.raw_len, false};
    }
    if (!fs)
        return fail(err, errlen, KERR_NOMEM, "out of memory");

    /* the effective list: over-signing lists each name once more than the
     * message has it, so that an added field breaks the signature. An AMS
     * never signs ARC-Seal (RFC 8617 §4.1.2): the seal comes after it. */
    size_t nh = 0, total = 0;
    const char **hl = NULL;
    for (size_t i = 0; i < p->n_headers; i++) {
        total++;
        for (size_t j = 0; p->over_sign && j < nf; j++)
            total += name_is(&fs[j], p->headers[i]);
    }
    hl = malloc((total ? total : 1) * sizeof(*hl));
    for (size_t i = 0; hl && !seal && i < p->n_headers; i++) {
        if (arc && strcasecmp(p->headers[i], "ARC-Seal") == 0)
            continue;
        hl[nh++] = p->headers[i];
        for (size_t j = 0; p->over_sign && j < nf; j++)
            if (name_is(&fs[j], p->headers[i]))
                hl[nh++] = p->headers[i];
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    sbuf sb = {0};
    if (!hl || !md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        rc = fail(err, errlen, KERR_NOMEM, "out of memory");
        goto out;
    }

    /* body hash */
    unsigned char bh[32];
    unsigned int bhl = 0;
    dkim_bodyc bc = {0};
    if (!seal) {
        size_t body = hdr_block_len(data, len);
        dkim_bodyc_init(&bc, p->body_canon, UINT64_MAX, md_sink, md);
        dkim_bodyc_update(&bc, data + body, len - body);
        dkim_bodyc_final(&bc);
        if (EVP_DigestFinal_ex(md, bh, &bhl) != 1) {
            rc = fail(err, errlen, KERR_IO, "digest failed: %s", ossl_reason());
            goto out;
        }
    }

    /* the header, without the signature */
    const char *hname =
        !arc ? "DKIM-Signature" : seal ? "ARC-Seal" : "ARC-Message-Signature";
    size_t col = strlen(hname) + 2;
    bool first = true;
    char num[32];
    sbuf_puts(&sb, hname);
    sbuf_puts(&sb, ": ");
    if (arc) {
        snprintf(num, sizeof(num), "%d", arc->instance);
        add_tag_f(&sb, &col, &first, "i", num, strlen(num));
        if (seal)
            add_tag_f(&sb, &col, &first, "cv", arc->cv, strlen(arc->cv));
    } else {
        add_tag_f(&sb, &col, &first, "v", "1", 1);
    }
    const char *a = p->alg == DKIM_ALG_RSA_SHA256 ? "rsa-sha256" : "ed25519-sha256";
    add_tag_f(&sb, &col, &first, "a", a, strlen(a));
    add_tag_f(&sb, &col, &first, "d", p->domain, strlen(p->domain));
    add_tag_f(&sb, &col, &first, "s", p->selector, strlen(p->selector));
    if (!seal) {
        snprintf(num, sizeof(num), "%s/%s", p->header_canon ? "relaxed" : "simple",
                 p->body_canon ? "relaxed" : "simple");
        add_tag_f(&sb, &col, &first, "c", num, strlen(num));
    }
    if (p->auid && !arc) {
        sbuf q = {0};
        qp_encode(&q, p->auid);
        if (q.oom || !q.p) {
            free(q.p);
            rc = fail(err, errlen, KERR_NOMEM, "out of memory");
            goto out;
        }
        add_tag_f(&sb, &col, &first, "i", q.p, q.len);
        free(q.p);
    }
    if (p->body_length && !arc) {
        snprintf(num, sizeof(num), "%llu", (unsigned long long)bc.total);
        add_tag_f(&sb, &col, &first, "l", num, strlen(num));
    }
    if (p->reporting && !arc)
        add_tag_f(&sb, &col, &first, "r", "y", 1);
    if (p->atps && !arc) {
        add_tag_f(&sb, &col, &first, "atps", p->atps, strlen(p->atps));
        const char *h = p->atpsh ? p->atpsh : "sha256";
        add_tag_f(&sb, &col, &first, "atpsh", h, strlen(h));
    }
    snprintf(num, sizeof(num), "%lld", (long long)now);
    add_tag_f(&sb, &col, &first, "t", num, strlen(num));
    if (p->expiration > 0) {
        snprintf(num, sizeof(num), "%lld", (long long)(now + p->expiration));
        add_tag_f(&sb, &col, &first, "x", num, strlen(num));
    }
    if (!seal) {
        sbuf bhs = {0};
        b64(&bhs, bh, bhl);
        if (bhs.oom || !bhs.p) {
            free(bhs.p);
            rc = fail(err, errlen, KERR_NOMEM, "out of memory");
            goto out;
        }
        add_tag_f(&sb, &col, &first, "bh", bhs.p, bhs.len);
        free(bhs.p);
        add_h_tag(&sb, &col, hl, nh);
    }
    add_tag_f(&sb, &col, &first, "b", "", 0);
    if (sb.oom) {
        rc = fail(err, errlen, KERR_NOMEM, "out of memory");
        goto out;
    }

    /* header hash (§3.7): the selected fields, each instance from the
     * bottom up; a name listed more often than present adds nothing. A
     * seal hashes the ARC sets it is given, in order, relaxed. */
    if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        rc = fail(err, errlen, KERR_IO, "digest failed: %s", ossl_reason());
        goto out;
    }
    enum dkim_canon hc = seal ? DKIM_CANON_RELAXED : p->header_canon;
    for (size_t i = 0; seal && i < arc->n_fields; i++)
        dkim_canon_header(hc, arc->fields[i], arc->field_lens[i], true, md_sink, md);
    for (size_t i = 0; i < nh; i++) {
        for (size_t j = nf; j-- > 0;) {
            if (!fs[j].used && name_is(&fs[j], hl[i])) {
                fs[j].used = true;
                dkim_canon_header(hc, fs[j].raw, fs[j].raw_len, true, md_sink, md);
                break;
            }
        }
    }
    dkim_canon_header(hc, sb.p, sb.len, false, md_sink, md);
    unsigned int dl = 0;
    if (EVP_DigestFinal_ex(md, job->digest, &dl) != 1) {
        rc = fail(err, errlen, KERR_IO, "digest failed: %s", ossl_reason());
        goto out;
    }
    job->hdr = sb.p;
    job->hdr_len = sb.len;
    job->col = col;
    sb.p = NULL;
    rc = 0;
out:
    free(sb.p);
    EVP_MD_CTX_free(md);
    free(hl);
    free(fs);
    return rc;
}

int dkim_sign_prepare(const dkim_sign_params *p, const char *data, size_t len, int64_t now,
                      dkim_sign_job *job, char *err, size_t errlen)
{
    return sign_prepare(p, NULL, data, len, now, job, err, errlen);
}

int dkim_arc_prepare(const dkim_sign_params *p, const dkim_arc_params *arc, const char *data,
                     size_t len, int64_t now, dkim_sign_job *job, char *err, size_t errlen)
{
    return sign_prepare(p, arc, data, len, now, job, err, errlen);
}

char *dkim_sign_finish(const dkim_sign_job *job, const unsigned char *sig, size_t siglen,
                       size_t *out_len)
{
    sbuf s64 = {0};
    b64(&s64, sig, siglen);
    if (s64.oom || !s64.p) {
        free(s64.p);
        return NULL;
    }
    sbuf out = {0};
    sbuf_put(&out, job->hdr, job->hdr_len);
    /* FWS may appear anywhere in b= (§3.5): fill lines to FOLD_AT */
    size_t col = job->col, i = 0;
    while (i < s64.len) {
        size_t room = col < FOLD_AT ? FOLD_AT - col : 0;
        if (room < 8) {
            sbuf_put(&out, "\r\n\t", 3);
            col = 8;
            continue;
        }
        size_t k = s64.len - i < room ? s64.len - i : room;
        sbuf_put(&out, s64.p + i, k);
        i += k;
        col += k;
    }
    sbuf_put(&out, "\r\n", 2);
    free(s64.p);
    if (out.oom) {
        free(out.p);
        return NULL;
    }
    *out_len = out.len;
    return out.p;
}

void dkim_sign_job_fini(dkim_sign_job *job)
{
    free(job->hdr);
    job->hdr = NULL;
}

char *dkim_sign(const dkim_sign_params *p, dkim_key *k, const char *data, size_t len, int64_t now,
                size_t *out_len, char *err, size_t errlen)
{
    if (p->alg != k->alg) {
        fail(err, errlen, KERR_INVAL, "the key does not match the signing algorithm");
        return NULL;
    }
    dkim_sign_job job;
    if (dkim_sign_prepare(p, data, len, now, &job, err, errlen) != 0)
        return NULL;
    unsigned char sig[DKIM_MAX_SIG];
    size_t siglen = 0;
    char *h = NULL;
    if (dkim_sign_digest(k, job.digest, sig, &siglen, err, errlen) == 0) {
        h = dkim_sign_finish(&job, sig, siglen, out_len);
        if (!h)
            fail(err, errlen, KERR_NOMEM, "out of memory");
    }
    dkim_sign_job_fini(&job);
    return h;
}

/* ---- tag lists ---- */

static bool is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* Skips FWS (WSP, and CRLF or LF followed by WSP). */
static size_t skip_fws(const char *s, size_t n, size_t i)
{
    for (;;) {
        if (i < n && is_wsp(s[i])) {
            i++;
        } else if (i + 2 < n && s[i] == '\r' && s[i + 1] == '\n' && is_wsp(s[i + 2])) {
            i += 3;
        } else if (i + 1 < n && s[i] == '\n' && is_wsp(s[i + 1])) {
            i += 2;
        } else {
            return i;
        }
    }
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

int dkim_tags_parse(const char *s, size_t n, dkim_tag *tags, size_t max, size_t *count)
{
    size_t i = 0, nt = 0;
    *count = 0;
    for (;;) {
        i = skip_fws(s, n, i);
        if (i == n)
            break; /* empty list, or a trailing ';' */
        if (!is_alpha(s[i]))
            return KERR_PARSE;
        size_t ns = i;
        while (i < n && (is_alpha(s[i]) || is_digit(s[i]) || s[i] == '_'))
            i++;
        size_t nl = i - ns;
        i = skip_fws(s, n, i);
        if (i == n || s[i] != '=')
            return KERR_PARSE;
        i = skip_fws(s, n, i + 1);
        size_t vs = i, ve = i;
        /* tval *( 1*(WSP / FWS) tval ): value bytes are %x21-3A / %x3C-7E */
        while (i < n && s[i] != ';') {
            unsigned char c = (unsigned char)s[i];
            if (c > 0x20 && c < 0x7f) {
                i++;
                ve = i;
                continue;
            }
            size_t j = skip_fws(s, n, i);
            if (j == i)
                return KERR_PARSE; /* a control byte, 8-bit byte or bare CR/LF */
            i = j;
        }
        for (size_t k = 0; k < nt; k++)
            if (tags[k].name_len == nl && memcmp(tags[k].name, s + ns, nl) == 0)
                return KERR_PARSE; /* §3.2: duplicate tags are an error */
        if (nt == max)
            return KERR_TOOBIG;
        tags[nt++] = (dkim_tag){s + ns, s + vs, nl, ve - vs};
        if (i == n)
            break;
        i++; /* ';' */
    }
    *count = nt;
    return 0;
}

const dkim_tag *dkim_tag_find(const dkim_tag *tags, size_t count, const char *name)
{
    size_t l = strlen(name);
    for (size_t i = 0; i < count; i++)
        if (tags[i].name_len == l && memcmp(tags[i].name, name, l) == 0)
            return &tags[i];
    return NULL;
}

static bool tag_is(const dkim_tag *t, const char *v)
{
    size_t l = strlen(v);
    return t->value_len == l && strncasecmp(t->value, v, l) == 0;
}

/* A decimal of at most max_digits digits (RFC 6376 caps l=, t=, x= at 76
 * digits; anything past 2^63 is refused here rather than wrapped). */
static int parse_num(const dkim_tag *t, uint64_t *out)
{
    if (t->value_len == 0 || t->value_len > 18)
        return KERR_RANGE;
    uint64_t v = 0;
    for (size_t i = 0; i < t->value_len; i++) {
        if (!is_digit(t->value[i]))
            return KERR_PARSE;
        v = v * 10 + (uint64_t)(t->value[i] - '0');
    }
    *out = v;
    return 0;
}

int dkim_sig_parse(const char *value, size_t len, dkim_sig *out, char *err, size_t errlen)
{
    return dkim_sig_parse_kind(DKIM_SIG_DKIM, value, len, out, err, errlen);
}

int dkim_sig_parse_kind(enum dkim_sig_kind kind, const char *value, size_t len, dkim_sig *out,
                        char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    out->kind = kind;
    out->t = out->x = -1;
    int rc = dkim_tags_parse(value, len, out->tags, DKIM_MAX_TAGS, &out->n_tags);
    if (rc)
        return fail(err, errlen, KERR_PARSE, "signature tag list is malformed");
    const dkim_tag *T = out->tags;
    size_t N = out->n_tags;
    static const char *const req_dkim[] = {"v", "a", "b", "bh", "d", "h", "s", NULL};
    static const char *const req_ams[] = {"i", "a", "b", "bh", "d", "h", "s", NULL};
    static const char *const req_as[] = {"i", "cv", "a", "b", "d", "s", NULL};
    const char *const *required =
        kind == DKIM_SIG_DKIM ? req_dkim : kind == DKIM_SIG_AMS ? req_ams : req_as;
    for (size_t i = 0; required[i]; i++)
        if (!dkim_tag_find(T, N, required[i]))
            return fail(err, errlen, KERR_PARSE, "signature missing required tag %s=", required[i]);
    if (kind != DKIM_SIG_DKIM) {
        /* RFC 8617 §4.2.1: i= is 1..50, plain decimal */
        const dkim_tag *it = dkim_tag_find(T, N, "i");
        uint64_t v = 0;
        if (parse_num(it, &v) != 0 || v < 1 || v > DKIM_ARC_MAX_INSTANCE)
            return fail(err, errlen, KERR_RANGE, "ARC instance tag is invalid");
        out->instance = (int)v;
    }
    if (kind == DKIM_SIG_DKIM && !tag_is(dkim_tag_find(T, N, "v"), "1"))
        return fail(err, errlen, KERR_INVAL, "incompatible signature version");
    if (kind == DKIM_SIG_AS) {
        out->cv = dkim_tag_find(T, N, "cv");
        if (!tag_is(out->cv, "none") && !tag_is(out->cv, "pass") && !tag_is(out->cv, "fail"))
            return fail(err, errlen, KERR_INVAL, "invalid chain validation status");
        if (dkim_tag_find(T, N, "h"))
            return fail(err, errlen, KERR_INVAL, "h= is not allowed in an ARC-Seal");
    }
    const dkim_tag *a = dkim_tag_find(T, N, "a");
    if (tag_is(a, "rsa-sha256"))
        out->alg = DKIM_ALG_RSA_SHA256;
    else if (tag_is(a, "ed25519-sha256"))
        out->alg = DKIM_ALG_ED25519_SHA256;
    else
        return fail(err, errlen, KERR_INVAL, "unsupported signature algorithm %.*s",
                    (int)(a->value_len > 40 ? 40 : a->value_len), a->value);
    const dkim_tag *c = kind == DKIM_SIG_AS ? NULL : dkim_tag_find(T, N, "c");
    out->header_canon = out->body_canon =
        kind == DKIM_SIG_AS ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
    if (c) {
        const char *slash = memchr(c->value, '/', c->value_len);
        dkim_tag hc = *c, bc = {0};
        if (slash) {
            hc.value_len = (size_t)(slash - c->value);
            bc.value = slash + 1;
            bc.value_len = c->value_len - hc.value_len - 1;
        }
        if (tag_is(&hc, "relaxed"))
            out->header_canon = DKIM_CANON_RELAXED;
        else if (!tag_is(&hc, "simple"))
            return fail(err, errlen, KERR_INVAL, "unsupported header canonicalization");
        if (slash) {
            if (tag_is(&bc, "relaxed"))
                out->body_canon = DKIM_CANON_RELAXED;
            else if (!tag_is(&bc, "simple"))
                return fail(err, errlen, KERR_INVAL, "unsupported body canonicalization");
        }
    }
    const dkim_tag *q = dkim_tag_find(T, N, "q");
    if (q && !tag_is(q, "dns/txt"))
        return fail(err, errlen, KERR_INVAL, "unsupported query method");
    out->d = dkim_tag_find(T, N, "d");
    out->s = dkim_tag_find(T, N, "s");
    out->h = dkim_tag_find(T, N, "h");
    out->b = dkim_tag_find(T, N, "b");
    out->bh = dkim_tag_find(T, N, "bh");
    out->i = kind == DKIM_SIG_DKIM ? dkim_tag_find(T, N, "i") : NULL;
    if (!out->d->value_len || !out->s->value_len)
        return fail(err, errlen, KERR_PARSE, "empty d= or s= tag");
    /* h= must sign From (§5.4; RFC 8617 keeps the rule for the AMS) */
    bool from = kind == DKIM_SIG_AS;
    for (size_t i = 0, st = 0; out->h && i <= out->h->value_len; i++) {
        if (i == out->h->value_len || out->h->value[i] == ':') {
            size_t a0 = st, a1 = i;
            while (a0 < a1 && !(out->h->value[a0] > 0x20))
                a0++;
            while (a1 > a0 && !(out->h->value[a1 - 1] > 0x20))
                a1--;
            from |= a1 - a0 == 4 && strncasecmp(out->h->value + a0, "from", 4) == 0;
            st = i + 1;
        }
    }
    if (!from)
        return fail(err, errlen, KERR_INVAL, "From field not signed");
    if (out->i) {
        /* the AUID's domain must be d= or a subdomain of it (§6.1.1) */
        const char *at = memchr(out->i->value, '@', out->i->value_len);
        if (!at)
            return fail(err, errlen, KERR_INVAL, "i= is not an identity");
        size_t dl = out->i->value_len - (size_t)(at + 1 - out->i->value);
        const char *dom = at + 1;
        size_t ml = out->d->value_len;
        bool ok = (dl == ml && strncasecmp(dom, out->d->value, ml) == 0) ||
                  (dl > ml && dom[dl - ml - 1] == '.' &&
                   strncasecmp(dom + dl - ml, out->d->value, ml) == 0);
        if (!ok)
            return fail(err, errlen, KERR_INVAL, "domain mismatch between i= and d=");
    }
    const dkim_tag *l = dkim_tag_find(T, N, "l");
    if (l) {
        if (parse_num(l, &out->l) != 0)
            return fail(err, errlen, KERR_INVAL, "l= is not a usable body length");
        out->has_l = true;
    }
    const dkim_tag *t = dkim_tag_find(T, N, "t"), *x = dkim_tag_find(T, N, "x");
    uint64_t v;
    if (t) {
        if (parse_num(t, &v) != 0)
            return fail(err, errlen, KERR_INVAL, "t= is not a timestamp");
        out->t = (int64_t)v;
    }
    if (x) {
        if (parse_num(x, &v) != 0)
            return fail(err, errlen, KERR_INVAL, "x= is not a timestamp");
        out->x = (int64_t)v;
        if (out->t >= 0 && out->x < out->t)
            return fail(err, errlen, KERR_INVAL, "x= is before t=");
    }
    return 0;
}
