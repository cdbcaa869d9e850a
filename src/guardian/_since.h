/* How the batched backends read a Redis bucket between reservations
 * (_core.pyx BucketReading; _pycore has the same arithmetic in Python).
 * The bucket's TAT lay ``ahead`` ticks ahead of the server's clock at a
 * reservation; ``elapsed_ns`` later, with ``held`` of the tokens leased
 * here still unspent, it lies this much ahead (never less than 0). 128-bit
 * intermediates: elapsed_ns * ticks_per_second passes 2^63 after seconds
 * at fine tick rates. A clock that went back and a negative count read as
 * 0, as in the twin. */
#ifndef GUARDIAN_SINCE_H
#define GUARDIAN_SINCE_H
#include <stdint.h>

/* The bucket's whole tokens left, floor((tau - lead) / P) as Python's //,
 * and its lead (reset_after = lead / ticks per second). */
static inline int g_bucket_read(int64_t ahead, int64_t held, int64_t P, int64_t tau, int64_t elapsed_ns,
                                int64_t ticks_per_second, int64_t *remaining, int64_t *lead) {
    if (held < 0) held = 0;
    if (elapsed_ns < 0) elapsed_ns = 0;
    __int128 a = (__int128)ahead - (__int128)held * P - ((__int128)elapsed_ns * ticks_per_second) / 1000000000;
    int64_t x = a < 0 ? 0 : (int64_t)a; /* a <= ahead here */
    int64_t y = tau - x, q = y / P;
    *remaining = (y % P != 0 && y < 0) ? q - 1 : q;
    *lead = x;
    return 0;
}
#endif
