/* The slot table's fixed layout (twin of _region.py) and the few OS calls
 * the core needs: the monotonic clock and "is this process still alive". */
#ifndef GUARDIAN_TABLE_H
#define GUARDIAN_TABLE_H
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <time.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/types.h>
#include <pthread.h>

#define G_STRIPES 64
#define G_TOMB 2 /* fingerprint of a repaired slot; real ones are odd */

typedef struct {
    uint64_t magic;
    uint64_t version_impl;
    uint64_t nslots;
    uint64_t seed0, seed1;
    int64_t epoch_ns;
    int64_t capacity, emission_ticks, ticks_per_ns;
    uint64_t full_count, reclaim_count;
    uint64_t reserved[5];
    /* Insertion locks: 0 when free, else the holder's pid. A key's inserts
     * are serialised by the stripe of its home slot. */
    uint64_t stripes[G_STRIPES];
} g_header;

typedef struct {
    uint64_t fp; /* 0: never used; G_TOMB: repaired; else hash | 1 */
    int64_t tat; /* >= 0: theoretical arrival time in ticks; < 0: locked */
} g_slot;

_Static_assert(sizeof(g_header) == 640, "header layout must match _region.py");
_Static_assert(offsetof(g_header, full_count) == 9 * 8, "header layout must match _region.py");
_Static_assert(sizeof(g_slot) == 16, "slot layout must match _region.py");

static inline int64_t g_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* A lock names its holder by pid so that a survivor can tell a holder that
 * died (SIGKILL, OOM) from one that is merely slow. A zombie still answers
 * kill(pid, 0), so on Linux its state in /proc decides. All processes that
 * share a table must share a pid namespace (docs/core.md). */
static int g_pid_alive(int64_t pid) {
    if (pid <= 0) return 0;
    if (kill((pid_t)pid, 0) != 0 && errno != EPERM) return 0;
#ifdef __linux__
    char path[64];
    snprintf(path, sizeof path, "/proc/%lld/stat", (long long)pid);
    FILE *f = fopen(path, "r");
    if (f) {
        char buf[512];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        /* "pid (comm) S ...": the state follows the last ')'. */
        char *p = NULL;
        for (char *q = buf; *q; q++) if (*q == ')') p = q;
        if (p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X')) return 0;
    }
#endif
    return 1;
}

/* This process's pid, cached: getpid() is a system call on the insert path.
 * pthread_atfork refreshes it in a forked child (os.fork runs the handler). */
static int64_t g_self_pid;
static void g_refresh_pid(void) { g_self_pid = (int64_t)getpid(); }
static int g_pid_setup(void) {
    g_refresh_pid();
    return pthread_atfork(NULL, NULL, g_refresh_pid);
}

static inline void g_sleep_ns(int64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    nanosleep(&ts, NULL);
}

static inline void g_pause(unsigned spins) {
    if (spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    } else {
        sched_yield();
    }
}
#endif
