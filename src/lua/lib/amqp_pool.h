/* AMQP 0-9-1 publishing (RabbitMQ) for kumo.amqp, over librabbitmq, which
 * blocks: every connection is driven by a thread of its own, never by a
 * reactor. A pool is a job queue served by up to pool_size such threads,
 * each with its own connection and channel 1; a job (a publish, a connect,
 * a close) is filled on the reactor, submitted, run on a connection thread,
 * and its done function is then posted back to the reactor that submitted
 * it. Threads start when jobs wait and every thread is busy; a connection is
 * kept open for the next jobs, checked before reuse (a broker that closed
 * it, e.g. by restarting, is noticed then) and opened again when it is gone.
 *
 * With confirm set, the channel is in confirm mode (publisher confirms):
 * a publish completes when the broker acks or nacks it, and a message the
 * broker returns (mandatory, unroutable) fails its job. Publishes waiting
 * in the queue go out together, then their confirms are awaited together.
 *
 * Time limits: connect_ms bounds a connect and login, publish_ms a batch's
 * writes and confirms, wait_ms the time a job waits in the queue; a job
 * whose thread is stuck past all of them (a blocked socket write) is
 * completed with a timeout by a timer on its reactor, and its connection is
 * shut down so that the thread gets free. */
#ifndef KUMOD_LUA_LIB_AMQP_POOL_H
#define KUMOD_LUA_LIB_AMQP_POOL_H
#include <amqp.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/reactor.h"

typedef struct amqp_conf {
    char *host; /* required */
    int port;   /* 0: 5672 (5671 with tls) */
    char *user, *password, *vhost, *connection_name; /* NULL: guest, guest, "/", none */
    int heartbeat_s;                                 /* -1: 60 */
    bool tls;
    char *root_ca_cert, *client_cert, *client_key; /* paths; NULL: none */
    int pool_size;                                 /* 0: CPUs * 4 */
    int64_t connect_ms, wait_ms, publish_ms;       /* 0: defaults (60 s each) */
    bool confirm;
} amqp_conf;

/* Frees the strings of c (not c). */
void amqp_conf_fini(amqp_conf *c);

enum amqp_job_kind { AMQP_JOB_PUBLISH, AMQP_JOB_CONNECT, AMQP_JOB_CLOSE };
enum amqp_confirm_status { AMQP_NOT_REQUESTED, AMQP_ACK, AMQP_NACK };

typedef struct amqp_pool amqp_pool;
typedef struct amqp_job amqp_job;
/* Runs on the submitting reactor, exactly once per submitted job; the job
 * is freed after it returns. */
typedef void (*amqp_done_fn)(amqp_job *j);

struct amqp_job {
    enum amqp_job_kind kind;
    /* publish: strings and headers are allocated from mem (amqp_job_strdup) */
    amqp_pool_t mem;
    amqp_bytes_t exchange, routing_key, body;
    amqp_basic_properties_t props;
    bool mandatory, immediate;
    int64_t publish_ms; /* 0: the pool's */
    /* result, read in done */
    int rc;        /* 0, or a negative KERR_* with err */
    char err[512];
    enum amqp_confirm_status status;
    int reply_code; /* the broker's code, 0 when none */
    char reply_text[256];
    /* for the submitter */
    amqp_done_fn done;
    void *ud;
    /* private to amqp_pool.c */
    struct amqp_job_priv *priv;
};

/* A job of kind k (NULL without memory). */
amqp_job *amqp_job_new(enum amqp_job_kind k);
void amqp_job_free(amqp_job *j); /* a job never submitted */
/* A copy of s in j->mem (amqp_empty_bytes for NULL). */
amqp_bytes_t amqp_job_bytes(amqp_job *j, const void *s, size_t len);

/* The shared pool for c (kumo.amqp.basic_publish): pools are kept by their
 * whole configuration and live until amqp_pools_stop. Returns a new
 * reference; NULL after amqp_pools_stop or without memory. c is copied. */
amqp_pool *amqp_pool_shared(const amqp_conf *c);
/* A private pool of one connection (kumo.amqp.build_client). */
amqp_pool *amqp_pool_new(const amqp_conf *c);
void amqp_pool_unref(amqp_pool *p);

/* Queues j on p; done(j) later runs on r. On error (KERR_SHUTDOWN once the
 * pools stop, KERR_NOMEM) the job is not queued and stays the caller's.
 * r's thread only. */
int amqp_pool_submit(amqp_pool *p, amqp_job *j, reactor *r, amqp_done_fn done, void *ud);

/* Shutdown, before the reactors stop: refuses new jobs, shuts the open
 * connections down, fails the queued jobs (their done functions are posted
 * to the reactors) and joins every connection thread. */
void amqp_pools_stop(void);

#endif
