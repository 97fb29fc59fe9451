/* Unit tests for src/msg/arc.c (RFC 8617) and the ARC parts of dkim.c and
 * dkim_verify.c: the AAR instance parser; collection of well-formed and
 * malformed sets (missing header, missing instance, duplicate i=, i > 50,
 * cv= values against the instance, h= in a seal, garbage); seal then
 * validate round trips with RSA and Ed25519 keys, relaxed and simple AMS,
 * over-signed headers, up to the 50-set limit; and the failures: a tampered
 * body or signed header (newest AMS), a tampered older AMS (oldest-pass), a
 * tampered seal or AAR (AS), a missing key, a DNS failure (temperror in the
 * reason), a revoked key, a broken signature. Keys are made with OpenSSL
 * at start-up and handed to the validator by a callback, as the Lua layer
 * does with the looked-up TXT records. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "core/kerr.h"
#include "msg/arc.h"
#include "msg/dkim_verify.h"

#define NOW 1700000000

static dkim_key *rsa_key, *ed_key;
static char rsa_rec[1024], ed_rec[256];

/* A fresh key of type id as a dkim_key and its DKIM1 key record. */
static void make_key(int id, enum dkim_alg alg, dkim_key **out, char *rec, size_t reclen)
{
    EVP_PKEY *pk = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(id, NULL);
    assert_non_null(ctx);
    assert_int_equal(EVP_PKEY_keygen_init(ctx), 1);
    if (id == EVP_PKEY_RSA)
        assert_int_equal(EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, 1024), 1);
    assert_int_equal(EVP_PKEY_keygen(ctx, &pk), 1);
    EVP_PKEY_CTX_free(ctx);
    BIO *bio = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PrivateKey(bio, pk, NULL, NULL, 0, NULL, NULL), 1);
    char *pem = NULL;
    long pl = BIO_get_mem_data(bio, &pem);
    char err[200];
    assert_int_equal(dkim_key_parse(alg, pem, (size_t)pl, out, err, sizeof(err)), 0);
    BIO_free(bio);
    unsigned char raw[600];
    size_t rl = sizeof(raw);
    if (id == EVP_PKEY_RSA) {
        unsigned char *p = raw;
        rl = (size_t)i2d_PUBKEY(pk, &p);
    } else {
        assert_int_equal(EVP_PKEY_get_raw_public_key(pk, raw, &rl), 1);
    }
    char b64[1000];
    EVP_EncodeBlock((unsigned char *)b64, raw, (int)rl);
    snprintf(rec, reclen, "v=DKIM1; k=%s; p=%s", id == EVP_PKEY_RSA ? "rsa" : "ed25519", b64);
    EVP_PKEY_free(pk);
}

static int setup(void **state)
{
    (void)state;
    make_key(EVP_PKEY_RSA, DKIM_ALG_RSA_SHA256, &rsa_key, rsa_rec, sizeof(rsa_rec));
    make_key(EVP_PKEY_ED25519, DKIM_ALG_ED25519_SHA256, &ed_key, ed_rec, sizeof(ed_rec));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    dkim_key_unref(rsa_key);
    dkim_key_unref(ed_key);
    return 0;
}

/* The key callback: selector "rsa" and "ed" of example.com; "gone" is a
 * DNS failure, "revoked" an empty p=, anything else has no record. */
static int keys(void *ctx, const dkim_sig *sig, const char *const **recs, const size_t **lens,
                size_t *n, char *reason, size_t rlen)
{
    (void)ctx;
    static const char *r[1];
    static size_t l[1];
    char name[300];
    assert_true(dkim_key_name(sig, name, sizeof(name)));
    if (strcmp(name, "gone._domainkey.example.com") == 0) {
        snprintf(reason, rlen, "key unavailable: SERVFAIL");
        return DKIM_TEMPERROR;
    }
    if (strcmp(name, "rsa._domainkey.example.com") == 0)
        r[0] = rsa_rec;
    else if (strcmp(name, "ed._domainkey.example.com") == 0)
        r[0] = ed_rec;
    else if (strcmp(name, "revoked._domainkey.example.com") == 0)
        r[0] = "v=DKIM1; k=rsa; p=";
    else {
        snprintf(reason, rlen, "no key for signature");
        return DKIM_PERMERROR;
    }
    l[0] = strlen(r[0]);
    *recs = r;
    *lens = l;
    *n = 1;
    return 0;
}

static const char *const HDRS[] = {"From", "To", "Subject"};

static dkim_sign_params params(enum dkim_alg alg, const char *selector)
{
    return (dkim_sign_params){.alg = alg,
                              .header_canon = DKIM_CANON_RELAXED,
                              .body_canon = DKIM_CANON_RELAXED,
                              .domain = "example.com",
                              .selector = selector,
                              .headers = HDRS,
                              .n_headers = 3};
}

static const char MSG[] = "From: a@example.com\r\nTo: b@example.org\r\nSubject: hello\r\n"
                          "\r\nThe body  \r\nof the message\r\n";

/* Collects and validates data; returns the chain (free it). */
static arc_chain *check(const char *data, size_t len)
{
    hdr_index ix;
    assert_int_equal(hdr_index_build(data, len, &ix), 0);
    arc_chain *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    arc_collect(&ix, c);
    arc_validate(c, data, len, &ix, keys, NULL, NOW);
    hdr_index_fini(&ix);
    return c;
}

/* Seals data once more with p / k; returns the new message (free it). */
static char *seal(const char *data, size_t len, const dkim_sign_params *p, dkim_key *k,
                  size_t *out_len)
{
    hdr_index ix;
    assert_int_equal(hdr_index_build(data, len, &ix), 0);
    arc_chain *c = calloc(1, sizeof(*c));
    arc_collect(&ix, c);
    arc_validate(c, data, len, &ix, keys, NULL, NOW);
    char aar[128];
    snprintf(aar, sizeof(aar), "ARC-Authentication-Results: i=%zu; mx.example.net;\r\n\tarc=%s\r\n",
             c->n + 1, arc_cv_name(c->cv));
    char err[256] = "";
    char *out = arc_seal(c, p, k, aar, strlen(aar), data, len, NOW, out_len, err, sizeof(err));
    if (!out)
        print_message("arc_seal: %s\n", err);
    hdr_index_fini(&ix);
    free(c);
    return out;
}

static void test_aar_instance(void **state)
{
    (void)state;
    const struct {
        const char *v;
        int want;
    } cases[] = {
        {" i=1; mx.example.com; dkim=pass", 1},
        {"i=50; mx", 50},
        {" (comment) i = 7 ; mx.example.com", 7},
        {"\r\n\ti=2;\r\n\tmx; none", 2},
        {"i=0; mx", KERR_RANGE},
        {"i=51; mx", KERR_RANGE},
        {"i=99999999999999999999; mx", KERR_RANGE},
        {"i=1 mx", KERR_PARSE},
        {"i=1;", KERR_PARSE},
        {"i=1; ;", KERR_PARSE},
        {"i=; mx", KERR_PARSE},
        {"mx.example.com; dkim=pass", KERR_PARSE},
        {"", KERR_PARSE},
        {"(unterminated i=1; mx", KERR_PARSE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_int_equal(arc_aar_instance(cases[i].v, strlen(cases[i].v)), cases[i].want);
}

static void test_none(void **state)
{
    (void)state;
    arc_chain *c = check(MSG, strlen(MSG));
    assert_int_equal(c->cv, ARC_CV_NONE);
    assert_false(c->any);
    assert_string_equal(c->reason, "");
    free(c);
}

static void round_trip(enum dkim_alg alg, const char *sel, enum dkim_canon hc,
                       enum dkim_canon bc, bool over_sign, int sets)
{
    dkim_sign_params p = params(alg, sel);
    p.header_canon = hc;
    p.body_canon = bc;
    p.over_sign = over_sign;
    dkim_key *k = alg == DKIM_ALG_RSA_SHA256 ? rsa_key : ed_key;
    size_t len = strlen(MSG);
    char *data = strdup(MSG);
    for (int i = 1; i <= sets; i++) {
        size_t nl = 0;
        char *next = seal(data, len, &p, k, &nl);
        assert_non_null(next);
        free(data);
        data = next;
        len = nl;
        arc_chain *c = check(data, len);
        if (c->cv != ARC_CV_PASS)
            print_message("set %d: %s\n", i, c->reason);
        assert_int_equal(c->cv, ARC_CV_PASS);
        assert_int_equal((int)c->n, i);
        assert_int_equal(c->oldest_pass, 0);
        free(c);
    }
    char cv[32];
    snprintf(cv, sizeof(cv), "i=%d; cv=%s", sets, sets == 1 ? "none" : "pass");
    assert_non_null(strstr(data, cv));
    if (over_sign) {
        /* unfolded, the newest AMS lists each name once more than present */
        char *u = strdup(data);
        size_t o = 0;
        for (size_t i = 0; u[i]; i++)
            if (!(u[i] == '\r' && u[i + 1] == '\n' && u[i + 2] == '\t'))
                u[o++] = u[i];
            else
                i += 2;
        u[o] = 0;
        assert_non_null(strstr(u, "h=from:from:to:to:subject:subject;"));
        free(u);
    }
    free(data);
}

static void test_round_trips(void **state)
{
    (void)state;
    round_trip(DKIM_ALG_RSA_SHA256, "rsa", DKIM_CANON_RELAXED, DKIM_CANON_RELAXED, false, 3);
    round_trip(DKIM_ALG_RSA_SHA256, "rsa", DKIM_CANON_SIMPLE, DKIM_CANON_SIMPLE, true, 2);
    round_trip(DKIM_ALG_ED25519_SHA256, "ed", DKIM_CANON_RELAXED, DKIM_CANON_SIMPLE, true, 3);
    round_trip(DKIM_ALG_ED25519_SHA256, "ed", DKIM_CANON_SIMPLE, DKIM_CANON_RELAXED, false, 1);
}

static void test_limit_50(void **state)
{
    (void)state;
    dkim_sign_params p = params(DKIM_ALG_ED25519_SHA256, "ed");
    size_t len = strlen(MSG);
    char *data = strdup(MSG);
    for (int i = 1; i <= ARC_MAX_INSTANCE; i++) {
        size_t nl = 0;
        char *next = seal(data, len, &p, ed_key, &nl);
        assert_non_null(next);
        free(data);
        data = next;
        len = nl;
    }
    arc_chain *c = check(data, len);
    assert_int_equal(c->cv, ARC_CV_PASS);
    assert_int_equal((int)c->n, 50);
    free(c);
    /* a 51st set cannot be added */
    size_t nl = 0;
    assert_null(seal(data, len, &p, ed_key, &nl));
    /* nor parsed: i=51 is an invalid instance */
    char *more = malloc(len + 200);
    int hl = sprintf(more, "ARC-Seal: i=51; cv=pass; a=ed25519-sha256; d=example.com; s=ed; "
                           "b=AAAA\r\n");
    memcpy(more + hl, data, len);
    c = check(more, len + (size_t)hl);
    assert_int_equal(c->cv, ARC_CV_FAIL);
    assert_string_equal(c->reason,
                        "An ARC-Seal header could not be parsed: ARC instance tag is invalid");
    free(c);
    free(more);
    free(data);
}

/* A message sealed n times with the RSA key. */
static char *sealed(int n, size_t *len)
{
    dkim_sign_params p = params(DKIM_ALG_RSA_SHA256, "rsa");
    *len = strlen(MSG);
    char *data = strdup(MSG);
    for (int i = 0; i < n; i++) {
        size_t nl;
        char *next = seal(data, *len, &p, rsa_key, &nl);
        assert_non_null(next);
        free(data);
        data = next;
        *len = nl;
    }
    return data;
}

/* data with the first occurrence of from replaced by to (same length or not). */
static char *edit(const char *data, size_t len, const char *from, const char *to, size_t *out_len)
{
    const char *at = strstr(data, from);
    assert_non_null(at);
    size_t pre = (size_t)(at - data), fl = strlen(from), tl = strlen(to);
    char *out = malloc(len - fl + tl + 1);
    memcpy(out, data, pre);
    memcpy(out + pre, to, tl);
    memcpy(out + pre + tl, at + fl, len - pre - fl);
    *out_len = len - fl + tl;
    out[*out_len] = 0;
    return out;
}

static void expect_fail(const char *data, size_t len, const char *reason)
{
    arc_chain *c = check(data, len);
    assert_int_equal(c->cv, ARC_CV_FAIL);
    if (strncmp(c->reason, reason, strlen(reason)) != 0)
        print_message("reason: %s\n", c->reason);
    assert_memory_equal(c->reason, reason, strlen(reason));
    free(c);
}

static void test_tampering(void **state)
{
    (void)state;
    size_t len, el;
    char *data = sealed(2, &len);
    char *t = edit(data, len, "of the message", "of the massage", &el);
    expect_fail(t, el,
                "The ARC-Message-Signature for instance 2 failed to validate: body hash did not "
                "verify");
    free(t);
    t = edit(data, len, "Subject: hello", "Subject: hullo", &el);
    expect_fail(t, el,
                "The ARC-Message-Signature for instance 2 failed to validate: signature did not "
                "verify");
    free(t);
    /* an AAR is sealed by the AS of its instance and every later one */
    t = edit(data, len, "i=1; mx.example.net", "i=1; mx.example.bad", &el);
    expect_fail(t, el, "The ARC-Seal for instance 2 failed to validate: signature did not verify");
    free(t);
    /* the seal of instance 1 altered in its b= */
    const char *as1 = strstr(data, "ARC-Seal: i=1;");
    assert_non_null(as1);
    const char *b = strstr(as1, "b=");
    char *copy = strdup(data);
    size_t pos = (size_t)(b - data) + 2;
    copy[pos] = copy[pos] == 'A' ? 'B' : 'A';
    expect_fail(copy, len, "The ARC-Seal for instance 2 failed to validate");
    free(copy);
    free(data);
}

static void test_oldest_pass(void **state)
{
    (void)state;
    /* hop 2 changed a header the first AMS signed, then sealed: the newest
     * AMS passes, the first does not; the chain passes with oldest-pass 2 */
    dkim_sign_params p = params(DKIM_ALG_RSA_SHA256, "rsa");
    size_t len, el, nl;
    char *one = sealed(1, &len);
    arc_chain *c = check(one, len); /* on arrival at hop 2 */
    assert_int_equal(c->cv, ARC_CV_PASS);
    free(c);
    char *changed = edit(one, len, "Subject: hello", "Subject: [list] hello", &el);
    hdr_index ix;
    assert_int_equal(hdr_index_build(changed, el, &ix), 0);
    c = calloc(1, sizeof(*c));
    arc_collect(&ix, c);
    c->cv = ARC_CV_PASS; /* as validated before the change */
    static const char aar[] = "ARC-Authentication-Results: i=2; mx.example.net; arc=pass\r\n";
    char err[200];
    char *two = arc_seal(c, &p, rsa_key, aar, strlen(aar), changed, el, NOW, &nl, err,
                         sizeof(err));
    assert_non_null(two);
    hdr_index_fini(&ix);
    free(c);
    c = check(two, nl);
    assert_int_equal(c->cv, ARC_CV_PASS);
    assert_int_equal(c->oldest_pass, 2);
    free(c);
    free(two);
    free(changed);
    free(one);
}

static void test_keys(void **state)
{
    (void)state;
    size_t len = strlen(MSG), nl;
    /* DNS failure */
    dkim_sign_params p = params(DKIM_ALG_RSA_SHA256, "gone");
    char *d = seal(MSG, len, &p, rsa_key, &nl);
    assert_non_null(d);
    expect_fail(d, nl,
                "The ARC-Message-Signature for instance 1 failed to validate: key unavailable: "
                "SERVFAIL");
    free(d);
    p = params(DKIM_ALG_RSA_SHA256, "revoked");
    d = seal(MSG, len, &p, rsa_key, &nl);
    expect_fail(d, nl, "The ARC-Message-Signature for instance 1 failed to validate: key revoked");
    free(d);
    p = params(DKIM_ALG_RSA_SHA256, "absent");
    d = seal(MSG, len, &p, rsa_key, &nl);
    expect_fail(d, nl,
                "The ARC-Message-Signature for instance 1 failed to validate: no key for "
                "signature");
    free(d);
    /* the record of another algorithm */
    p = params(DKIM_ALG_ED25519_SHA256, "rsa");
    d = seal(MSG, len, &p, ed_key, &nl);
    expect_fail(d, nl,
                "The ARC-Message-Signature for instance 1 failed to validate: inappropriate key "
                "algorithm");
    free(d);
    /* a key that does not match the algorithm cannot seal */
    p = params(DKIM_ALG_RSA_SHA256, "rsa");
    assert_null(seal(MSG, len, &p, ed_key, &nl));
}

/* Hand-made headers above MSG. */
static void expect_structure(const char *hdrs, const char *reason)
{
    size_t hl = strlen(hdrs), ml = strlen(MSG);
    char *d = malloc(hl + ml + 1);
    memcpy(d, hdrs, hl);
    memcpy(d + hl, MSG, ml + 1);
    expect_fail(d, hl + ml, reason);
    free(d);
}

#define AS1 "ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.com; s=rsa; b=AAAA\r\n"
#define AMS1                                                                                       \
    "ARC-Message-Signature: i=1; a=rsa-sha256; d=example.com; s=rsa; h=from; bh=AAAA; b=AAAA\r\n"
#define AAR1 "ARC-Authentication-Results: i=1; mx.example.com; none\r\n"
#define AS2 "ARC-Seal: i=2; cv=pass; a=rsa-sha256; d=example.com; s=rsa; b=AAAA\r\n"
#define AMS2                                                                                       \
    "ARC-Message-Signature: i=2; a=rsa-sha256; d=example.com; s=rsa; h=from; bh=AAAA; b=AAAA\r\n"
#define AAR2 "ARC-Authentication-Results: i=2; mx.example.com; none\r\n"

static void test_structure(void **state)
{
    (void)state;
    expect_structure(AS1 AMS1,
                     "The ARC Set with instance 1 is missing some of its constituent headers");
    expect_structure(AS2 AMS2 AAR2, "The ARC Set with instance 1 is missing");
    expect_structure(AS1 AS1 AMS1 AAR1,
                     "There are duplicate ARC-Seal header(s) for instance 1");
    expect_structure(AS1 AMS1 AMS1 AAR1 AAR1,
                     "There are duplicate ARC-Message-Signature, ARC-Authentication-Results "
                     "header(s) for instance 1");
    expect_structure("ARC-Seal: i=1; cv=pass; a=rsa-sha256; d=example.com; s=rsa; b=AAAA\r\n" AMS1
                         AAR1,
                     "The ARC-Seal for instance 1 is marked as cv=pass but that is invalid");
    expect_structure(AS2 "ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.com; s=rsa; b=AAAA\r\n"
                         AMS2 AMS1 AAR2 AAR1,
                     /* structure is fine; the newest AMS is checked first */
                     "The ARC-Message-Signature for instance 2 failed to validate");
    expect_structure("ARC-Seal: i=2; cv=none; a=rsa-sha256; d=example.com; s=rsa; b=AAAA\r\n" AS1
                         AMS2 AMS1 AAR2 AAR1,
                     "The ARC-Seal for instance 2 is marked as cv=none but that is invalid");
    expect_structure("ARC-Seal: i=2; cv=fail; a=rsa-sha256; d=example.com; s=rsa; b=AAAA\r\n" AS1
                         AMS2 AMS1 AAR2 AAR1,
                     "The ARC-Seal for instance 2 is marked as failing its chain validation");
    expect_structure("ARC-Seal: i=1; cv=maybe; a=rsa-sha256; d=example.com; s=rsa; b=AAAA\r\n" AMS1
                         AAR1,
                     "An ARC-Seal header could not be parsed: invalid chain validation status");
    expect_structure("ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.com; s=rsa; h=from; "
                     "b=AAAA\r\n" AMS1 AAR1,
                     "An ARC-Seal header could not be parsed: h= is not allowed in an ARC-Seal");
    expect_structure("ARC-Seal: i=x; cv=none; a=rsa-sha256; d=example.com; s=rsa; b=AAAA\r\n" AMS1
                         AAR1,
                     "An ARC-Seal header could not be parsed: ARC instance tag is invalid");
    expect_structure("ARC-Seal: garbage\r\n" AMS1 AAR1,
                     "An ARC-Seal header could not be parsed: signature tag list is malformed");
    expect_structure(AS1 "ARC-Message-Signature: i=1; a=rsa-sha256; d=example.com; s=rsa; bh=A; "
                         "b=A\r\n" AAR1,
                     "An ARC-Message-Signature header could not be parsed: signature missing "
                     "required tag h=");
    expect_structure(AS1 AMS1 "ARC-Authentication-Results: i=0; mx; none\r\n",
                     "An ARC-Authentication-Results header has an invalid instance value");
    expect_structure(AS1 AMS1 "ARC-Authentication-Results: mx; none\r\n",
                     "An ARC-Authentication-Results header could not be parsed");
    expect_structure(AS1 "ARC-Message-Signature: i=1; a=rsa-sha512; d=example.com; s=rsa; h=from; "
                         "bh=A; b=A\r\n" AAR1,
                     "An ARC-Message-Signature header could not be parsed: unsupported signature "
                     "algorithm rsa-sha512");
}

/* Thousands of ARC fields: each is parsed once, the chain fails, nothing
 * grows past the 50 sets. */
static void test_many_fields(void **state)
{
    (void)state;
    size_t one = strlen(AS1), n = 5000, ml = strlen(MSG);
    char *d = malloc(one * n + ml + 1);
    for (size_t i = 0; i < n; i++)
        memcpy(d + i * one, AS1, one);
    memcpy(d + one * n, MSG, ml + 1);
    expect_fail(d, one * n + ml, "There are duplicate ARC-Seal header(s) for instance 1");
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_aar_instance), cmocka_unit_test(test_none),
        cmocka_unit_test(test_round_trips),  cmocka_unit_test(test_limit_50),
        cmocka_unit_test(test_tampering),    cmocka_unit_test(test_oldest_pass),
        cmocka_unit_test(test_keys),         cmocka_unit_test(test_structure),
        cmocka_unit_test(test_many_fields),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
