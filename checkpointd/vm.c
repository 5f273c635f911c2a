#include "vm.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *vm_state_name(enum vm_state s)
{
        switch (s) {
        case VM_DEFINED: return "defined";
        case VM_RUNNING: return "running";
        case VM_CONNECTING: return "connecting";
        case VM_SYNCING: return "syncing";
        case VM_PROTECTED: return "protected";
        case VM_HELD: return "held";
        case VM_DEGRADED: return "degraded";
        case VM_ISOLATED: return "isolated";
        case VM_BK_SYNCING: return "backup-syncing";
        case VM_BK_STANDBY: return "backup-standby";
        case VM_BK_ORPHANED: return "backup-orphaned";
        case VM_ACTIVATING: return "activating";
        }
        return "?";
}

bool vm_state_is_primary(enum vm_state s)
{
        return s == VM_RUNNING || s == VM_CONNECTING || s == VM_SYNCING ||
               s == VM_PROTECTED || s == VM_HELD || s == VM_DEGRADED || s == VM_ISOLATED;
}

void vm_set_state(struct vm *v, enum vm_state s)
{
        v->state = s;
        pthread_cond_broadcast(&v->changed);
}

void vm_set_error(struct vm *v, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(v->last_error, sizeof(v->last_error), fmt, ap);
        va_end(ap);
}

void vm_record_epoch(struct vm *v, const struct epoch_stat *st)
{
        v->stats[v->n_stats % STATS_RING] = *st;
        v->n_stats++;
}

void vm_record_standby(struct vm *v, const struct standby_stat *st)
{
        v->sb_stats[v->n_sb_stats % SB_STATS_RING] = *st;
        v->n_sb_stats++;
}

void vm_set_exit(struct vm *v, const char *why)
{
        snprintf(v->last_exit, sizeof(v->last_exit), "%s", why);
}

bool vm_guest_powered_off(struct qemu_vm *q)
{
        if (!q || !q->qmp)
                return false;
        qmp_drain(q->qmp);
        bool guest = false;
        return qmp_shutdown_seen(q->qmp, &guest) && guest;
}
