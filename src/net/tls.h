/* TLS contexts for listeners: load a certificate and key, or make a
 * self-signed certificate for a hostname. Built at start-up, or once
 * on first use by a reactor (smtp/listener_cfg.c caches them); an SSL_CTX is
 * then shared read-only by every reactor. */
#ifndef KUMOD_NET_TLS_H
#define KUMOD_NET_TLS_H
#include <openssl/ssl.h>
#include <stddef.h>

/* cert/key may be NULL: then a self-signed certificate for hostname is made. */
SSL_CTX *tls_server_ctx_new(const char *cert_path, const char *key_path, const char *hostname,
                            char *err, size_t errlen);
/* Makes a server context ask clients for a certificate and verify it
 * against the CAs in ca_path (PEM) without failing the handshake when there
 * is none or it does not verify: SSL_get_verify_result says which. */
int tls_server_ctx_request_client_cert(SSL_CTX *ctx, const char *ca_path, char *err,
                                       size_t errlen);
/* A client context; verify=false accepts any certificate. */
SSL_CTX *tls_client_ctx_new(int verify, char *err, size_t errlen);

#endif
