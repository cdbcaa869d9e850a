/* libFuzzer harness: the data plane's protobuf decoders on arbitrary bytes.
 * Build and run: see fuzz/README.md. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/guardian/_dataplane/pb.h"

static g_check_req checks[64];
static g_descriptor descs[64];
static g_entry entries[64];

static void touch(g_str s) {
    /* read every byte a decoded string points at (ASan checks the bounds) */
    volatile uint8_t x = 0;
    for (uint32_t i = 0; i < s.n; i++) x ^= s.p[i];
    (void)x;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* decode from a copy of exactly size bytes, so a read past the end is caught */
    uint8_t *p = malloc(size ? size : 1);
    if (!p) return 0;
    memcpy(p, data, size);
    g_check_req c;
    if (pb_decode_check(p, size, &c) == PB_OK) {
        touch(c.key);
        touch(c.limit);
    }
    uint32_t n = 0;
    if (pb_decode_checks(p, size, checks, 64, &n) == PB_OK)
        for (uint32_t i = 0; i < n; i++) touch(checks[i].key);
    g_rls_req q = {.descs = descs, .max_descs = 64, .entries = entries, .max_entries = 64};
    if (pb_decode_rls(p, size, &q) == PB_OK) {
        touch(q.domain);
        for (uint32_t i = 0; i < q.ndescs; i++)
            for (uint32_t k = 0; k < q.descs[i].count; k++) {
                touch(q.entries[q.descs[i].first + k].key);
                touch(q.entries[q.descs[i].first + k].value);
            }
    }
    g_str s;
    if (pb_decode_health(p, size, &s) == PB_OK) touch(s);
    free(p);
    return 0;
}
