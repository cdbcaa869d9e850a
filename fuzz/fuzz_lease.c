/* libFuzzer harness: the lease mirror's map (_dataplane/lease.c) against a
 * plain array. Each input byte pair is an operation on one of 4096 keys
 * (set, drop, get, a hit's lookup with its low-water notice, and now and
 * then clear), so runs of collisions, growth,
 * shrinking and backward-shift deletions all happen; every get and the
 * count must agree with the array. The hash seed is fixed per run, so an
 * input replays. Build and run: see fuzz/README.md. */
#include <stdlib.h>
#include <string.h>

#include "../src/guardian/_dataplane/lease.c"

#define KEYS 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int64_t want[KEYS];
    static uint8_t told[KEYS]; /* a low-water hit was told since the key's last set */
    static g_lease m;
    if (lease_init(&m, 3, 4) != 0) abort();
    memset(want, 0xff, sizeof want); /* -1: absent */
    uint32_t live = 0;
    for (size_t i = 0; i + 1 < size; i += 2) {
        uint32_t k = ((uint32_t)data[i] << 8 | data[i + 1]) % KEYS;
        int op = data[i] >> 6;
        char key[8];
        size_t n = (size_t)(k % 5) + 2; /* keys of several lengths */
        memset(key, 'a', sizeof key);
        key[0] = (char)(k >> 6);
        key[1] = (char)(k & 63);
        int64_t ahead, at;
        switch (op) {
        case 0:
        case 1:
            if (lease_set(&m, (const uint8_t *)key, n, (int64_t)i, (int64_t)k, 2) != 0) abort();
            live += want[k] < 0;
            want[k] = (int64_t)i;
            told[k] = 0;
            break;
        case 2:
            lease_drop(&m, (const uint8_t *)key, n);
            live -= want[k] >= 0;
            want[k] = -1;
            break;
        default:
            if (data[i + 1] == 0xff) {
                lease_clear(&m);
                memset(want, 0xff, sizeof want);
                live = 0;
            }
            break;
        }
        int tell = 0, left = data[i + 1] & 3;
        int found = op == 3 ? lease_hit(&m, (const uint8_t *)key, n, left, &ahead, &at, &tell)
                            : lease_get(&m, (const uint8_t *)key, n, &ahead, &at);
        if (op == 3) { /* told once per set, at or below the entry's low (2); without one, the book's (0) */
            int expect = want[k] >= 0 ? left <= 2 && !told[k] : left <= 0;
            if (tell != expect) abort();
            if (want[k] >= 0 && tell) told[k] = 1;
        }
        if (found != (want[k] >= 0) || (found && (ahead != want[k] || at != (int64_t)k))) abort();
        if (lease_count(&m) != live) abort();
    }
    lease_destroy(&m);
    return 0;
}
