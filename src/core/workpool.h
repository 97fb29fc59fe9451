/* A pool of worker threads for CPU-bound jobs that must not run on a
 * reactor (DKIM signatures). A job's work function runs on a worker; its
 * done function is then posted to the reactor that submitted it. Jobs run
 * in submission order across the workers; the queue is unbounded (its
 * producers are Lua calls that wait for their job, so it holds at most one
 * job per waiting call). */
#ifndef KUMOD_CORE_WORKPOOL_H
#define KUMOD_CORE_WORKPOOL_H
#include "core/reactor.h"

typedef struct workpool workpool;

/* Starts n >= 1 threads named name (at most 15 bytes shown). NULL when a
 * thread cannot start or memory runs out. */
workpool *workpool_new(const char *name, int n);
int workpool_threads(const workpool *p);
/* Runs work(arg) on a worker, then done(arg) on r (through reactor_post).
 * arg is owned by the job until done runs. Returns 0, or KERR_SHUTDOWN once
 * the pool stops. Any thread. */
int workpool_submit(workpool *p, reactor *r, reactor_fn work, reactor_fn done, void *arg);
/* Finishes the queued jobs, joins the threads and frees the pool. */
void workpool_free(workpool *p);

#endif
