/* scratch: a scratch directory for one test group, and a file helper.
 * Header-only (each test is its own executable). Used by the tests that
 * need files on disk: set SCRATCH_NAME before including, e.g.
 *   #define SCRATCH_NAME "havms-fencetest"
 * then pass scratch_setup / scratch_teardown to cmocka_run_group_tests
 * (or call them from the group's own setup), and use `scratch` (the
 * directory's path). */
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef SCRATCH_NAME
#error "define SCRATCH_NAME before including scratch.h"
#endif

static char scratch[64];

static inline int scratch_setup(void **state)
{
        (void)state;
        snprintf(scratch, sizeof(scratch), "/tmp/" SCRATCH_NAME "-XXXXXX");
        return mkdtemp(scratch) ? 0 : -1;
}

static inline int scratch_teardown(void **state)
{
        (void)state;
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", scratch);
        return system(cmd) == 0 ? 0 : -1;
}

/* Write TEXT into scratch/NAME (the test fails if it cannot). */
static inline void scratch_put(const char *name, const char *text)
{
        char p[512];
        snprintf(p, sizeof(p), "%s/%s", scratch, name);
        FILE *f = fopen(p, "w");
        if (!f || fputs(text, f) < 0 || fclose(f) != 0)
                fail_msg("cannot write %s", p);
}
