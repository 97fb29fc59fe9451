/* libcurl's multi interface driven by a libevent event_base: the sockets
 * curl opens become events of that base, curl's timer one timer event, so
 * HTTP requests run on a reactor without ever blocking it. One curlev is
 * one curl multi handle, and so one connection cache: requests added to
 * the same curlev reuse each other's connections. A curlev and its easy
 * handles are touched only by the thread that runs its base. */
#ifndef KUMOD_NET_CURLEV_H
#define KUMOD_NET_CURLEV_H
#include <curl/curl.h>

struct event_base;
typedef struct curlev curlev;

/* Called once per added easy handle when curl is done with it (rc is
 * CURLE_OK or the transfer's error; errbuf holds curl's detail, may be "").
 * The easy handle has been removed from the multi and belongs to the
 * caller again. The callback may add requests or free the curlev. */
typedef void (*curlev_done_fn)(CURL *easy, CURLcode rc, const char *errbuf, void *ud);

/* NULL when curl cannot make a multi handle. */
curlev *curlev_new(struct event_base *base);
/* Starts easy (configured by the caller; CURLOPT_PRIVATE and
 * CURLOPT_ERRORBUFFER are ours). 0, or KERR_NOMEM / KERR_IO. */
int curlev_add(curlev *cv, CURL *easy, curlev_done_fn done, void *ud);
/* Abandons a transfer under way: done will not be called; easy belongs to
 * the caller again. */
void curlev_remove(curlev *cv, CURL *easy);
/* Transfers under way. */
int curlev_active(const curlev *cv);
/* Abandons every transfer (their done is called with
 * CURLE_ABORTED_BY_CALLBACK) and frees the multi handle, its events and
 * its connections. Safe from inside a done callback (the free is then
 * finished when curl's callback returns). NULL is fine. */
void curlev_free(curlev *cv);

#endif
