/* TLS contexts for listeners: load a certificate and key, or make a
 * self-signed certificate for a hostname. Built once at start-up (main
 * thread); SSL_CTX is then shared read-only by every reactor. */
#ifndef KUMOD_NET_TLS_H
#define KUMOD_NET_TLS_H
#include <openssl/ssl.h>
#include <stddef.h>

/* cert/key may be NULL: then a self-signed certificate for hostname is made. */
SSL_CTX *tls_server_ctx_new(const char *cert_path, const char *key_path, const char *hostname,
                            char *err, size_t errlen);
/* A client context; verify=false accepts any certificate. */
SSL_CTX *tls_client_ctx_new(int verify, char *err, size_t errlen);

#endif
