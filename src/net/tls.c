/* OpenSSL context construction. Errors are reported with OpenSSL's own
 * error queue text. Any thread (a context is built once, then shared). */
#include "net/tls.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

static void tls_err(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "unknown error";
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    snprintf(err, errlen, "%s: %s", what, buf);
    ERR_clear_error();
}

static int make_self_signed(SSL_CTX *ctx, const char *hostname, char *err, size_t errlen)
{
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    int rc = -1;
    if (!pkey || !x) {
        tls_err(err, errlen, "generating a self-signed key");
        goto out;
    }
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)time(NULL));
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 3650L * 86400L);
    X509_set_pubkey(x, pkey);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)hostname, -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    char san[300];
    snprintf(san, sizeof(san), "DNS:%s", hostname);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
    if (ext) {
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    if (!X509_sign(x, pkey, EVP_sha256())) {
        tls_err(err, errlen, "signing the self-signed certificate");
        goto out;
    }
    if (SSL_CTX_use_certificate(ctx, x) != 1 || SSL_CTX_use_PrivateKey(ctx, pkey) != 1) {
        tls_err(err, errlen, "installing the self-signed certificate");
        goto out;
    }
    rc = 0;
out:
    X509_free(x);
    EVP_PKEY_free(pkey);
    return rc;
}

SSL_CTX *tls_server_ctx_new(const char *cert_path, const char *key_path, const char *hostname,
                            char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        tls_err(err, errlen, "creating a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    if (cert_path && key_path) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cert_path) != 1) {
            tls_err(err, errlen, cert_path);
            SSL_CTX_free(ctx);
            return NULL;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, key_path, SSL_FILETYPE_PEM) != 1) {
            tls_err(err, errlen, key_path);
            SSL_CTX_free(ctx);
            return NULL;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            tls_err(err, errlen, "certificate and private key do not match");
            SSL_CTX_free(ctx);
            return NULL;
        }
    } else if (make_self_signed(ctx, hostname, err, errlen) != 0) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* The verdict is left in SSL_get_verify_result; the handshake goes on. */
static int accept_any_client_cert(int preverify_ok, X509_STORE_CTX *x)
{
    (void)preverify_ok;
    (void)x;
    return 1;
}

int tls_server_ctx_request_client_cert(SSL_CTX *ctx, const char *ca_path, char *err,
                                       size_t errlen)
{
    if (SSL_CTX_load_verify_locations(ctx, ca_path, NULL) != 1) {
        tls_err(err, errlen, ca_path);
        return -1;
    }
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca_path);
    if (!names) {
        tls_err(err, errlen, ca_path);
        return -1;
    }
    SSL_CTX_set_client_CA_list(ctx, names); /* takes names */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, accept_any_client_cert);
    /* OpenSSL refuses to resume a session of a verifying context without one */
    static const unsigned char sid_ctx[] = "kumod-esmtp";
    if (SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1) != 1) {
        tls_err(err, errlen, "setting the session id context");
        return -1;
    }
    return 0;
}

SSL_CTX *tls_client_ctx_new(int verify, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        tls_err(err, errlen, "creating a TLS client context");
        return NULL;
    }
    if (verify) {
        SSL_CTX_set_default_verify_paths(ctx);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    return ctx;
}
