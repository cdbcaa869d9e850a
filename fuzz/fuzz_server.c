/* libFuzzer harness: the data plane's HTTP/2 side. The input is what a
 * client sends on one connection, after the connection preface: frames go
 * through libnghttp2 into the server's callbacks, gRPC framing, the
 * decoders and the compiled policy (a fake core answers the takes), and
 * what it answers is produced and discarded. Jobs handed to "Python" are
 * answered at once, alternately with a response and with an error. The
 * input's length (mod 4) picks one of four policies: --shadow-mode and
 * --quota-mode each on or off (see make_policy for what they hold).
 * Build and run: see fuzz/README.md. */
#define _GNU_SOURCE
#include "../src/guardian/_dataplane/pb.c"
#include "../src/guardian/_dataplane/policy.c"
#include "../src/guardian/_dataplane/server.c"
#include "../src/guardian/_dataplane/lease.c"
#include "../src/guardian/_since.h"

static int fake_take(void *table, const unsigned char *key, size_t n, int64_t cost, g_decision *d) {
    (void)table;
    volatile unsigned char x = 0;
    for (size_t i = 0; i < n; i++) x ^= key[i];
    (void)x;
    d->allowed = cost <= 5;
    d->remaining = d->allowed ? 5 - cost : 0;
    d->retry_ticks = d->allowed ? 0 : 1000;
    d->reset_ticks = 2000;
    d->slot = (ptrdiff_t)(n % 97);
    d->before = 0;
    d->after = cost;
    if (n == 0 || n > 4096) return -2;
    /* some keys meet a stuck lock: the call goes to Python after the
     * takes before it are undone (fake_undo checks what it is given) */
    return n % 53 == 41 ? -4 : 0;
}
static int fake_usage(void *table, const unsigned char *key, size_t n, int64_t *used) {
    (void)table;
    (void)key;
    *used = (int64_t)(n % 6);
    return 0;
}
static int fake_params(void *table, int64_t *capacity, double *scale) {
    (void)table;
    *capacity = 5;
    *scale = 1e9;
    return 0;
}
static int fake_peek(void *table, const unsigned char *key, size_t n, g_decision *d) {
    (void)table;
    (void)key;
    d->allowed = 1;
    d->remaining = (int64_t)(n % 6);
    d->retry_ticks = 0;
    d->reset_ticks = n % 2 ? 0 : 1999999999; /* an exact second and one rounded up */
    return n > 4096 ? -2 : 0;
}
static int fake_undo(void *table, const unsigned char *key, size_t n, int64_t cost, g_decision *d) {
    (void)table;
    /* the decision its take answered, for the same key and cost */
    if (d->slot != (ptrdiff_t)(n % 97) || d->after != cost || n % 53 == 41) abort();
    volatile unsigned char x = 0;
    for (size_t i = 0; i < n; i++) x ^= key[i]; /* the key it rebuilt: every byte readable */
    (void)x;
    return n == 0 || n > 4096 ? -2 : 0;
}
/* a lease table: the key's length decides what it holds (n % 9 tokens) */
static int fake_spend(void *table, const unsigned char *key, size_t n, int64_t cost, int64_t *left, g_decision *d) {
    (void)table;
    volatile unsigned char x = 0;
    for (size_t i = 0; i < n; i++) x ^= key[i];
    (void)x;
    if (n == 0 || n > 4096) return -2;
    int64_t held = (int64_t)(n % 9);
    *left = cost <= held ? held - cost : -1;
    d->slot = (ptrdiff_t)(n % 89);
    d->after = *left;
    return 0;
}
static int fake_unspend(void *table, const unsigned char *key, size_t n, g_decision *d) {
    (void)table;
    /* only a spend that took: what it recorded, for the same key */
    if (d->slot != (ptrdiff_t)(n % 89) || d->after < 0) abort();
    volatile unsigned char x = 0;
    for (size_t i = 0; i < n; i++) x ^= key[i];
    (void)x;
    return n == 0 || n > 4096 ? -2 : 0;
}
static const g_core_api API = {G_CORE_API_VERSION, sizeof(g_decision), fake_take, fake_usage, fake_params,
                               fake_peek, fake_undo, fake_spend, fake_unspend, g_bucket_read};
static g_lease LEASE;

static char *s(const char *x) { return strdup(x); }

static void set_replaces(g_rule *r, const char *a, const char *b) {
    uint32_t n = b ? 2 : 1;
    r->replaces = calloc(n, sizeof(char *));
    r->replaces_len = calloc(n, sizeof(uint32_t));
    r->replaces[0] = s(a);
    r->replaces_len[0] = (uint32_t)strlen(a);
    if (b) {
        r->replaces[1] = s(b);
        r->replaces_len[1] = (uint32_t)strlen(b);
    }
    r->nreplaces = n;
}

static g_edge edge(const char *k, const char *v, int node, int share) {
    return (g_edge){s(k), s(v), (uint32_t)strlen(k), (uint32_t)strlen(v), node, share};
}

/* default (v1) and a domain "d" (rule i at node i + 1):
 *   k=v -> r0 (replaces r1), k=v0..v11 (a hash index) -> nodes 1..4,
 *   k="a*b*c" -> "q" (quota_mode), k="*x*" share_threshold -> "s" (shared),
 *     under it b=any -> "s2" (shared: the path has the share edge),
 *   k="w" (no star) -> r1 (shadow), k="*" -> "all" (unlimited, replaces r0 and q),
 *   a=any -> "" (requests_per_unit 0), under it b=any -> "u" (unlimited, replaces r1).
 * Response headers on; shadow_mode and quota_mode from ``flags``. */
static g_policy *make_policy(int flags) {
    g_policy *p = calloc(1, sizeof *p);
    p->api = &API;
    p->max_checks = 16;
    p->response_headers = 1;
    p->shadow_mode = flags & 1;
    p->quota_mode = (flags >> 1) & 1;
    p->ntables = 2;
    p->tables = calloc(2, sizeof *p->tables);
    p->tables[0] = (g_table_ref){(void *)1, 5, 1e9};
    /* a batched backend's lease table (P 7, tau 35: capacity 5) */
    p->tables[1] = (g_table_ref){(void *)2, 5, 1e6, &LEASE, 7, 35, 1000000};
    p->nlimits = 2;
    p->limits = calloc(2, sizeof *p->limits);
    p->limits[0] = (g_limit){s("default"), 7, 0};
    p->limits[1] = (g_limit){s("lease"), 5, 1};
    enum { NRULES = 9, NNODES = NRULES + 1 };
    p->nrules = NRULES;
    p->rules = calloc(NRULES, sizeof *p->rules);
    p->rules[0] = (g_rule){.table = 0, .emission_interval = 0.2, .rpu = 5, .window = 1, .unit = 1, .name = s("r0"), .name_len = 2};
    set_replaces(&p->rules[0], "r1", NULL);
    p->rules[1] = (g_rule){.table = 0, .emission_interval = 0.2, .rpu = 5, .window = 1, .unit = 1, .name = s("r1"), .name_len = 2, .shadow = 1};
    p->rules[2] = (g_rule){.table = -1, .rpu = 0, .window = 60, .unit = 2, .name = s(""), .name_len = 0};
    p->rules[3] = (g_rule){.table = -1, .unlimited = 1, .name = s("u"), .name_len = 1};
    set_replaces(&p->rules[3], "r1", NULL);
    p->rules[4] = (g_rule){.table = 0, .emission_interval = 0.2, .rpu = 5, .window = 1, .unit = 1, .name = s("q"), .name_len = 1, .quota = 1};
    p->rules[5] = (g_rule){.table = 0, .emission_interval = 0.2, .rpu = 5, .window = 1, .unit = 1, .name = s("s"), .name_len = 1, .shared = 1};
    p->rules[6] = (g_rule){.table = -1, .unlimited = 1, .name = s("all"), .name_len = 3};
    set_replaces(&p->rules[6], "r0", "q");
    p->rules[7] = (g_rule){.table = 0, .emission_interval = 12, .rpu = 5, .window = 60, .unit = 2, .name = s("s2"), .name_len = 2, .shared = 1};
    p->rules[8] = (g_rule){.table = 1, .emission_interval = 7e-6, .rpu = 5, .window = 1, .unit = 1, .name = s("L"), .name_len = 1};
    p->nnodes = NNODES;
    p->nodes = calloc(NNODES, sizeof *p->nodes);
    for (int i = 0; i < NNODES; i++) p->nodes[i].rule = i - 1;
    g_node *root = &p->nodes[0];
    root->nexact = 13;
    root->exact = calloc(13, sizeof(g_edge));
    root->exact[0] = edge("k", "v", 1, 0);
    for (int i = 1; i < 13; i++) {
        char v[8];
        snprintf(v, sizeof v, "v%d", i - 1);
        root->exact[i] = edge("k", v, 1 + i % 4, 0);
    }
    root->exact = realloc(root->exact, 14 * sizeof(g_edge));
    root->exact[13] = edge("L", "v", 9, 0); /* a rule on the lease table */
    root->nexact = 14;
    root->nwild = 4;
    root->wild = calloc(4, sizeof(g_edge));
    root->wild[0] = edge("k", "a*b*c", 5, 0);
    root->wild[1] = edge("k", "*x*", 6, 1);
    root->wild[2] = edge("k", "w", 2, 0);
    root->wild[3] = edge("k", "*", 7, 0);
    root->nany = 1;
    root->any = calloc(1, sizeof(g_edge));
    root->any[0] = edge("a", "", 3, 0);
    p->nodes[3].nany = 1;
    p->nodes[3].any = calloc(1, sizeof(g_edge));
    p->nodes[3].any[0] = edge("b", "", 4, 0);
    p->nodes[6].nany = 1;
    p->nodes[6].any = calloc(1, sizeof(g_edge));
    p->nodes[6].any[0] = edge("b", "", 8, 0);
    p->ndomains = 1;
    p->domains = calloc(1, sizeof *p->domains);
    p->domains[0] = (g_domain){s("d"), 1, 0, 0};
    if (policy_index(p) != 0) abort();
    return p;
}

static g_server *srv;
static g_policy *policies[4];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!srv) {
        gs_options o = {100, 1 << 16, 1 << 20, 64, 16, 50, 0};
        srv = gs_new(&o);
        if (lease_init(&LEASE, 1, 2) != 0) abort();
        /* reservations of some keys (the rest report the lease's own numbers) */
        const char *held[] = {"a", "ab", "abc", "d\x1fL\x1fv", "k1234567"};
        for (int i = 0; i < 5; i++) lease_set(&LEASE, (const uint8_t *)held[i], strlen(held[i]), 30 - i * 7, 0, i % 3);
        for (int i = 0; i < 4; i++) policies[i] = make_policy(i);
        gs_set_health(srv, "", 0, 1);
    }
    /* the input's length picks the policy: --shadow-mode and --quota-mode each on or off */
    gs_swap_policy(srv, policies[size % 4]);
    /* the breaker counts failures, or not; the low water moves */
    __atomic_store_n(&LEASE.failing, (int)((size >> 2) % 5 == 0), __ATOMIC_RELEASE);
    __atomic_store_n(&LEASE.low_cap, (int64_t)((size >> 3) % 4), __ATOMIC_RELEASE);
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) != 0) return 0;
    /* a connection as conn_accept makes it, without the listener */
    srv->by_fd_cap = 0;
    free(srv->by_fd);
    srv->by_fd = NULL;
    g_conn *c = calloc(1, sizeof *c);
    int cap = fds[0] + 1;
    srv->by_fd = calloc((size_t)cap, sizeof *srv->by_fd);
    srv->by_fd_cap = cap;
    nghttp2_session_server_new(&c->h2, CALLBACKS, c);
    c->fd = fds[0];
    c->serial = ++srv->next_serial;
    c->srv = srv;
    buf_init(&c->out);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(srv->ep, EPOLL_CTL_ADD, c->fd, &ev);
    srv->by_fd[c->fd] = c;
    srv->conns = c;
    srv->nconns = 1;
    /* the server's SETTINGS go out first, as conn_accept sends them */
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, srv->o.max_concurrent_streams},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_BYTES},
    };
    nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 2);
    flush(c);
    static const uint8_t preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    nghttp2_session_mem_recv(c->h2, preface, sizeof preface - 1);
    /* feed in two pieces, as reads would split it */
    size_t half = size / 2;
    if (nghttp2_session_mem_recv(c->h2, data, half) >= 0) {
        flush(c);
        /* health changes between the pieces: open Watch streams get them */
        gs_set_health(srv, "", 0, 2);
        wake_watchers(srv, 0);
        flush(c);
        if (!c->dead) nghttp2_session_mem_recv(c->h2, data + half, size - half);
    }
    flush(c);
    gs_set_health(srv, "", 0, 1);
    wake_watchers(srv, 0);
    wake_watchers(srv, 1); /* as a drain ends every Watch */
    flush(c);
    /* answer what was handed to "Python" */
    int turn = 0;
    for (g_job *j = gs_take_jobs(srv), *n; j; j = n) {
        n = j->next;
        j->next = NULL;
        if (turn++ & 1) {
            j->status = GRPC_NOT_FOUND;
            j->message = strdup("no such \xff limit");
        } else {
            j->response = malloc(7);
            memcpy(j->response, "\0\0\0\0\x02\x08\x01", 7);
            j->response_len = 7;
        }
        gs_complete(srv, j);
    }
    run_completions(srv);
    uint64_t ids[64];
    while (gs_take_cancels(srv, ids, 64) == 64) {}
    sweep(srv, now_ns() + 3600LL * 1000000000LL); /* every deadline passed */
    /* drain what the server wrote, then close as a dead peer would */
    char sink[65536];
    while (read(fds[1], sink, sizeof sink) > 0) {}
    if (srv->conns) conn_close(c);
    close(fds[1]);
    /* every request byte is accounted for once its stream and job are gone */
    if (srv->buffered != 0 || srv->njobs != 0 || srv->nstreams != 0) abort();
    return 0;
}
