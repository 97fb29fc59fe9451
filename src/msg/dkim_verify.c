/* DKIM verification (see dkim_verify.h): key records parsed with the tag
 * parser of dkim.c, the body hash computed by the streaming canonicalizer
 * straight over the message buffer (l= caps what is hashed), the header
 * hash over the fields h= names, chosen from the bottom up, and the
 * signature field with its b= value emptied; the signature checked with
 * OpenSSL (RSASSA-PKCS1-v1_5 or PureEdDSA over the SHA-256 digest). Pure;
 * any thread; every failure becomes a result with a reason, never a crash:
 * lengths are bounded by the tag parser and by the 8 KiB cap on decoded
 * keys and signatures. */
#include "msg/dkim_verify.h"

#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/kerr.h"

struct dkim_pubkey {
    enum dkim_alg alg;
    EVP_PKEY *pkey;
    bool strict; /* t=s: i= must be exactly d= */
};

static const char *const result_names[] = {"pass",      "fail",      "neutral",
                                           "temperror", "permerror", "none"};

const char *dkim_result_name(int r)
{
    return r >= 0 && r <= DKIM_NONE ? result_names[r] : "permerror";
}

static int res(char *err, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int res(char *err, size_t errlen, int r, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return r;
}

static bool tag_eq(const dkim_tag *t, const char *v)
{
    size_t l = strlen(v);
    return t->value_len == l && strncasecmp(t->value, v, l) == 0;
}

/* Whether the colon-separated list in t has the item v (case-insensitive,
 * whitespace around items ignored). */
static bool list_has(const dkim_tag *t, const char *v)
{
    size_t vl = strlen(v);
    for (size_t i = 0, st = 0; i <= t->value_len; i++) {
        if (i == t->value_len || t->value[i] == ':') {
            size_t a = st, b = i;
            while (a < b && (unsigned char)t->value[a] <= 0x20)
                a++;
            while (b > a && (unsigned char)t->value[b - 1] <= 0x20)
                b--;
            if (b - a == vl && strncasecmp(t->value + a, v, vl) == 0)
                return true;
            st = i + 1;
        }
    }
    return false;
}

#define B64_MAX 8192

/* Base64 with whitespace anywhere (FWS in tag values). Returns the decoded
 * length or -1 (bad character, bad padding, or longer than max). */
static long b64_decode(const char *s, size_t n, unsigned char *out, size_t max)
{
    unsigned acc = 0;
    int bits = 0, pad = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int v;
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
            continue;
        if (c == '=') {
            pad++;
            continue;
        }
        if (pad)
            return -1;
        if (c >= 'A' && c <= 'Z')
            v = c - 'A';
        else if (c >= 'a' && c <= 'z')
            v = c - 'a' + 26;
        else if (c >= '0' && c <= '9')
            v = c - '0' + 52;
        else if (c == '+')
            v = 62;
        else if (c == '/')
            v = 63;
        else
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == max)
                return -1;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    if (pad > 2 || bits >= 6)
        return -1;
    return (long)o;
}

int dkim_pubkey_parse(const char *txt, size_t len, dkim_pubkey **out, char *err, size_t errlen)
{
    *out = NULL;
    dkim_tag tags[DKIM_MAX_TAGS];
    size_t n = 0;
    if (dkim_tags_parse(txt, len, tags, DKIM_MAX_TAGS, &n) != 0)
        return res(err, errlen, DKIM_PERMERROR, "key syntax error");
    const dkim_tag *v = dkim_tag_find(tags, n, "v");
    if (v && !tag_eq(v, "DKIM1"))
        return res(err, errlen, DKIM_PERMERROR, "key incompatible version");
    const dkim_tag *h = dkim_tag_find(tags, n, "h");
    if (h && !list_has(h, "sha256"))
        return res(err, errlen, DKIM_PERMERROR, "inappropriate hash algorithm");
    const dkim_tag *s = dkim_tag_find(tags, n, "s");
    if (s && !list_has(s, "*") && !list_has(s, "email"))
        return res(err, errlen, DKIM_PERMERROR, "inappropriate service type");
    const dkim_tag *k = dkim_tag_find(tags, n, "k");
    enum dkim_alg alg;
    if (!k || tag_eq(k, "rsa"))
        alg = DKIM_ALG_RSA_SHA256;
    else if (tag_eq(k, "ed25519"))
        alg = DKIM_ALG_ED25519_SHA256;
    else
        return res(err, errlen, DKIM_PERMERROR, "inappropriate key algorithm");
    const dkim_tag *p = dkim_tag_find(tags, n, "p");
    if (!p)
        return res(err, errlen, DKIM_PERMERROR, "no key for signature");
    size_t nonws = 0;
    for (size_t i = 0; i < p->value_len; i++)
        nonws += (unsigned char)p->value[i] > 0x20;
    if (nonws == 0)
        return res(err, errlen, DKIM_PERMERROR, "key revoked");
    unsigned char *der = malloc(B64_MAX);
    if (!der)
        return res(err, errlen, DKIM_TEMPERROR, "out of memory");
    long dl = b64_decode(p->value, p->value_len, der, B64_MAX);
    EVP_PKEY *pk = NULL;
    if (dl > 0) {
        const unsigned char *q = der;
        if (alg == DKIM_ALG_ED25519_SHA256) {
            if (dl == 32)
                pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, der, 32);
        } else {
            /* SubjectPublicKeyInfo as RFC 6376 says, or a bare PKCS#1 key */
            pk = d2i_PUBKEY(NULL, &q, dl);
            if (!pk) {
                q = der;
                pk = d2i_PublicKey(EVP_PKEY_RSA, NULL, &q, dl);
            }
            if (pk && EVP_PKEY_get_base_id(pk) != EVP_PKEY_RSA) {
                EVP_PKEY_free(pk);
                free(der);
                return res(err, errlen, DKIM_PERMERROR, "inappropriate key algorithm");
            }
        }
    }
    free(der);
    if (!pk)
        return res(err, errlen, DKIM_PERMERROR, "key syntax error: p= is not a %s public key",
                   alg == DKIM_ALG_RSA_SHA256 ? "RSA" : "Ed25519");
    if (alg == DKIM_ALG_RSA_SHA256 && EVP_PKEY_get_bits(pk) < 1024) {
        int bits = EVP_PKEY_get_bits(pk);
        EVP_PKEY_free(pk);
        return res(err, errlen, DKIM_PERMERROR, "RSA key of %d bits is too small", bits);
    }
    dkim_pubkey *key = calloc(1, sizeof(*key));
    if (!key) {
        EVP_PKEY_free(pk);
        return res(err, errlen, DKIM_TEMPERROR, "out of memory");
    }
    key->alg = alg;
    key->pkey = pk;
    const dkim_tag *t = dkim_tag_find(tags, n, "t");
    key->strict = t && list_has(t, "s");
    *out = key;
    return 0;
}

void dkim_pubkey_free(dkim_pubkey *k)
{
    if (!k)
        return;
    EVP_PKEY_free(k->pkey);
    free(k);
}

enum dkim_alg dkim_pubkey_alg(const dkim_pubkey *k)
{
    return k->alg;
}

static bool dns_label_chars(const char *s, size_t n)
{
    if (n == 0 || n > 253)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

bool dkim_key_name(const dkim_sig *sig, char *out, size_t outlen)
{
    if (!dns_label_chars(sig->s->value, sig->s->value_len) ||
        !dns_label_chars(sig->d->value, sig->d->value_len))
        return false;
    int n = snprintf(out, outlen, "%.*s._domainkey.%.*s", (int)sig->s->value_len, sig->s->value,
                     (int)sig->d->value_len, sig->d->value);
    return n > 0 && (size_t)n < outlen && n <= 253;
}

int dkim_sig_parse_field(const hdr_field *f, dkim_sig *sig, char *err, size_t errlen)
{
    return dkim_sig_parse_field_kind(DKIM_SIG_DKIM, f, sig, err, errlen);
}

int dkim_sig_parse_field_kind(enum dkim_sig_kind kind, const hdr_field *f, dkim_sig *sig,
                              char *err, size_t errlen)
{
    const char *colon = memchr(f->raw, ':', f->raw_len);
    if (!colon) {
        memset(sig, 0, sizeof(*sig));
        return res(err, errlen, KERR_PARSE, "signature syntax error: no colon");
    }
    size_t off = (size_t)(colon + 1 - f->raw);
    return dkim_sig_parse_kind(kind, colon + 1, f->raw_len - off, sig, err, errlen);
}

static void md_sink(void *ctx, const char *p, size_t n)
{
    EVP_DigestUpdate((EVP_MD_CTX *)ctx, p, n);
}

static bool field_is(const hdr_field *f, const char *name, size_t nl)
{
    return f->name_len == nl && strncasecmp(f->name, name, nl) == 0;
}

/* Hashes the signature field sf with its b= value and the whitespace
 * around it removed (from after '=' to the next ';' or the end), without
 * its line end, to close a header hash (§3.7). */
static int hash_sig_field(EVP_MD_CTX *md, const hdr_field *sf, const dkim_sig *sig)
{
    const char *b0 = sig->b->value, *b1 = sig->b->value + sig->b->value_len;
    const char *end = sf->raw + sf->raw_len;
    while (b0 > sf->raw && b0[-1] != '=')
        b0--;
    while (b1 < end && *b1 != ';')
        b1++;
    size_t pre = (size_t)(b0 - sf->raw), post = (size_t)(end - b1);
    char *stripped = malloc(pre + post + 1);
    if (!stripped)
        return -1;
    memcpy(stripped, sf->raw, pre);
    memcpy(stripped + pre, b1, post);
    dkim_canon_header(sig->header_canon, stripped, pre + post, false, md_sink, md);
    free(stripped);
    return 0;
}

/* The header hash (§3.7) into digest. */
static int header_hash(const hdr_index *ix, const hdr_field *sf, const dkim_sig *sig,
                       unsigned char digest[32])
{
    bool *used = calloc(ix->n ? ix->n : 1, sizeof(bool));
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rc = -1;
    if (!used || !md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        goto out;
    const char *h = sig->h->value;
    size_t hl = sig->h->value_len;
    for (size_t i = 0, st = 0; i <= hl; i++) {
        if (i < hl && h[i] != ':')
            continue;
        size_t a = st, b = i;
        st = i + 1;
        while (a < b && (unsigned char)h[a] <= 0x20)
            a++;
        while (b > a && (unsigned char)h[b - 1] <= 0x20)
            b--;
        for (size_t j = ix->n; j-- > 0;) {
            const hdr_field *f = &ix->fields[j];
            if (!used[j] && f != sf && field_is(f, h + a, b - a)) {
                used[j] = true;
                dkim_canon_header(sig->header_canon, f->raw, f->raw_len, true, md_sink, md);
                break;
            }
        }
    }
    unsigned int dl = 0;
    if (hash_sig_field(md, sf, sig) == 0 && EVP_DigestFinal_ex(md, digest, &dl) == 1 && dl == 32)
        rc = 0;
out:
    EVP_MD_CTX_free(md);
    free(used);
    return rc;
}

static bool check_sig(const dkim_pubkey *k, const unsigned char digest[32],
                      const unsigned char *sig, size_t siglen)
{
    int ok = 0;
    if (k->alg == DKIM_ALG_RSA_SHA256) {
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(k->pkey, NULL);
        ok = ctx && EVP_PKEY_verify_init(ctx) == 1 &&
             EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) == 1 &&
             EVP_PKEY_verify(ctx, sig, siglen, digest, 32) == 1;
        EVP_PKEY_CTX_free(ctx);
    } else {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        ok = ctx && siglen == 64 && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, k->pkey) == 1 &&
             EVP_DigestVerify(ctx, sig, siglen, digest, 32) == 1;
        EVP_MD_CTX_free(ctx);
    }
    return ok == 1;
}

/* The usable keys among the records (at most 8) for sig into keys; 0 with
 * *nk > 0, or the result why there is none, with the reason. */
static int select_keys(const dkim_sig *sig, const char *const *recs, const size_t *lens, size_t n,
                       dkim_pubkey **keys, size_t *nk, char *reason, size_t rlen)
{
    *nk = 0;
    int kres = DKIM_PERMERROR;
    char kwhy[160] = "no key for signature";
    for (size_t i = 0; i < n && *nk < 8; i++) {
        dkim_pubkey *k = NULL;
        int r = dkim_pubkey_parse(recs[i], lens[i], &k, kwhy, sizeof(kwhy));
        if (r != 0) {
            kres = r;
            continue;
        }
        if (k->alg != sig->alg) {
            dkim_pubkey_free(k);
            kres = DKIM_PERMERROR;
            snprintf(kwhy, sizeof(kwhy), "inappropriate key algorithm");
            continue;
        }
        if (k->strict && sig->i) {
            const char *at = memchr(sig->i->value, '@', sig->i->value_len);
            size_t dl = at ? sig->i->value_len - (size_t)(at + 1 - sig->i->value) : 0;
            if (!at || dl != sig->d->value_len || strncasecmp(at + 1, sig->d->value, dl) != 0) {
                dkim_pubkey_free(k);
                kres = DKIM_PERMERROR;
                snprintf(kwhy, sizeof(kwhy), "domain mismatch: the key is strict (t=s)");
                continue;
            }
        }
        keys[(*nk)++] = k;
    }
    if (*nk == 0)
        return res(reason, rlen, kres, "%s", kwhy);
    return 0;
}

/* Checks the decoded b= of sig against digest with each key. */
static int check_digest(const dkim_sig *sig, dkim_pubkey *const *keys, size_t nk,
                        const unsigned char digest[32], char *reason, size_t rlen)
{
    unsigned char *b = malloc(B64_MAX);
    if (!b)
        return res(reason, rlen, DKIM_TEMPERROR, "out of memory");
    long bl = b64_decode(sig->b->value, sig->b->value_len, b, B64_MAX);
    int rc;
    if (bl <= 0) {
        rc = res(reason, rlen, DKIM_PERMERROR, "signature syntax error: failed to decode b=");
    } else {
        rc = res(reason, rlen, DKIM_FAIL, "signature did not verify");
        for (size_t i = 0; i < nk; i++)
            if (check_sig(keys[i], digest, b, (size_t)bl)) {
                rc = res(reason, rlen, DKIM_PASS, "%s", "");
                break;
            }
    }
    free(b);
    return rc;
}

int dkim_verify_field(const char *data, size_t len, const hdr_index *ix, const hdr_field *f,
                      const dkim_sig *sig, const char *const *recs, const size_t *lens, size_t n,
                      int64_t now, char *reason, size_t rlen)
{
    if (reason && rlen)
        reason[0] = 0;
    if (sig->x >= 0 && now > sig->x)
        return res(reason, rlen, DKIM_PERMERROR, "signature expired");
    if (!sig->h || !sig->bh)
        return res(reason, rlen, DKIM_PERMERROR, "signature missing required tag h= or bh=");

    /* keys first: no hashing for a message whose key is unusable */
    dkim_pubkey *keys[8];
    size_t nk = 0;
    int rc = select_keys(sig, recs, lens, n, keys, &nk, reason, rlen);
    if (rc != 0)
        return rc;

    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        rc = res(reason, rlen, DKIM_TEMPERROR, "out of memory");
        goto out;
    }
    unsigned char bh[64];
    long bhl = b64_decode(sig->bh->value, sig->bh->value_len, bh, sizeof(bh));
    if (bhl != 32) {
        rc = res(reason, rlen, DKIM_PERMERROR, "signature syntax error: bh= is not a SHA-256 hash");
        goto out;
    }
    {
        /* a b= that does not decode is a permerror whatever the body */
        unsigned char *b = malloc(B64_MAX);
        long bl = b ? b64_decode(sig->b->value, sig->b->value_len, b, B64_MAX) : 0;
        free(b);
        if (bl <= 0) {
            rc = res(reason, rlen, DKIM_PERMERROR, "signature syntax error: failed to decode b=");
            goto out;
        }
    }

    /* body hash, at most l= canonical bytes */
    size_t body = hdr_block_len(data, len);
    dkim_bodyc bc;
    dkim_bodyc_init(&bc, sig->body_canon, sig->has_l ? sig->l : UINT64_MAX, md_sink, md);
    dkim_bodyc_update(&bc, data + body, len - body);
    dkim_bodyc_final(&bc);
    if (sig->has_l && sig->l > bc.total) {
        rc = res(reason, rlen, DKIM_PERMERROR,
                 "body length tag l=%llu exceeds the body's %llu canonical bytes",
                 (unsigned long long)sig->l, (unsigned long long)bc.total);
        goto out;
    }
    unsigned char got[32];
    unsigned int gl = 0;
    if (EVP_DigestFinal_ex(md, got, &gl) != 1 || gl != 32) {
        rc = res(reason, rlen, DKIM_TEMPERROR, "digest failed");
        goto out;
    }
    if (memcmp(got, bh, 32) != 0) {
        rc = res(reason, rlen, DKIM_FAIL, "body hash did not verify");
        goto out;
    }
    unsigned char digest[32];
    if (header_hash(ix, f, sig, digest) != 0) {
        rc = res(reason, rlen, DKIM_TEMPERROR, "out of memory");
        goto out;
    }
    rc = check_digest(sig, keys, nk, digest, reason, rlen);
out:
    EVP_MD_CTX_free(md);
    for (size_t i = 0; i < nk; i++)
        dkim_pubkey_free(keys[i]);
    return rc;
}

int dkim_verify_seal(const hdr_field *const *sealed, size_t n_sealed, const hdr_field *f,
                     const dkim_sig *sig, const char *const *recs, const size_t *lens, size_t n,
                     int64_t now, char *reason, size_t rlen)
{
    if (reason && rlen)
        reason[0] = 0;
    if (sig->x >= 0 && now > sig->x)
        return res(reason, rlen, DKIM_PERMERROR, "signature expired");
    dkim_pubkey *keys[8];
    size_t nk = 0;
    int rc = select_keys(sig, recs, lens, n, keys, &nk, reason, rlen);
    if (rc != 0)
        return rc;
    /* RFC 8617 §5.1.1: the ARC sets in order, relaxed, then the seal */
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char digest[32];
    unsigned int dl = 0;
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        rc = res(reason, rlen, DKIM_TEMPERROR, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_sealed; i++)
        dkim_canon_header(DKIM_CANON_RELAXED, sealed[i]->raw, sealed[i]->raw_len, true, md_sink,
                          md);
    if (hash_sig_field(md, f, sig) != 0 || EVP_DigestFinal_ex(md, digest, &dl) != 1 || dl != 32) {
        rc = res(reason, rlen, DKIM_TEMPERROR, "out of memory");
        goto out;
    }
    rc = check_digest(sig, keys, nk, digest, reason, rlen);
out:
    EVP_MD_CTX_free(md);
    for (size_t i = 0; i < nk; i++)
        dkim_pubkey_free(keys[i]);
    return rc;
}

/* b= without whitespace, at most max bytes, into out; returns its length. */
static size_t b_compact(const dkim_sig *s, char *out, size_t max)
{
    size_t o = 0;
    for (size_t i = 0; i < s->b->value_len && o < max; i++)
        if ((unsigned char)s->b->value[i] > 0x20)
            out[o++] = s->b->value[i];
    return o;
}

void dkim_header_b(const dkim_sig *const *all, size_t n, size_t self, char *out, size_t outlen)
{
    char me[1400], other[1400];
    size_t ml = b_compact(all[self], me, sizeof(me));
    size_t want = ml < 8 ? ml : 8;
    for (;;) {
        bool clash = false;
        for (size_t i = 0; i < n && want < ml; i++) {
            if (i == self)
                continue;
            size_t ol = b_compact(all[i], other, sizeof(other));
            if (ol == ml && memcmp(other, me, ml) == 0)
                continue; /* the same signature twice */
            if (ol >= want && memcmp(other, me, want) == 0)
                clash = true;
        }
        if (!clash || want >= ml)
            break;
        want = want + 2 > ml ? ml : want + 2;
    }
    if (want >= outlen)
        want = outlen - 1;
    memcpy(out, me, want);
    out[want] = 0;
}
