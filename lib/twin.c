/* twin: see twin.h. A mutex and a condition variable: the hand-off costs
 * a wake-up (tens of µs), so callers split only jobs well above that. */
#include "twin.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

struct twin {
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        unsigned long long given, done; /* jobs handed over / finished */
        bool quit;
        void (*fn)(void *arg);
        void *arg;
};

static void *twin_main(void *arg)
{
        struct twin *t = arg;
        unsigned long long seen = 0;

        pthread_mutex_lock(&t->lock);
        for (;;) {
                while (!t->quit && t->given == seen)
                        pthread_cond_wait(&t->cond, &t->lock);
                if (t->quit)
                        break;
                seen = t->given;
                void (*fn)(void *) = t->fn;
                void *fa = t->arg;
                pthread_mutex_unlock(&t->lock);
                fn(fa);
                pthread_mutex_lock(&t->lock);
                t->done = seen;
                pthread_cond_broadcast(&t->cond);
        }
        pthread_mutex_unlock(&t->lock);
        return NULL;
}

int twin_start(struct twin **ret)
{
        struct twin *t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        pthread_mutex_init(&t->lock, NULL);
        pthread_cond_init(&t->cond, NULL);
        int r = pthread_create(&t->thread, NULL, twin_main, t);
        if (r) {
                pthread_mutex_destroy(&t->lock);
                pthread_cond_destroy(&t->cond);
                free(t);
                return -r;
        }
        *ret = t;
        return 0;
}

void twin_stop(struct twin *t)
{
        if (!t)
                return;
        pthread_mutex_lock(&t->lock);
        t->quit = true;
        pthread_cond_broadcast(&t->cond);
        pthread_mutex_unlock(&t->lock);
        pthread_join(t->thread, NULL);
        pthread_mutex_destroy(&t->lock);
        pthread_cond_destroy(&t->cond);
        free(t);
}

void twin_go(struct twin *t, void (*fn)(void *arg), void *arg)
{
        pthread_mutex_lock(&t->lock);
        t->fn = fn;
        t->arg = arg;
        t->given++;
        pthread_cond_broadcast(&t->cond);
        pthread_mutex_unlock(&t->lock);
}

void twin_wait(struct twin *t)
{
        pthread_mutex_lock(&t->lock);
        while (t->done != t->given)
                pthread_cond_wait(&t->cond, &t->lock);
        pthread_mutex_unlock(&t->lock);
}

bool twin_worthwhile(void)
{
        return sysconf(_SC_NPROCESSORS_ONLN) > 1;
}
