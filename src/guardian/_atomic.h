/* The one place that chooses memory orders for guardian's slot table.
 *
 * Every shared word is an aligned 64-bit integer, so loads and stores never
 * tear on the platforms we build for. Orders are sequentially consistent
 * unless a comment argues otherwise: the slot protocol reads fingerprint,
 * TAT, fingerprint and relies on a single total order of the reclaimer's
 * "lock TAT, write fingerprint, publish TAT" steps (see _core.pyx). */
#ifndef GUARDIAN_ATOMIC_H
#define GUARDIAN_ATOMIC_H
#include <stdint.h>

#if !defined(__GNUC__) && !defined(__clang__)
#error "guardian's core needs the GCC/Clang __atomic builtins"
#endif

static inline int64_t g_load(const int64_t *p) {
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}
static inline uint64_t g_load_u(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}
static inline void g_store(int64_t *p, int64_t v) {
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}
static inline void g_store_u(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}
/* Strong CAS: a spurious failure would only cost a retry, but the strong
 * form keeps retry loops simple to reason about. */
static inline int g_cas(int64_t *p, int64_t expected, int64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
static inline int g_cas_u(uint64_t *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
/* Statistics only: no other memory is published through these counters. */
static inline void g_count(uint64_t *p) {
    __atomic_fetch_add(p, 1, __ATOMIC_RELAXED);
}
/* Takes back a g_count (a take the native data plane undid). */
static inline void g_uncount(uint64_t *p) {
    __atomic_fetch_sub(p, 1, __ATOMIC_RELAXED);
}
static inline uint64_t g_read_count(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
#endif
