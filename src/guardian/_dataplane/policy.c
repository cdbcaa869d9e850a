/* See policy.h. The GCRA decision itself is the core's (g_core_api.take
 * and .usage); this file only routes a request to a table and encodes what
 * the table answered, the way service_v1.py and service_rls.py do. */
#include "policy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
static const g_table_ref *route_check(const g_policy *p, const g_check_req *c, int64_t *cost) {
    const g_limit *l = find_limit(p, c->limit);
    if (!l || l->table < 0) return NULL;
    const g_table_ref *t = &p->tables[l->table];
    if (c->key.n == 0 || c->key.n > MAX_KEY_BYTES) return NULL;
    uint64_t want = c->cost ? c->cost : 1;
    if (want > (uint64_t)t->capacity) return NULL;
    *cost = (int64_t)want;
    return t;
}

static int take_one(const g_policy *p, const g_table_ref *t, const g_check_req *c, int64_t cost,
                    g_buf *out) {
    g_decision d;
    if (p->api->take(t->table, c->key.p, c->key.n, cost, &d) != 0) return G_HANDOFF;
    pb_check_result(out, d.allowed, (uint64_t)d.remaining, (double)d.retry_ticks / t->scale,
                    (double)d.reset_ticks / t->scale, (uint64_t)t->capacity);
    return G_DONE;
}

int policy_check(g_policy *p, const g_check_req *req, g_buf *out) {
    int64_t cost;
    if (p->python_all) return G_HANDOFF;
    const g_table_ref *t = route_check(p, req, &cost);
    if (!t) return G_HANDOFF;
    int rc = take_one(p, t, req, cost, out);
    return out->failed ? G_NOMEM : rc;
}

int policy_checks(g_policy *p, const g_check_req *reqs, uint32_t n, g_buf *out) {
    if (p->python_all || n > p->max_checks) return G_HANDOFF;
    /* every check is validated before any token is taken, as in Python */
    for (uint32_t i = 0; i < n; i++) {
        int64_t cost;
        if (!route_check(p, &reqs[i], &cost)) return G_HANDOFF;
    }
    for (uint32_t i = 0; i < n; i++) {
        int64_t cost;
        const g_table_ref *t = route_check(p, &reqs[i], &cost);
        size_t mark = pb_begin(out, 1);
        g_decision d;
        /* The core can refuse only past its tick horizon (decades); the
         * checks before this one are taken, as Python's loop would have. */
        if (p->api->take(t->table, reqs[i].key.p, reqs[i].key.n, cost, &d) != 0) return G_HANDOFF;
        pb_check_result(out, d.allowed, (uint64_t)d.remaining, (double)d.retry_ticks / t->scale,
                        (double)d.reset_ticks / t->scale, (uint64_t)t->capacity);
        pb_end(out, mark);
    }
    return out->failed ? G_NOMEM : G_DONE;
}

/* --- Envoy RLS v3 ------------------------------------------------------- */

static const g_edge *find_edge(const g_edge *edges, uint32_t n, const g_entry *e, int prefix) {
    for (uint32_t i = 0; i < n; i++) {
        const g_edge *x = &edges[i];
        if (!eq(x->key, x->key_len, e->key.p, e->key.n)) continue;
        if (prefix < 0) return x; /* key only */
        if (prefix) {
            if (e->value.n >= x->value_len && memcmp(x->value, e->value.p, x->value_len) == 0) return x;
        } else if (eq(x->value, x->value_len, e->value.p, e->value.n)) {
            return x;
        }
    }
    return NULL;
}

/* Domain.match: every entry matches one level (exact, then the first
 * wildcard in file order, then key only); the rule is the last level's. */
static int match(const g_policy *p, int root, const g_entry *entries, uint32_t n) {
    const g_node *node = &p->nodes[root];
    for (uint32_t i = 0; i < n; i++) {
        int64_t ex = index_find(&node->exact_ix, node->exact, node->nexact, edge_item, entries[i].key, entries[i].value);
        const g_edge *x = ex < 0 ? NULL : &node->exact[ex];
        if (!x) x = find_edge(node->wild, node->nwild, &entries[i], 1);
        if (!x) x = find_edge(node->any, node->nany, &entries[i], -1);
        if (!x) return -1;
        const g_node *next = &p->nodes[x->node];
        if (i == n - 1) return next->rule;
        if (!next->nexact && !next->nwild && !next->nany) return -1;
        node = next;
    }
    return -1;
}

/* The bucket key: domain, then each entry's key and value, joined by 0x1f. */
static int build_key(const g_rls_req *q, const g_descriptor *d, char *key, size_t *len) {
    size_t n = q->domain.n;
    for (uint32_t j = 0; j < d->count; j++) n += 2 + q->entries[d->first + j].key.n + q->entries[d->first + j].value.n;
    if (n > MAX_KEY_BYTES) return -1; /* Python hashes such keys (sha256): it answers them */
    char *w = key;
    memcpy(w, q->domain.p, q->domain.n);
    w += q->domain.n;
    for (uint32_t j = 0; j < d->count; j++) {
        const g_entry *e = &q->entries[d->first + j];
        *w++ = SEP;
        if (e->key.n) memcpy(w, e->key.p, e->key.n);
        w += e->key.n;
        *w++ = SEP;
        if (e->value.n) memcpy(w, e->value.p, e->value.n);
        w += e->value.n;
    }
    *len = n;
    return 0;
}

static int replaced(const g_policy *p, const int *rules, uint32_t n, const g_rule *r) {
    if (r->name_len == 0) return 0;
    for (uint32_t i = 0; i < n; i++) {
        if (rules[i] < 0) continue;
        const g_rule *o = &p->rules[rules[i]];
        if (o->unlimited) continue;
        for (uint32_t k = 0; k < o->nreplaces; k++)
            if (eq(o->replaces[k], o->replaces_len[k], (const uint8_t *)r->name, r->name_len)) return 1;
    }
    return 0;
}

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
        /* Duration.FromNanoseconds(int(reset * 1e9)); reset >= 0 here */
        int64_t ns = (int64_t)(reset * 1e9);
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

#define MAX_DESCRIPTORS 64

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
        rules[i] = dom ? match(p, dom->root, &q->entries[d->first], d->count) : -1;
        if (rules[i] >= 0 && p->rules[rules[i]].python) return G_HANDOFF;
    }
    /* 2. decide */
    uint64_t default_hits = q->hits_addend ? q->hits_addend : 1;
    int overall = CODE_OK;
    const g_rule *closest = NULL;
    uint32_t closest_remaining = 0;
    double closest_reset = 0;
    char key[MAX_KEY_BYTES];
    for (uint32_t i = 0; i < q->ndescs; i++) {
        const g_descriptor *d = &q->descs[i];
        g_rule *r = rules[i] >= 0 ? &p->rules[rules[i]] : NULL;
        if (!r || replaced(p, rules, q->ndescs, r)) {
            put_status(out, CODE_OK, NULL, 0, 0);
            continue;
        }
        if (r->unlimited) {
            put_status(out, CODE_OK, NULL, UNLIMITED_REMAINING, 0);
            count(&r->counts.unlimited);
            continue;
        }
        uint64_t hits = d->has_hits ? d->hits : default_hits;
        int over;
        int64_t remaining;
        double reset;
        if (r->table < 0) { /* requests_per_unit: 0 blocks */
            over = 1;
            remaining = 0;
            reset = (double)r->window;
        } else {
            const g_table_ref *t = &p->tables[r->table];
            size_t klen;
            if (build_key(q, d, key, &klen) != 0) return G_HANDOFF;
            if (hits == 0 || hits > (uint64_t)t->capacity) {
                int64_t used;
                if (p->api->usage(t->table, (const uint8_t *)key, klen, &used) != 0) return G_HANDOFF;
                over = hits != 0;
                remaining = t->capacity - used;
                reset = (double)used * r->emission_interval;
            } else {
                g_decision dec;
                if (p->api->take(t->table, (const uint8_t *)key, klen, (int64_t)hits, &dec) != 0) return G_HANDOFF;
                over = !dec.allowed;
                remaining = dec.remaining;
                reset = (double)dec.reset_ticks / t->scale;
            }
            count(&p->counts.local);
        }
        if (remaining < 0 || remaining > (int64_t)UINT32_MAX) return G_HANDOFF; /* uint32 on the wire */
        if (over && r->shadow) {
            count(&r->counts.shadow_denied);
            over = 0;
        } else {
            count(over ? &r->counts.denied : &r->counts.allowed);
        }
        put_status(out, over ? CODE_OVER_LIMIT : CODE_OK, r, (uint32_t)remaining, reset);
        if (over) overall = CODE_OVER_LIMIT;
        if (!closest || (uint32_t)remaining < closest_remaining) {
            closest = r;
            closest_remaining = (uint32_t)remaining;
            closest_reset = reset;
        }
    }
    if (closest && p->response_headers) {
        char v[96];
        snprintf(v, sizeof v, "%u, %u;w=%u", closest->rpu, closest->rpu, closest->window);
        put_header(out, "RateLimit-Limit", v);
        snprintf(v, sizeof v, "%u", closest_remaining);
        put_header(out, "RateLimit-Remaining", v);
        snprintf(v, sizeof v, "%lld", (long long)ceil(closest_reset));
        put_header(out, "RateLimit-Reset", v);
    }
    /* overall_code is field 1; fields may come in any order on the wire */
    pb_uint(out, 1, (uint64_t)overall);
    return out->failed ? G_NOMEM : G_DONE;
}
