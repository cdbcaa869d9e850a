/* What the data plane needs of a batched backend's lease book to answer a
 * lease hit the way AsyncBatchedRedisBackend.take does: per key, how far
 * the Redis bucket's TAT lay ahead at this process' last reservation and
 * when (LeaseBook's lease.ahead / lease.ahead_at), the book's low water
 * (a hit that leaves that many held tokens or fewer is Python's: it may
 * start a refill), and whether the limiter's breaker counts failures (then
 * Python decides every check, by its policy). Written by the book through
 * guardian._native.LeaseMirror on the event loop, read by the data plane
 * thread: the map under a mutex, the two flags atomic.
 *
 * Keys are 64-bit SipHashes under a random seed, as the core's slots are:
 * two keys that collide would share a report, as they share a lease slot. */
#ifndef GUARDIAN_LEASE_H
#define GUARDIAN_LEASE_H
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t h; /* 0: empty */
    int64_t ahead, ahead_at;
    int64_t low; /* the lease's own low water */
    int told;    /* a low-water hit was told to Python since this reservation */
} g_lease_entry;

/* A hit the data plane answered that left its key at or below the low water. */
typedef struct {
    uint8_t *key;
    uint32_t n;
    int64_t left;
} g_low_hit;

#define G_LOW_HITS 256 /* pending at most; more are dropped (the next hit tells again) */

typedef struct g_lease {
    pthread_mutex_t mu;
    g_lease_entry *slots;
    uint32_t mask, used;
    uint64_t k0, k1;
    int64_t low_cap; /* atomic */
    int failing;     /* atomic: the limiter's breaker counts failures */
    int broken;      /* atomic: a reservation could not be copied (no memory): every hit is Python's */
    /* low-water hits for Python (it starts the refills), and the eventfd
     * that wakes its loop when the first one arrives */
    g_low_hit low[G_LOW_HITS];
    uint32_t nlow;
    int efd;
} g_lease;

/* 0, or -1 out of memory (or no eventfd) */
int lease_init(g_lease *m, uint64_t k0, uint64_t k1);
void lease_destroy(g_lease *m);
/* The key's reservation: 0, or -1 out of memory (the entry is then absent,
 * and hits of the key go to Python: never a wrong answer) */
int lease_set(g_lease *m, const uint8_t *key, size_t n, int64_t ahead, int64_t ahead_at, int64_t low);
void lease_drop(g_lease *m, const uint8_t *key, size_t n);
void lease_clear(g_lease *m);
/* 1 with the key's reservation, 0 when it has none */
int lease_get(g_lease *m, const uint8_t *key, size_t n, int64_t *ahead, int64_t *ahead_at);
/* A hit that left ``left`` held tokens: lease_get, and whether Python must
 * be told (at or below the lease's own low water, once per reservation; a
 * key without a reservation here: at or below the book's low water). */
int lease_hit(g_lease *m, const uint8_t *key, size_t n, int64_t left, int64_t *ahead, int64_t *ahead_at,
              int *tell);
uint32_t lease_count(g_lease *m);
/* A hit that left ``left`` tokens at or below the low water: queued for
 * Python, whose loop is woken by efd when the queue was empty. */
void lease_low_hit(g_lease *m, const uint8_t *key, size_t n, int64_t left);
/* Moves the queued low-water hits to out (at most max); their count. The
 * caller frees each key. */
uint32_t lease_take_low(g_lease *m, g_low_hit *out, uint32_t max);
#endif
