/* The compiled policy: the Python policy (guardian.server.policy) flattened
 * into arrays the data plane walks without the GIL, and the evaluation of
 * CheckLimit/CheckLimits/ShouldRateLimit against it. Built by guardian._native
 * from a plan made in Python; never changed once installed (a reload builds
 * a new one and swaps the pointer). Anything this code does not decide
 * exactly as the Python services do is answered G_HANDOFF: the whole
 * request goes to the Python path. */
#ifndef GUARDIAN_POLICY_H
#define GUARDIAN_POLICY_H
#include <stdint.h>

#include "core_api.h"
#include "pb.h"

enum { G_DONE = 0, G_HANDOFF = 1, G_NOMEM = 2 };

/* An open-addressing index over a list (slot: item index + 1, 0 empty), built
 * for lists longer than a few items so that a policy of many thousands of
 * values costs one hash per level, not a scan. */
typedef struct {
    uint32_t *slot;
    uint32_t mask;
} g_index;

struct g_lease;

typedef struct {
    void *table; /* a guardian._core.Table (borrowed; the plan holds it), or NULL */
    int64_t capacity;
    double scale; /* ticks per second (of the Redis scripts, for a lease table) */
    /* A batched backend's lease table: its book's mirror (lease.h) and its
     * bucket's units in the Redis scripts' ticks; NULL: a memory table. */
    struct g_lease *lease;
    int64_t P, tau, tps;
} g_table_ref;

typedef struct {
    char *name;
    uint32_t name_len;
    int table; /* index into tables, or -1: Python only (e.g. Redis) */
    uint64_t lease_hits; /* checks of a lease table answered here (a memory table's core counts its own) */
} g_limit;

/* Counters of one rule, written by the data plane thread, read by Python. */
typedef struct {
    uint64_t allowed, denied, shadow_denied, unlimited;
} g_rule_counts;

typedef struct {
    int table;             /* -1: no bucket (blocks everything: requests_per_unit 0) */
    double emission_interval; /* seconds per token, as TokenBucketConfig has it */
    uint32_t rpu, window;
    int32_t unit;          /* the RateLimitResponse.RateLimit.Unit enum value */
    char *name;
    uint32_t name_len;
    int unlimited, shadow, python;
    int quota;             /* quota_mode: alone it does not make the request OVER_LIMIT */
    /* A share_threshold wildcard on the rule's path: the bucket is keyed by
     * that level's pattern (the path is walked again to find it). */
    int shared;
    char **replaces;
    uint32_t *replaces_len;
    uint32_t nreplaces;
    g_rule_counts counts;
} g_rule;

typedef struct {
    char *key, *value; /* value: the exact value, or a wildcard's whole pattern ('*' any run) */
    uint32_t key_len, value_len;
    int node;
    int share; /* a share_threshold wildcard: every match keys one bucket by the pattern */
} g_edge;

typedef struct {
    g_edge *exact, *wild, *any;
    uint32_t nexact, nwild, nany;
    int rule; /* -1: none */
    g_index exact_ix;
} g_node;

typedef struct {
    char *name;
    uint32_t name_len;
    int root;
    int python;
} g_domain;

typedef struct {
    uint64_t local;  /* RLS takes and reads answered from a memory table */
    uint64_t remote; /* checks answered from a lease (Python counts a batched check as remote) */
    uint64_t global_shadow; /* requests --shadow-mode answered OK although over a limit */
} g_policy_counts;

typedef struct g_policy {
    g_table_ref *tables;
    uint32_t ntables;
    g_limit *limits;
    uint32_t nlimits;
    g_rule *rules;
    uint32_t nrules;
    g_node *nodes;
    uint32_t nnodes;
    g_domain *domains;
    uint32_t ndomains;
    int python_all;        /* every request to Python (e.g. a Redis backend) */
    int rls_python;        /* every ShouldRateLimit to Python */
    int response_headers;  /* --response-headers */
    int shadow_mode;       /* --shadow-mode: an OVER_LIMIT request is answered OK */
    int quota_mode;        /* --quota-mode: every rule is a quota_mode rule */
    uint32_t max_checks;   /* CheckLimits above this go to Python (its caps apply) */
    g_policy_counts counts;
    const g_core_api *api;
    g_index limits_ix, domains_ix;
} g_policy;

void policy_free(g_policy *p);
/* Builds the indexes once the arrays are filled: 0, or -1 out of memory. */
int policy_index(g_policy *p);

/* Each evaluates one decoded request: G_DONE with the response message in
 * out, or G_HANDOFF, or G_NOMEM. */
int policy_check(g_policy *p, const g_check_req *req, g_buf *out);
int policy_checks(g_policy *p, const g_check_req *reqs, uint32_t n, g_buf *out);
int policy_rls(g_policy *p, const g_rls_req *req, g_buf *out);
#endif
