/* libFuzzer harness: policy.c's glob_match (a descriptor value against a
 * wildcard pattern, '*' any run of bytes) against an independent reference
 * matcher written here; any difference aborts. The input is
 * pattern 0x00 value (no 0x00: all of it is the pattern, the value empty;
 * further 0x00 bytes belong to the value). Each side is copied into a
 * buffer of exactly its size, so a read past either end is caught, and an
 * empty value is passed as NULL, as the decoder leaves an absent one.
 * Build and run: see fuzz/README.md. */
#include "../src/guardian/_dataplane/pb.c"
#include "../src/guardian/_dataplane/policy.c"
#include "../src/guardian/_dataplane/lease.c"

/* The reference: does p[i..] match v[j..]? Plain recursion on the first
 * pattern byte ('*': empty, or one value byte and the same '*' again),
 * with a table of (i, j) already known not to match so it stays
 * polynomial. */
typedef struct {
    const uint8_t *p, *v;
    size_t pn, vn;
    uint8_t *failed; /* (pn + 1) x (vn + 1) */
} ref;

static int ref_match(ref *r, size_t i, size_t j) {
    uint8_t *f = &r->failed[i * (r->vn + 1) + j];
    if (*f) return 0;
    int ok;
    if (i == r->pn)
        ok = j == r->vn;
    else if (r->p[i] == '*')
        ok = ref_match(r, i + 1, j) || (j < r->vn && ref_match(r, i, j + 1));
    else
        ok = j < r->vn && r->p[i] == r->v[j] && ref_match(r, i + 1, j + 1);
    if (!ok) *f = 1;
    return ok;
}

#define MAX_SIDE 1024 /* the reference's table and recursion stay small */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *sep = memchr(data, 0, size);
    size_t pn = sep ? (size_t)(sep - data) : size;
    size_t vn = sep ? size - pn - 1 : 0;
    if (pn > MAX_SIDE || vn > MAX_SIDE) return 0;
    char *pat = malloc(pn ? pn : 1);
    uint8_t *val = vn ? malloc(vn) : NULL;
    if (!pat || (vn && !val)) abort();
    memcpy(pat, data, pn);
    if (vn) memcpy(val, sep + 1, vn);
    ref r = {(const uint8_t *)pat, val, pn, vn, calloc((pn + 1) * (vn + 1), 1)};
    if (!r.failed) abort();
    int want = ref_match(&r, 0, 0);
    int got = glob_match(pat, (uint32_t)pn, val, (uint32_t)vn);
    if (got != want) {
        fprintf(stderr, "glob_match(%.*s, %.*s) = %d, reference %d\n", (int)pn, pat, (int)vn, (const char *)val,
                got, want);
        abort();
    }
    free(r.failed);
    free(pat);
    free(val);
    return 0;
}
