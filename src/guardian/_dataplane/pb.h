/* Protobuf wire format for the data plane's messages, written against
 * proto/guardian/v1/guardian.proto, Envoy's rls.proto (ratelimit v3) and
 * grpc/health/v1/health.proto. Decoding follows the protobuf library's
 * rules (proto3): unknown fields of every wire type are skipped, a known
 * field with an unexpected wire type is treated as unknown, the last value
 * of a singular scalar wins, a singular message seen twice is merged,
 * strings must be valid UTF-8, varints are at most 10 bytes, 32-bit fields
 * keep the low 32 bits. Decoded strings point into the input buffer. */
#ifndef GUARDIAN_PB_H
#define GUARDIAN_PB_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const uint8_t *p;
    uint32_t n;
} g_str;

enum { PB_OK = 0, PB_MALFORMED = -1, PB_TOO_MANY = -2 };

/* guardian.v1.CheckLimitRequest */
typedef struct {
    g_str key, limit;
    uint64_t cost;
} g_check_req;

int pb_decode_check(const uint8_t *p, size_t n, g_check_req *out);
/* CheckLimitsRequest: at most max checks (PB_TOO_MANY beyond). */
int pb_decode_checks(const uint8_t *p, size_t n, g_check_req *out, uint32_t max, uint32_t *count);

/* envoy.service.ratelimit.v3.RateLimitRequest */
typedef struct {
    g_str key, value;
} g_entry;

typedef struct {
    uint32_t first, count; /* entries[first .. first+count) */
    int has_limit;
    uint32_t limit_rpu;
    int32_t limit_unit;
    int has_hits;
    uint64_t hits;
} g_descriptor;

typedef struct {
    g_str domain;
    uint32_t hits_addend;
    g_descriptor *descs;
    uint32_t ndescs, max_descs;
    g_entry *entries;
    uint32_t nentries, max_entries;
} g_rls_req;

/* descs/entries/max_* set by the caller; PB_TOO_MANY when they overflow. */
int pb_decode_rls(const uint8_t *p, size_t n, g_rls_req *out);

/* grpc.health.v1.HealthCheckRequest */
int pb_decode_health(const uint8_t *p, size_t n, g_str *service);

/* --- encoding: a growable buffer ------------------------------------------ */
typedef struct {
    uint8_t *p;
    size_t n, cap;
    int failed; /* allocation failed: the message is unusable */
} g_buf;

void buf_init(g_buf *b);
void buf_free(g_buf *b);
int buf_reserve(g_buf *b, size_t extra);
void buf_bytes(g_buf *b, const void *p, size_t n);
void pb_varint(g_buf *b, uint64_t v);
void pb_tag(g_buf *b, uint32_t field, uint32_t wire);
void pb_uint(g_buf *b, uint32_t field, uint64_t v);       /* omitted when 0 */
void pb_double(g_buf *b, uint32_t field, double v);       /* omitted when +0.0 */
void pb_string(g_buf *b, uint32_t field, const void *p, size_t n); /* omitted when empty */
/* A length-delimited field whose body is written after: returns a mark for pb_end. */
size_t pb_begin(g_buf *b, uint32_t field);
void pb_end(g_buf *b, size_t mark);

/* guardian.v1.CheckLimitResponse body fields (no outer tag) */
void pb_check_result(g_buf *b, int allowed, uint64_t remaining, double retry_after,
                     double reset_after, uint64_t limit);

int utf8_valid(const uint8_t *p, size_t n);
#endif
