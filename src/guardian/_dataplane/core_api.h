/* The core's C entry points as guardian._core exports them in a capsule
 * (Table._native_api). Mirrors _core.pyx's NativeApi and Decision structs;
 * the version and the Decision size are checked when a capsule is read. */
#ifndef GUARDIAN_CORE_API_H
#define GUARDIAN_CORE_API_H
#include <stddef.h>
#include <stdint.h>

#define G_CORE_API_VERSION 4
#define G_CORE_API_CAPSULE "guardian._core.native_api"

typedef struct {
    int allowed; /* Cython's bint */
    int64_t remaining;
    int64_t retry_ticks;
    int64_t reset_ticks;
    int64_t stuck;     /* 0, or the pid holding the key's stripe lock past the bound */
    ptrdiff_t slot;    /* Py_ssize_t: the admission's slot (take_all undoes with it) */
    int64_t before, after;
} g_decision;

typedef int (*g_take_fn)(void *table, const unsigned char *key, size_t n, int64_t cost, g_decision *d);
typedef int (*g_usage_fn)(void *table, const unsigned char *key, size_t n, int64_t *used);
typedef int (*g_params_fn)(void *table, int64_t *capacity, double *scale);
/* peek(key, 0): remaining now and ticks until full, nothing changed */
typedef int (*g_peek_fn)(void *table, const unsigned char *key, size_t n, g_decision *d);

/* Takes back a take that answered 0 with d (its count; its tokens when it
 * admitted, unless the bucket moved since: then they stay taken) */
typedef int (*g_undo_fn)(void *table, const unsigned char *key, size_t n, int64_t cost, g_decision *d);

/* A lease table (the batched backends'): takes cost held tokens; *left
 * the tokens left, or -1 when fewer were held (nothing taken); d records
 * the write, for unspend */
typedef int (*g_spend_fn)(void *table, const unsigned char *key, size_t n, int64_t cost, int64_t *left,
                          g_decision *d);
/* Gives back the spend d recorded when the slot still holds exactly what it
 * wrote: 0; else 1 (the tokens are dropped: never given to a drained lease) */
typedef int (*g_unspend_fn)(void *table, const unsigned char *key, size_t n, g_decision *d);
/* A Redis bucket read elapsed_ns after a reservation (_since.h): whole
 * tokens left and the TAT's lead in ticks */
typedef int (*g_read_fn)(int64_t ahead, int64_t held, int64_t P, int64_t tau, int64_t elapsed_ns,
                         int64_t ticks_per_second, int64_t *remaining, int64_t *lead);

typedef struct {
    unsigned version;
    unsigned decision_size;
    g_take_fn take;
    g_usage_fn usage;
    g_params_fn params;
    g_peek_fn peek;
    g_undo_fn undo;
    g_spend_fn spend;
    g_unspend_fn unspend;
    g_read_fn read;
} g_core_api;

#endif
