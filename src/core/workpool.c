/* Worker pool (see workpool.h): a mutex-protected FIFO of jobs and n
 * threads waiting on a condition variable. The done half of a job goes
 * back to the submitting reactor through its mailbox, so a job's result is
 * only touched on that reactor. Out of memory at submit is an error for
 * the caller; nothing here aborts. */

#include "core/workpool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"

typedef struct job {
    struct job *next;
    reactor *r;
    reactor_fn work, done;
    void *arg;
} job;

struct workpool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *head, *tail;
    bool stop;
    int n;
    char name[16];
    pthread_t *threads;
};

static void *worker(void *arg)
{
    workpool *p = arg;
    pthread_setname_np(pthread_self(), p->name);
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->head && !p->stop)
            pthread_cond_wait(&p->cv, &p->mu);
        job *j = p->head;
        if (!j)
            break; /* stopping and drained */
        p->head = j->next;
        if (!p->head)
            p->tail = NULL;
        pthread_mutex_unlock(&p->mu);
        j->work(j->arg);
        if (j->r)
            reactor_post(j->r, j->done, j->arg);
        else
            j->done(j->arg);
        free(j);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

workpool *workpool_new(const char *name, int n)
{
    if (n < 1)
        return NULL;
    workpool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->threads = calloc((size_t)n, sizeof(pthread_t));
    if (!p->threads) {
        free(p);
        return NULL;
    }
    snprintf(p->name, sizeof(p->name), "%s", name);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    for (int i = 0; i < n; i++) {
        if (pthread_create(&p->threads[i], NULL, worker, p) != 0) {
            p->n = i;
            workpool_free(p);
            return NULL;
        }
    }
    p->n = n;
    return p;
}

int workpool_threads(const workpool *p)
{
    return p->n;
}

int workpool_submit(workpool *p, reactor *r, reactor_fn work, reactor_fn done, void *arg)
{
    job *j = malloc(sizeof(*j));
    if (!j)
        return KERR_NOMEM;
    *j = (job){NULL, r, work, done, arg};
    pthread_mutex_lock(&p->mu);
    if (p->stop) {
        pthread_mutex_unlock(&p->mu);
        free(j);
        return KERR_SHUTDOWN;
    }
    if (p->tail)
        p->tail->next = j;
    else
        p->head = j;
    p->tail = j;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

void workpool_free(workpool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
}
