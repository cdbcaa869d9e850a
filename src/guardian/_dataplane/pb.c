/* See pb.h. Every read is bounds-checked against the end of its message;
 * nothing here allocates on the decode path. */
#include "pb.h"

#include <stdlib.h>
#include <string.h>

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_I32 = 5 };
/* Nesting of unknown groups the protobuf library accepts (its recursion limit). */
#define MAX_GROUP_DEPTH 100

typedef struct {
    const uint8_t *p, *end;
} rd;

static int rd_varint(rd *r, uint64_t *v) {
    uint64_t x = 0;
    for (int i = 0; i < 10; i++) {
        if (r->p >= r->end) return -1;
        uint8_t b = *r->p++;
        x |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1; /* more than 10 bytes */
}

/* The tag: field number and wire type. Field 0 and wire types 6, 7 are malformed. */
static int rd_tag(rd *r, uint32_t *field, uint32_t *wire) {
    uint64_t t;
    if (rd_varint(r, &t) != 0) return -1;
    if (t > 0xffffffffu) return -1;
    *wire = (uint32_t)(t & 7);
    *field = (uint32_t)(t >> 3);
    if (*field == 0 || *wire > 5) return -1;
    return 0;
}

static int rd_len(rd *r, const uint8_t **start, uint32_t *n) {
    uint64_t len;
    if (rd_varint(r, &len) != 0) return -1;
    if (len > (uint64_t)(r->end - r->p)) return -1;
    *start = r->p;
    *n = (uint32_t)len;
    r->p += len;
    return 0;
}

static int skip_field(rd *r, uint32_t field, uint32_t wire, int depth);

/* After a start-group tag: skip to the matching end-group tag. */
static int skip_group(rd *r, uint32_t field, int depth) {
    if (depth > MAX_GROUP_DEPTH) return -1;
    for (;;) {
        uint32_t f, w;
        if (rd_tag(r, &f, &w) != 0) return -1;
        if (w == WT_EGROUP) return f == field ? 0 : -1;
        if (skip_field(r, f, w, depth + 1) != 0) return -1;
    }
}

static int skip_field(rd *r, uint32_t field, uint32_t wire, int depth) {
    uint64_t v;
    const uint8_t *s;
    uint32_t n;
    switch (wire) {
    case WT_VARINT: return rd_varint(r, &v);
    case WT_I64:
        if (r->end - r->p < 8) return -1;
        r->p += 8;
        return 0;
    case WT_I32:
        if (r->end - r->p < 4) return -1;
        r->p += 4;
        return 0;
    case WT_LEN: return rd_len(r, &s, &n);
    case WT_SGROUP: return skip_group(r, field, depth);
    default: return -1; /* an end-group with no start */
    }
}

int utf8_valid(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
        else return 0;
        if (n - i < len) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff))) return 0;
        if (cp >= 0xd800 && cp <= 0xdfff) return 0;
        i += len;
    }
    return 1;
}

static int rd_string(rd *r, g_str *s) {
    const uint8_t *p;
    uint32_t n;
    if (rd_len(r, &p, &n) != 0) return -1;
    if (!utf8_valid(p, n)) return -1;
    s->p = p;
    s->n = n;
    return 0;
}

/* Reads one field of a message: calls back for the known ones. A pattern
 * every decoder below follows: on (field, expected wire) decode, else skip. */
#define FOR_EACH_FIELD(r, field, wire)                                       \
    for (uint32_t field, wire; (r)->p < (r)->end;)                           \
        if (rd_tag((r), &field, &wire) != 0) return PB_MALFORMED; else

static int decode_check_into(rd *r, g_check_req *c) {
    FOR_EACH_FIELD(r, f, w) {
        if (f == 1 && w == WT_LEN) {
            if (rd_string(r, &c->key) != 0) return PB_MALFORMED;
        } else if (f == 2 && w == WT_VARINT) {
            if (rd_varint(r, &c->cost) != 0) return PB_MALFORMED;
        } else if (f == 3 && w == WT_LEN) {
            if (rd_string(r, &c->limit) != 0) return PB_MALFORMED;
        } else if (skip_field(r, f, w, 0) != 0) {
            return PB_MALFORMED;
        }
    }
    return PB_OK;
}

int pb_decode_check(const uint8_t *p, size_t n, g_check_req *out) {
    rd r = {p, p + n};
    memset(out, 0, sizeof *out);
    return decode_check_into(&r, out);
}

int pb_decode_checks(const uint8_t *p, size_t n, g_check_req *out, uint32_t max, uint32_t *count) {
    rd r = {p, p + n};
    uint32_t k = 0;
    int too_many = 0;
    FOR_EACH_FIELD(&r, f, w) {
        if (f == 1 && w == WT_LEN) {
            const uint8_t *s;
            uint32_t len;
            if (rd_len(&r, &s, &len) != 0) return PB_MALFORMED;
            g_check_req scratch;
            g_check_req *c = k < max ? &out[k] : &scratch;
            memset(c, 0, sizeof *c);
            rd sub = {s, s + len};
            int rc = decode_check_into(&sub, c);
            if (rc != PB_OK) return rc;
            if (k < max) k++;
            else too_many = 1; /* keep validating: malformed beats too many */
        } else if (skip_field(&r, f, w, 0) != 0) {
            return PB_MALFORMED;
        }
    }
    *count = k;
    return too_many ? PB_TOO_MANY : PB_OK;
}

static int decode_entry(rd *r, g_entry *e) {
    FOR_EACH_FIELD(r, f, w) {
        if (f == 1 && w == WT_LEN) {
            if (rd_string(r, &e->key) != 0) return PB_MALFORMED;
        } else if (f == 2 && w == WT_LEN) {
            if (rd_string(r, &e->value) != 0) return PB_MALFORMED;
        } else if (skip_field(r, f, w, 0) != 0) {
            return PB_MALFORMED;
        }
    }
    return PB_OK;
}

static int decode_override(rd *r, g_descriptor *d) {
    FOR_EACH_FIELD(r, f, w) {
        uint64_t v;
        if (f == 1 && w == WT_VARINT) {
            if (rd_varint(r, &v) != 0) return PB_MALFORMED;
            d->limit_rpu = (uint32_t)v;
        } else if (f == 2 && w == WT_VARINT) {
            if (rd_varint(r, &v) != 0) return PB_MALFORMED;
            d->limit_unit = (int32_t)(uint32_t)v;
        } else if (skip_field(r, f, w, 0) != 0) {
            return PB_MALFORMED;
        }
    }
    return PB_OK;
}

static int decode_uint64_value(rd *r, uint64_t *v) {
    FOR_EACH_FIELD(r, f, w) {
        if (f == 1 && w == WT_VARINT) {
            if (rd_varint(r, v) != 0) return PB_MALFORMED;
        } else if (skip_field(r, f, w, 0) != 0) {
            return PB_MALFORMED;
        }
    }
    return PB_OK;
}

static int decode_descriptor(rd *r, g_rls_req *q, g_descriptor *d) {
    FOR_EACH_FIELD(r, f, w) {
        const uint8_t *s;
        uint32_t len;
        if (w == WT_LEN && (f == 1 || f == 2 || f == 3)) {
            if (rd_len(r, &s, &len) != 0) return PB_MALFORMED;
            rd sub = {s, s + len};
            int rc;
            if (f == 1) {
                g_entry scratch = {{0, 0}, {0, 0}};
                g_entry *e = q->nentries < q->max_entries ? &q->entries[q->nentries] : &scratch;
                memset(e, 0, sizeof *e);
                rc = decode_entry(&sub, e);
                if (rc == PB_OK) {
                    if (q->nentries >= q->max_entries) return PB_TOO_MANY;
                    if (d->first + d->count != q->nentries) return PB_MALFORMED; /* cannot happen */
                    q->nentries++;
                    d->count++;
                }
            } else if (f == 2) {
                d->has_limit = 1; /* merged, like the library merges a repeated singular message */
                rc = decode_override(&sub, d);
            } else {
                d->has_hits = 1;
                rc = decode_uint64_value(&sub, &d->hits);
            }
            if (rc != PB_OK) return rc;
        } else if (skip_field(r, f, w, 0) != 0) {
            return PB_MALFORMED;
        }
    }
    return PB_OK;
}

int pb_decode_rls(const uint8_t *p, size_t n, g_rls_req *q) {
    rd r = {p, p + n};
    q->domain.p = NULL;
    q->domain.n = 0;
    q->hits_addend = 0;
    q->ndescs = q->nentries = 0;
    int too_many = 0;
    FOR_EACH_FIELD(&r, f, w) {
        uint64_t v;
        if (f == 1 && w == WT_LEN) {
            if (rd_string(&r, &q->domain) != 0) return PB_MALFORMED;
        } else if (f == 2 && w == WT_LEN) {
            const uint8_t *s;
            uint32_t len;
            if (rd_len(&r, &s, &len) != 0) return PB_MALFORMED;
            if (too_many || q->ndescs >= q->max_descs) {
                too_many = 1; /* still validate the rest */
                continue;
            }
            g_descriptor *d = &q->descs[q->ndescs];
            memset(d, 0, sizeof *d);
            d->first = q->nentries;
            rd sub = {s, s + len};
            int rc = decode_descriptor(&sub, q, d);
            if (rc == PB_TOO_MANY) {
                too_many = 1;
                continue;
            }
            if (rc != PB_OK) return rc;
            q->ndescs++;
        } else if (f == 3 && w == WT_VARINT) {
            if (rd_varint(&r, &v) != 0) return PB_MALFORMED;
            q->hits_addend = (uint32_t)v;
        } else if (skip_field(&r, f, w, 0) != 0) {
            return PB_MALFORMED;
        }
    }
    return too_many ? PB_TOO_MANY : PB_OK;
}

int pb_decode_health(const uint8_t *p, size_t n, g_str *service) {
    rd r = {p, p + n};
    service->p = NULL;
    service->n = 0;
    FOR_EACH_FIELD(&r, f, w) {
        if (f == 1 && w == WT_LEN) {
            if (rd_string(&r, service) != 0) return PB_MALFORMED;
        } else if (skip_field(&r, f, w, 0) != 0) {
            return PB_MALFORMED;
        }
    }
    return PB_OK;
}

/* --- encoding ------------------------------------------------------------- */

void buf_init(g_buf *b) {
    b->p = NULL;
    b->n = b->cap = 0;
    b->failed = 0;
}

void buf_free(g_buf *b) {
    free(b->p);
    buf_init(b);
}

int buf_reserve(g_buf *b, size_t extra) {
    if (b->failed) return -1;
    if (b->cap - b->n >= extra) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->n < extra) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) {
        b->failed = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void buf_bytes(g_buf *b, const void *p, size_t n) {
    if (n == 0 || buf_reserve(b, n) != 0) return;
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

void pb_varint(g_buf *b, uint64_t v) {
    if (buf_reserve(b, 10) != 0) return;
    while (v >= 0x80) {
        b->p[b->n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    b->p[b->n++] = (uint8_t)v;
}

void pb_tag(g_buf *b, uint32_t field, uint32_t wire) { pb_varint(b, ((uint64_t)field << 3) | wire); }

void pb_uint(g_buf *b, uint32_t field, uint64_t v) {
    if (v == 0) return;
    pb_tag(b, field, WT_VARINT);
    pb_varint(b, v);
}

void pb_double(g_buf *b, uint32_t field, double v) {
    uint64_t bits;
    memcpy(&bits, &v, 8);
    if (bits == 0) return; /* proto3 omits +0.0 only; -0.0 is written */
    pb_tag(b, field, WT_I64);
    if (buf_reserve(b, 8) != 0) return;
    for (int i = 0; i < 8; i++) b->p[b->n++] = (uint8_t)(bits >> (8 * i));
}

void pb_string(g_buf *b, uint32_t field, const void *p, size_t n) {
    if (n == 0) return;
    pb_tag(b, field, WT_LEN);
    pb_varint(b, n);
    buf_bytes(b, p, n);
}

/* A 5-byte length slot (a padded varint, which decoders accept) keeps the
 * body in place: no second pass, no copy. Bodies here stay far below 2^35. */
size_t pb_begin(g_buf *b, uint32_t field) {
    pb_tag(b, field, WT_LEN);
    if (buf_reserve(b, 5) != 0) return 0;
    size_t mark = b->n;
    b->n += 5;
    return mark;
}

void pb_end(g_buf *b, size_t mark) {
    if (b->failed) return;
    size_t len = b->n - mark - 5;
    for (int i = 0; i < 5; i++) {
        uint8_t byte = (uint8_t)((len >> (7 * i)) & 0x7f);
        b->p[mark + i] = i < 4 ? (uint8_t)(byte | 0x80) : byte;
    }
}

void pb_check_result(g_buf *b, int allowed, uint64_t remaining, double retry_after,
                     double reset_after, uint64_t limit) {
    pb_uint(b, 1, allowed ? 1 : 0);
    pb_uint(b, 2, remaining);
    pb_double(b, 3, retry_after);
    pb_double(b, 4, reset_after);
    pb_uint(b, 5, limit);
}
