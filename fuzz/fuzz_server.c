/* libFuzzer harness: the data plane's HTTP/2 side. The input is what a
 * client sends on one connection, after the connection preface: frames go
 * through libnghttp2 into the server's callbacks, gRPC framing, the
 * decoders and the compiled policy (a fake core answers the takes), and
 * what it answers is produced and discarded. Jobs handed to "Python" are
 * answered at once, alternately with a response and with an error.
 * Build and run: see fuzz/README.md. */
#define _GNU_SOURCE
#include "../src/guardian/_dataplane/pb.c"
#include "../src/guardian/_dataplane/policy.c"
#include "../src/guardian/_dataplane/server.c"

static int fake_take(void *table, const unsigned char *key, size_t n, int64_t cost, g_decision *d) {
    (void)table;
    volatile unsigned char x = 0;
    for (size_t i = 0; i < n; i++) x ^= key[i];
    (void)x;
    d->allowed = cost <= 5;
    d->remaining = d->allowed ? 5 - cost : 0;
    d->retry_ticks = d->allowed ? 0 : 1000;
    d->reset_ticks = 2000;
    return n == 0 || n > 4096 ? -2 : 0;
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
static const g_core_api API = {G_CORE_API_VERSION, sizeof(g_decision), fake_take, fake_usage, fake_params};

static char *s(const char *x) { return strdup(x); }

/* default (v1) and a domain "d": k=v (5/s), k=* wildcard "w", key-only "a"
 * with a nested unlimited rule and a shadow rule, and a blocking rule. */
static g_policy *make_policy(void) {
    g_policy *p = calloc(1, sizeof *p);
    p->api = &API;
    p->max_checks = 16;
    p->response_headers = 1;
    p->ntables = 1;
    p->tables = calloc(1, sizeof *p->tables);
    p->tables[0] = (g_table_ref){(void *)1, 5, 1e9};
    p->nlimits = 1;
    p->limits = calloc(1, sizeof *p->limits);
    p->limits[0] = (g_limit){s("default"), 7, 0};
    p->nrules = 4;
    p->rules = calloc(4, sizeof *p->rules);
    p->rules[0] = (g_rule){.table = 0, .emission_interval = 0.2, .rpu = 5, .window = 1, .unit = 1, .name = s("r0"), .name_len = 2};
    p->rules[0].replaces = calloc(1, sizeof(char *));
    p->rules[0].replaces_len = calloc(1, sizeof(uint32_t));
    p->rules[0].replaces[0] = s("r1");
    p->rules[0].replaces_len[0] = 2;
    p->rules[0].nreplaces = 1;
    p->rules[1] = (g_rule){.table = 0, .emission_interval = 0.2, .rpu = 5, .window = 1, .unit = 1, .name = s("r1"), .name_len = 2, .shadow = 1};
    p->rules[2] = (g_rule){.table = -1, .rpu = 0, .window = 60, .unit = 2, .name = s(""), .name_len = 0};
    p->rules[3] = (g_rule){.table = -1, .unlimited = 1, .name = s("u"), .name_len = 1};
    p->nnodes = 5;
    p->nodes = calloc(5, sizeof *p->nodes);
    for (int i = 0; i < 5; i++) p->nodes[i].rule = i == 0 ? -1 : i - 1;
    /* k=v, and k=v0..k=v11 (enough exact values for a hash index) */
    p->nodes[0].nexact = 13;
    p->nodes[0].exact = calloc(13, sizeof(g_edge));
    p->nodes[0].exact[0] = (g_edge){s("k"), s("v"), 1, 1, 1};
    for (int i = 1; i < 13; i++) {
        char v[8];
        snprintf(v, sizeof v, "v%d", i - 1);
        p->nodes[0].exact[i] = (g_edge){s("k"), s(v), 1, (uint32_t)strlen(v), 1 + i % 4};
    }
    p->nodes[0].nwild = 1;
    p->nodes[0].wild = calloc(1, sizeof(g_edge));
    p->nodes[0].wild[0] = (g_edge){s("k"), s("w"), 1, 1, 2};
    p->nodes[0].nany = 1;
    p->nodes[0].any = calloc(1, sizeof(g_edge));
    p->nodes[0].any[0] = (g_edge){s("a"), s(""), 1, 0, 3};
    p->nodes[3].nany = 1;
    p->nodes[3].any = calloc(1, sizeof(g_edge));
    p->nodes[3].any[0] = (g_edge){s("b"), s(""), 1, 0, 4};
    p->ndomains = 1;
    p->domains = calloc(1, sizeof *p->domains);
    p->domains[0] = (g_domain){s("d"), 1, 0, 0};
    if (policy_index(p) != 0) abort();
    return p;
}

static g_server *srv;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!srv) {
        gs_options o = {100, 1 << 16, 1 << 20, 64, 16, 50, 0};
        srv = gs_new(&o);
        gs_swap_policy(srv, make_policy());
        gs_set_health(srv, "", 0, 1);
    }
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
        if (!c->dead) nghttp2_session_mem_recv(c->h2, data + half, size - half);
    }
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
