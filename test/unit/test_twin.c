/* test_twin: the second thread of lib/twin.c. Each job writes a pattern
 * into its own half of a buffer; after twin_wait the twin's half must be
 * complete and visible, job after job, including jobs handed over while
 * the twin is still asleep and jobs that take longer than the caller's
 * half. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "twin.h"

#define HALF 4096

struct job {
        uint32_t *dst;
        uint32_t seed;
        unsigned delay_us;
        int runs;
};

static void fill(void *arg)
{
        struct job *j = arg;
        if (j->delay_us) {
                struct timespec ts = { 0, (long)j->delay_us * 1000 };
                nanosleep(&ts, NULL);
        }
        for (uint32_t i = 0; i < HALF; i++)
                j->dst[i] = j->seed * 2654435761u + i;
        j->runs++;
}

static void test_halves(void **state)
{
        (void)state;
        static uint32_t buf[2 * HALF];
        struct twin *t = NULL;
        assert_int_equal(twin_start(&t), 0);
        struct job hi = { .dst = buf + HALF }, lo = { .dst = buf };
        for (uint32_t round = 1; round <= 500; round++) {
                hi.seed = round;
                lo.seed = round + 1000000;
                hi.delay_us = round % 7 == 0 ? 300 : 0; /* the twin last */
                lo.delay_us = round % 5 == 0 ? 300 : 0; /* the twin first */
                twin_go(t, fill, &hi);
                fill(&lo);
                twin_wait(t);
                for (uint32_t i = 0; i < HALF; i++) {
                        assert_int_equal(buf[i], lo.seed * 2654435761u + i);
                        assert_int_equal(buf[HALF + i], hi.seed * 2654435761u + i);
                }
        }
        assert_int_equal(hi.runs, 500); /* each job exactly once */
        twin_stop(t);
}

/* A twin never given a job stops cleanly; so does NULL. */
static void test_idle_stop(void **state)
{
        (void)state;
        struct twin *t = NULL;
        assert_int_equal(twin_start(&t), 0);
        twin_stop(t);
        twin_stop(NULL);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_halves),
                cmocka_unit_test(test_idle_stop),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
