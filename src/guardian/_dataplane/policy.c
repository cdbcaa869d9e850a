/* See policy.h. The GCRA decision itself is the core's (g_core_api.take
 * and .usage; a lease's spend and the reading of its Redis bucket); this
 * file only routes a request to a table and encodes what the table
 * answered, the way service_v1.py and service_rls.py do. */
#include "policy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lease.h"

#define MAX_KEY_BYTES 4096
#define SEP '\x1f'
#define UNLIMITED_REMAINING 0xffffffffu
enum { CODE_OK = 1, CODE_OVER_LIMIT = 2 };

/* --- indexes -------------------------------------------------------------- */

#define INDEX_MIN 8 /* shorter lists are scanned */

static uint64_t hash2(const void *a, size_t an, const void *b, size_t bn) {
    /* FNV-1a over a, a separator, b: the keys are the operator's policy;
     * a request only chooses where a probe starts. */
    uint64_t h = 1469598103934665603ULL;
    const uint8_t *x = a;
    for (size_t i = 0; i < an; i++) h = (h ^ x[i]) * 1099511628211ULL;
    h = (h ^ 0x1f) * 1099511628211ULL;
    x = b;
    for (size_t i = 0; i < bn; i++) h = (h ^ x[i]) * 1099511628211ULL;
    return h ^ (h >> 29);
}

typedef void (*item_fn)(const void *items, uint32_t i, g_str *a, g_str *b);

static int index_build(g_index *ix, const void *items, uint32_t n, item_fn item) {
    ix->slot = NULL;
    ix->mask = 0;
    if (n <= INDEX_MIN) return 0;
    uint32_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    ix->slot = calloc(cap, sizeof *ix->slot);
    if (!ix->slot) return -1;
    ix->mask = cap - 1;
    for (uint32_t i = 0; i < n; i++) {
        g_str a, b;
        item(items, i, &a, &b);
        uint32_t k = (uint32_t)hash2(a.p, a.n, b.p, b.n) & ix->mask;
        while (ix->slot[k]) k = (k + 1) & ix->mask;
        ix->slot[k] = i + 1;
    }
    return 0;
}

static void edge_item(const void *items, uint32_t i, g_str *a, g_str *b) {
    const g_edge *e = &((const g_edge *)items)[i];
    a->p = (const uint8_t *)e->key;
    a->n = e->key_len;
    b->p = (const uint8_t *)e->value;
    b->n = e->value_len;
}

static void limit_item(const void *items, uint32_t i, g_str *a, g_str *b) {
    const g_limit *l = &((const g_limit *)items)[i];
    a->p = (const uint8_t *)l->name;
    a->n = l->name_len;
    b->p = NULL;
    b->n = 0;
}

static void domain_item(const void *items, uint32_t i, g_str *a, g_str *b) {
    const g_domain *d = &((const g_domain *)items)[i];
    a->p = (const uint8_t *)d->name;
    a->n = d->name_len;
    b->p = NULL;
    b->n = 0;
}

int policy_index(g_policy *p) {
    if (index_build(&p->limits_ix, p->limits, p->nlimits, limit_item) != 0) return -1;
    if (index_build(&p->domains_ix, p->domains, p->ndomains, domain_item) != 0) return -1;
    for (uint32_t i = 0; i < p->nnodes; i++)
        if (index_build(&p->nodes[i].exact_ix, p->nodes[i].exact, p->nodes[i].nexact, edge_item) != 0) return -1;
    return 0;
}

static int str_eq(g_str x, g_str y) { return x.n == y.n && (x.n == 0 || memcmp(x.p, y.p, x.n) == 0); }

/* The item whose (a, b) equals the given pair: its index, or -1. */
static int64_t index_find(const g_index *ix, const void *items, uint32_t n, item_fn item, g_str a, g_str b) {
    if (!ix->slot) {
        for (uint32_t i = 0; i < n; i++) {
            g_str x, y;
            item(items, i, &x, &y);
            if (str_eq(x, a) && str_eq(y, b)) return i;
        }
        return -1;
    }
    uint32_t k = (uint32_t)hash2(a.p, a.n, b.p, b.n) & ix->mask;
    for (; ix->slot[k]; k = (k + 1) & ix->mask) {
        g_str x, y;
        item(items, ix->slot[k] - 1, &x, &y);
        if (str_eq(x, a) && str_eq(y, b)) return ix->slot[k] - 1;
    }
    return -1;
}

void policy_free(g_policy *p) {
    if (!p) return;
    free(p->limits_ix.slot);
    free(p->domains_ix.slot);
    for (uint32_t i = 0; i < p->nlimits; i++) free(p->limits[i].name);
    for (uint32_t i = 0; i < p->nrules; i++) {
        g_rule *r = &p->rules[i];
        free(r->name);
        for (uint32_t k = 0; k < r->nreplaces; k++) free(r->replaces[k]);
        free(r->replaces);
        free(r->replaces_len);
    }
    for (uint32_t i = 0; i < p->nnodes; i++) {
        g_node *n = &p->nodes[i];
        free(n->exact_ix.slot);
        g_edge *lists[3] = {n->exact, n->wild, n->any};
        uint32_t counts[3] = {n->nexact, n->nwild, n->nany};
        for (int l = 0; l < 3; l++) {
            for (uint32_t k = 0; k < counts[l]; k++) {
                free(lists[l][k].key);
                free(lists[l][k].value);
            }
            free(lists[l]);
        }
    }
    for (uint32_t i = 0; i < p->ndomains; i++) free(p->domains[i].name);
    free(p->tables);
    free(p->limits);
    free(p->rules);
    free(p->nodes);
    free(p->domains);
    free(p);
}

static int eq(const char *a, uint32_t an, const uint8_t *b, uint32_t bn) {
    return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

static void count(uint64_t *c) { __atomic_fetch_add(c, 1, __ATOMIC_RELAXED); }

/* --- a take from a memory table or a lease ---------------------------- */

static int64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic_ns(), the book's clock */
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* AsyncBatchedRedisBackend.take on a hit, behind AsyncRateLimiter's gate:
 * the tokens from the lease, and the bucket as the book last saw it from
 * Redis, moved on by the time since (LeaseBook.bucket). A hit that leaves
 * the lease at or below its low water is told to Python (once per
 * reservation), which starts the refill (refill_if_low) as its own hit
 * would. -1 (nothing taken) for
 * everything else: the breaker counts failures, a miss, a bad key, a
 * mirror that could not copy a reservation. */
static int lease_take(const g_policy *p, const g_table_ref *t, const uint8_t *key, size_t n, int64_t cost,
                      g_decision *d) {
    g_lease *m = t->lease;
    if (__atomic_load_n(&m->failing, __ATOMIC_ACQUIRE) || __atomic_load_n(&m->broken, __ATOMIC_ACQUIRE)) return -1;
    int64_t left, ahead, at;
    int tell;
    memset(d, 0, sizeof *d);
    if (p->api->spend(t->table, key, n, cost, &left, d) != 0 || left < 0) return -1;
    d->allowed = 1;
    d->remaining = left; /* no reservation of this process: the lease's own numbers */
    if (lease_hit(m, key, n, left, &ahead, &at, &tell))
        p->api->read(ahead, left, t->P, t->tau, monotonic_ns() - at, t->tps, &d->remaining, &d->reset_ticks);
    if (tell) lease_low_hit(m, key, n, left);
    return 0;
}

/* One take of cost: 0 with *d, or nonzero when Python must answer (nothing
 * taken, nothing counted). */
static int ref_take(const g_policy *p, const g_table_ref *t, const uint8_t *key, size_t n, int64_t cost,
                    g_decision *d) {
    if (t->lease) return lease_take(p, t, key, n, cost, d);
    return p->api->take(t->table, key, n, cost, d);
}

/* Takes back what ref_take took (the request goes to Python, which takes
 * again). A lease's tokens come back only when its slot is as the spend
 * left it; else they are dropped: fewer admitted, never more. */
static void ref_undo(const g_policy *p, const g_table_ref *t, const uint8_t *key, size_t n, int64_t cost,
                     g_decision *d) {
    if (t->lease)
        p->api->unspend(t->table, key, n, d);
    else
        p->api->undo(t->table, key, n, cost, d);
}

/* --- guardian.v1 ------------------------------------------------------- */

static const g_limit *find_limit(const g_policy *p, g_str name) {
    static const uint8_t dflt[] = "default";
    if (name.n == 0) {
        name.p = dflt;
        name.n = 7;
    }
    g_str none = {NULL, 0};
    int64_t i = index_find(&p->limits_ix, p->limits, p->nlimits, limit_item, name, none);
    return i < 0 ? NULL : &p->limits[i];
}

/* The table and cost of one check, or NULL when Python must answer it
 * (unknown limit, bad key or cost: Python has the error messages). */
static const g_table_ref *route_check(const g_policy *p, const g_check_req *c, int64_t *cost, g_limit **limit) {
    g_limit *l = (g_limit *)find_limit(p, c->limit);
    *limit = l;
    if (!l || l->table < 0) return NULL;
    const g_table_ref *t = &p->tables[l->table];
    if (c->key.n == 0 || c->key.n > MAX_KEY_BYTES) return NULL;
    uint64_t want = c->cost ? c->cost : 1;
    if (want > (uint64_t)t->capacity) return NULL;
    *cost = (int64_t)want;
    return t;
}

/* A lease hit, counted as service_v1 counts a check of a Redis-backed
 * limit (a memory table's core counts its own takes). */
static void count_lease_hit(g_policy *p, g_limit *l) {
    count(&l->lease_hits);
    count(&p->counts.remote);
}

static int take_one(g_policy *p, const g_table_ref *t, g_limit *l, const g_check_req *c, int64_t cost,
                    g_buf *out) {
    g_decision d;
    if (ref_take(p, t, c->key.p, c->key.n, cost, &d) != 0) return G_HANDOFF;
    if (t->lease) count_lease_hit(p, l);
    pb_check_result(out, d.allowed, (uint64_t)d.remaining, (double)d.retry_ticks / t->scale,
                    (double)d.reset_ticks / t->scale, (uint64_t)t->capacity);
    return G_DONE;
}

int policy_check(g_policy *p, const g_check_req *req, g_buf *out) {
    int64_t cost;
    g_limit *l;
    if (p->python_all) return G_HANDOFF;
    const g_table_ref *t = route_check(p, req, &cost, &l);
    if (!t) return G_HANDOFF;
    int rc = take_one(p, t, l, req, cost, out);
    return out->failed ? G_NOMEM : rc;
}

int policy_checks(g_policy *p, const g_check_req *reqs, uint32_t n, g_buf *out) {
    if (p->python_all || n > p->max_checks) return G_HANDOFF;
    /* every check is validated before any token is taken, as in Python */
    for (uint32_t i = 0; i < n; i++) {
        int64_t cost;
        g_limit *l;
        if (!route_check(p, &reqs[i], &cost, &l)) return G_HANDOFF;
    }
    /* on the heap: a thread's stack is 128 KiB on musl, and conn_read's
     * buffer already holds half of it */
    g_decision *dec = malloc((n ? n : 1) * sizeof *dec);
    if (!dec) return G_NOMEM;
    for (uint32_t i = 0; i < n; i++) {
        int64_t cost;
        g_limit *l;
        const g_table_ref *t = route_check(p, &reqs[i], &cost, &l);
        size_t mark = pb_begin(out, 1);
        /* The core refuses only past its tick horizon (decades) or on a
         * stripe lock a stopped process holds; a lease, on a miss or while
         * its breaker counts failures (see lease_take). Python then answers the whole
         * call and takes every check again: the checks taken here before
         * this one are taken back first, so none counts twice. */
        if (ref_take(p, t, reqs[i].key.p, reqs[i].key.n, cost, &dec[i]) != 0) {
            for (uint32_t j = 0; j < i; j++) {
                int64_t c;
                const g_table_ref *u = route_check(p, &reqs[j], &c, &l);
                ref_undo(p, u, reqs[j].key.p, reqs[j].key.n, c, &dec[j]);
            }
            free(dec);
            return G_HANDOFF;
        }
        const g_decision *d = &dec[i];
        pb_check_result(out, d->allowed, (uint64_t)d->remaining, (double)d->retry_ticks / t->scale,
                        (double)d->reset_ticks / t->scale, (uint64_t)t->capacity);
        pb_end(out, mark);
    }
    free(dec);
    for (uint32_t i = 0; i < n; i++) { /* every check decided: count the lease hits */
        int64_t c;
        g_limit *l;
        if (route_check(p, &reqs[i], &c, &l)->lease) count_lease_hit(p, l);
    }
    return out->failed ? G_NOMEM : G_DONE;
}

/* --- Envoy RLS v3 ------------------------------------------------------- */

/* policy.glob_match: each '*' of the pattern matches any run of bytes (on
 * UTF-8 text the same runs as Python's characters: a needle that is valid
 * UTF-8 can only be found at a character boundary). The parts are the
 * pattern split on '*'; the first must begin the value, the last end it,
 * and the others follow in order, each at its leftmost place. */
static int glob_match(const char *pat, uint32_t pn, const uint8_t *v, uint32_t vn) {
    const char *star = memchr(pat, '*', pn);
    if (!star) return pn == vn && (pn == 0 || memcmp(pat, v, pn) == 0);
    uint32_t fixed = 0; /* the bytes of the parts, together */
    for (uint32_t i = 0; i < pn; i++) fixed += pat[i] != '*';
    if (vn < fixed) return 0;
    uint32_t first = (uint32_t)(star - pat);
    const char *last_star = pat + pn;
    while (last_star[-1] != '*') last_star--;
    uint32_t last = (uint32_t)(pat + pn - last_star);
    /* an empty value is (NULL, 0) when the entry has none: no memcmp on it */
    if ((first && memcmp(pat, v, first) != 0) || (last && memcmp(last_star, v + vn - last, last) != 0)) return 0;
    uint32_t pos = first, end = vn - last;
    const char *part = star + 1;
    while (part < last_star) { /* the middle parts, between the first '*' and the last */
        const char *next = memchr(part, '*', (size_t)(last_star - part));
        uint32_t len = (uint32_t)(next - part);
        if (len) {
            const uint8_t *at = NULL;
            for (uint32_t i = pos; i + len <= end; i++) {
                if (v[i] == (uint8_t)part[0] && memcmp(v + i, part, len) == 0) {
                    at = v + i;
                    break;
                }
            }
            if (!at) return 0;
            pos = (uint32_t)(at - v) + len;
        }
        part = next + 1;
    }
    return 1;
}

static const g_edge *find_wild(const g_edge *edges, uint32_t n, const g_entry *e) {
    for (uint32_t i = 0; i < n; i++) {
        const g_edge *x = &edges[i];
        if (eq(x->key, x->key_len, e->key.p, e->key.n) && glob_match(x->value, x->value_len, e->value.p, e->value.n))
            return x;
    }
    return NULL;
}

static const g_edge *find_key(const g_edge *edges, uint32_t n, const g_entry *e) {
    for (uint32_t i = 0; i < n; i++)
        if (eq(edges[i].key, edges[i].key_len, e->key.p, e->key.n)) return &edges[i];
    return NULL;
}

/* Domain.find: every entry matches one level (exact, then the first
 * wildcard in file order, then key only); the rule is the last level's.
 * ``via``, when given, receives the edge each entry took. */
static int match(const g_policy *p, int root, const g_entry *entries, uint32_t n, const g_edge **via) {
    const g_node *node = &p->nodes[root];
    for (uint32_t i = 0; i < n; i++) {
        int64_t ex = index_find(&node->exact_ix, node->exact, node->nexact, edge_item, entries[i].key, entries[i].value);
        const g_edge *x = ex < 0 ? NULL : &node->exact[ex];
        if (!x) x = find_wild(node->wild, node->nwild, &entries[i]);
        if (!x) x = find_key(node->any, node->nany, &entries[i]);
        if (!x) return -1;
        if (via) via[i] = x;
        const g_node *next = &p->nodes[x->node];
        if (i == n - 1) return next->rule;
        if (!next->nexact && !next->nwild && !next->nany) return -1;
        node = next;
    }
    return -1;
}

#define MAX_SHARED_DEPTH 64 /* deeper descriptors of a shared rule: Python */

/* The bucket key's length: domain, then each entry's key and value (a
 * shared wildcard's pattern for its value), each after a separator. */
static size_t key_len(const g_rls_req *q, const g_descriptor *d, const g_edge *const *via) {
    size_t n = q->domain.n;
    for (uint32_t j = 0; j < d->count; j++) {
        const g_entry *e = &q->entries[d->first + j];
        n += 2 + e->key.n + (via && via[j]->share ? via[j]->value_len : e->value.n);
    }
    return n;
}

/* The bucket key (key_len bytes, at most MAX_KEY_BYTES: checked before). */
static void build_key(const g_rls_req *q, const g_descriptor *d, const g_edge *const *via, char *key) {
    char *w = key;
    memcpy(w, q->domain.p, q->domain.n);
    w += q->domain.n;
    for (uint32_t j = 0; j < d->count; j++) {
        const g_entry *e = &q->entries[d->first + j];
        *w++ = SEP;
        if (e->key.n) memcpy(w, e->key.p, e->key.n);
        w += e->key.n;
        *w++ = SEP;
        if (via && via[j]->share) {
            memcpy(w, via[j]->value, via[j]->value_len);
            w += via[j]->value_len;
        } else {
            if (e->value.n) memcpy(w, e->value.p, e->value.n);
            w += e->value.n;
        }
    }
}

/* The descriptor's bucket key length, or 0 when Python must key it (longer
 * than MAX_KEY_BYTES: Python uses its sha256; a shared rule's path deeper
 * than MAX_SHARED_DEPTH). A shared rule's path is walked again for its
 * patterns: *v then points at via, else it is NULL. */
static size_t key_size(const g_policy *p, const g_rls_req *q, const g_descriptor *d, const g_domain *dom,
                       const g_rule *r, const g_edge **via, const g_edge *const **v) {
    *v = NULL;
    if (r->shared) {
        if (d->count > MAX_SHARED_DEPTH) return 0;
        match(p, dom->root, &q->entries[d->first], d->count, via);
        *v = via;
    }
    size_t n = key_len(q, d, *v);
    return n <= MAX_KEY_BYTES ? n : 0;
}

/* _replaced: a rule is dropped when any matched rule of the request
 * (an unlimited one too, as in ratelimit) names it in its replaces. */
static int replaced(const g_policy *p, const int *rules, uint32_t n, const g_rule *r) {
    if (r->name_len == 0) return 0;
    for (uint32_t i = 0; i < n; i++) {
        if (rules[i] < 0) continue;
        const g_rule *o = &p->rules[rules[i]];
        for (uint32_t k = 0; k < o->nreplaces; k++)
            if (eq(o->replaces[k], o->replaces_len[k], (const uint8_t *)r->name, r->name_len)) return 1;
    }
    return 0;
}

/* Duration.FromNanoseconds(int(reset * 1e9)); reset >= 0 here */
static int64_t reset_ns(double reset) { return (int64_t)(reset * 1e9); }

static void put_status(g_buf *out, int code, const g_rule *r, uint32_t remaining, double reset) {
    size_t st = pb_begin(out, 2);
    pb_uint(out, 1, (uint64_t)code);
    if (r) {
        size_t cl = pb_begin(out, 2);
        pb_uint(out, 1, r->rpu);
        pb_uint(out, 2, (uint64_t)(uint32_t)r->unit);
        pb_string(out, 3, r->name, r->name_len);
        pb_end(out, cl);
    }
    pb_uint(out, 3, remaining);
    if (r) {
        int64_t ns = reset_ns(reset);
        size_t du = pb_begin(out, 4);
        pb_uint(out, 1, (uint64_t)(ns / 1000000000));
        pb_uint(out, 2, (uint64_t)(ns % 1000000000));
        pb_end(out, du);
    }
    pb_end(out, st);
}

static void put_header(g_buf *out, const char *key, const char *value) {
    size_t h = pb_begin(out, 3);
    pb_string(out, 1, key, strlen(key));
    pb_string(out, 2, value, strlen(value));
    pb_end(out, h);
}

/* The descriptor's bucket key into key (MAX_KEY_BYTES): its length, or 0
 * when it does not fit (checked before any take: cannot happen). */
static size_t descriptor_key(const g_policy *p, const g_rls_req *q, const g_descriptor *d, const g_domain *dom,
                             const g_rule *r, char *key) {
    const g_edge *via[MAX_SHARED_DEPTH];
    const g_edge *const *v;
    size_t n = key_size(p, q, d, dom, r, via, &v);
    if (n) build_key(q, d, v, key);
    return n;
}

#define MAX_DESCRIPTORS 64

/* What C decided for one descriptor. Counted only once every descriptor is
 * decided: a request handed to Python part way is counted there, once. */
enum { K_NONE, K_UNLIMITED, K_ALLOWED, K_DENIED, K_SHADOW_DENIED };

typedef struct {
    int code;
    const g_rule *rule; /* NULL: no rule applied (none matched, replaced, unlimited) */
    uint32_t remaining;
    double reset;
    int kind;
    int local;          /* read or taken from a memory table */
    int remote;         /* taken from a lease (Python counts a batched check as remote) */
    int taken;          /* a take, undone if a later descriptor goes to Python */
    uint64_t hits;
    g_decision dec;
} g_outcome;

/* One descriptor's bucket answer: 0, or -1 when Python must decide it. */
static int decide(g_policy *p, const g_rls_req *q, const g_descriptor *d, const g_domain *dom, g_rule *r,
                  uint64_t hits, int *over, int64_t *remaining, double *reset, g_outcome *o) {
    if (r->table < 0) { /* requests_per_unit: 0 blocks */
        *over = 1;
        *remaining = 0;
        *reset = (double)r->window;
        return 0;
    }
    const g_table_ref *t = &p->tables[r->table];
    char key[MAX_KEY_BYTES];
    size_t klen = descriptor_key(p, q, d, dom, r, key);
    if (!klen) return -1;
    g_decision *dec = &o->dec;
    if (hits == 0 || hits > (uint64_t)t->capacity) {
        /* 0 reads without taking; more than the capacity can never be
         * allowed. A lease's bucket is read from Redis: Python's. */
        if (t->lease || p->api->peek(t->table, (const uint8_t *)key, klen, dec) != 0) return -1;
        *over = hits != 0;
    } else {
        if (ref_take(p, t, (const uint8_t *)key, klen, (int64_t)hits, dec) != 0) return -1;
        o->taken = 1;
        o->hits = hits;
        *over = !dec->allowed;
    }
    *remaining = dec->remaining;
    *reset = (double)dec->reset_ticks / t->scale;
    o->local = !t->lease;
    o->remote = t->lease != NULL;
    return 0;
}

/* Takes back the takes of the first n descriptors (a later one goes to
 * Python, which decides them all again). */
static void undo_takes(g_policy *p, const g_rls_req *q, const g_domain *dom, const int *rules,
                       g_outcome *o, uint32_t n) {
    char key[MAX_KEY_BYTES];
    for (uint32_t i = 0; i < n; i++) {
        if (!o[i].taken) continue;
        const g_rule *r = &p->rules[rules[i]];
        size_t klen = descriptor_key(p, q, &q->descs[i], dom, r, key);
        ref_undo(p, &p->tables[r->table], (const uint8_t *)key, klen, (int64_t)o[i].hits, &o[i].dec);
    }
}

/* _overall: OVER_LIMIT when a rule (not in quota mode) is over its limit,
 * or when every quota-mode rule is. */
static int overall_code(const g_policy *p, const g_outcome *o, uint32_t n) {
    uint32_t quota = 0, quota_over = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (!o[i].rule) continue;
        if (o[i].rule->quota || p->quota_mode) {
            quota++;
            quota_over += o[i].code == CODE_OVER_LIMIT;
        } else if (o[i].code == CODE_OVER_LIMIT) {
            return CODE_OVER_LIMIT;
        }
    }
    return quota && quota == quota_over ? CODE_OVER_LIMIT : CODE_OK;
}

/* _add_headers: the status closest to its limit (the last over-limit one of
 * a rule not in quota mode wins); Reset in whole seconds, rounded up. */
static void add_headers(const g_policy *p, g_buf *out, const g_outcome *o, uint32_t n) {
    const g_outcome *chosen = NULL;
    for (uint32_t i = 0; i < n; i++) {
        if (!o[i].rule) continue;
        if (o[i].code == CODE_OVER_LIMIT && !(o[i].rule->quota || p->quota_mode))
            chosen = &o[i];
        else if (!chosen || o[i].remaining < chosen->remaining)
            chosen = &o[i];
    }
    if (!chosen) return;
    char v[32];
    snprintf(v, sizeof v, "%u", chosen->rule->rpu);
    put_header(out, "RateLimit-Limit", v);
    snprintf(v, sizeof v, "%u", chosen->remaining);
    put_header(out, "RateLimit-Remaining", v);
    int64_t ns = reset_ns(chosen->reset);
    snprintf(v, sizeof v, "%lld", (long long)(ns / 1000000000 + (ns % 1000000000 > 0)));
    put_header(out, "RateLimit-Reset", v);
}

int policy_rls(g_policy *p, const g_rls_req *q, g_buf *out) {
    if (p->python_all || p->rls_python || q->domain.n == 0 || q->ndescs == 0 || q->ndescs > MAX_DESCRIPTORS)
        return G_HANDOFF;
    g_str none = {NULL, 0};
    int64_t di = index_find(&p->domains_ix, p->domains, p->ndomains, domain_item, q->domain, none);
    const g_domain *dom = di < 0 ? NULL : &p->domains[di];
    if (dom && dom->python) return G_HANDOFF;
    int rules[MAX_DESCRIPTORS];
    /* 1. each descriptor's rule, before any bucket is touched */
    for (uint32_t i = 0; i < q->ndescs; i++) {
        const g_descriptor *d = &q->descs[i];
        if (d->count == 0 || d->has_limit) return G_HANDOFF; /* errors and overrides: Python */
        for (uint32_t j = 0; j < d->count; j++)
            if (q->entries[d->first + j].key.n == 0) return G_HANDOFF;
        rules[i] = dom ? match(p, dom->root, &q->entries[d->first], d->count, NULL) : -1;
        if (rules[i] < 0) continue;
        const g_rule *r = &p->rules[rules[i]];
        if (r->python) return G_HANDOFF;
        const g_edge *via[MAX_SHARED_DEPTH];
        const g_edge *const *v;
        if (r->table >= 0 && !r->unlimited && !key_size(p, q, d, dom, r, via, &v)) return G_HANDOFF;
    }
    /* 2. decide, in order */
    uint64_t default_hits = q->hits_addend ? q->hits_addend : 1;
    g_outcome outcomes[MAX_DESCRIPTORS];
    for (uint32_t i = 0; i < q->ndescs; i++) {
        const g_descriptor *d = &q->descs[i];
        g_rule *r = rules[i] >= 0 ? &p->rules[rules[i]] : NULL;
        g_outcome *o = &outcomes[i];
        memset(o, 0, sizeof *o);
        o->code = CODE_OK;
        if (!r || replaced(p, rules, q->ndescs, r)) {
            put_status(out, CODE_OK, NULL, 0, 0);
            continue;
        }
        if (r->unlimited) {
            put_status(out, CODE_OK, NULL, UNLIMITED_REMAINING, 0);
            o->kind = K_UNLIMITED;
            continue;
        }
        uint64_t hits = d->has_hits ? d->hits : default_hits;
        int over;
        int64_t remaining;
        double reset;
        /* Only a stripe lock held past its bound (a stopped process holds
         * it) or the core's tick horizon fails here; Python then decides
         * the whole request, by the failure policy. The tokens this request
         * took for earlier descriptors are taken back first, and nothing of
         * it was counted yet: Python takes and counts them once. */
        if (decide(p, q, d, dom, r, hits, &over, &remaining, &reset, o) != 0) {
            undo_takes(p, q, dom, rules, outcomes, i);
            return G_HANDOFF;
        }
        if (remaining < 0) remaining = 0;
        if (remaining > (int64_t)UNLIMITED_REMAINING) remaining = UNLIMITED_REMAINING; /* uint32 on the wire */
        if (over && r->shadow) {
            o->kind = K_SHADOW_DENIED;
            over = 0;
        } else {
            o->kind = over ? K_DENIED : K_ALLOWED;
        }
        o->code = over ? CODE_OVER_LIMIT : CODE_OK;
        o->rule = r;
        o->remaining = (uint32_t)remaining;
        o->reset = reset;
        put_status(out, o->code, r, o->remaining, reset);
    }
    for (uint32_t i = 0; i < q->ndescs; i++) {
        g_outcome *o = &outcomes[i];
        g_rule *r = rules[i] >= 0 ? &p->rules[rules[i]] : NULL;
        if (o->local) count(&p->counts.local);
        if (o->remote) count(&p->counts.remote);
        if (o->kind == K_UNLIMITED) count(&r->counts.unlimited);
        else if (o->kind == K_ALLOWED) count(&r->counts.allowed);
        else if (o->kind == K_DENIED) count(&r->counts.denied);
        else if (o->kind == K_SHADOW_DENIED) count(&r->counts.shadow_denied);
    }
    int overall = overall_code(p, outcomes, q->ndescs);
    if (overall == CODE_OVER_LIMIT && p->shadow_mode) { /* the statuses keep saying OVER_LIMIT */
        overall = CODE_OK;
        count(&p->counts.global_shadow);
    }
    if (p->response_headers) add_headers(p, out, outcomes, q->ndescs);
    /* overall_code is field 1; fields may come in any order on the wire */
    pb_uint(out, 1, (uint64_t)overall);
    return out->failed ? G_NOMEM : G_DONE;
}
