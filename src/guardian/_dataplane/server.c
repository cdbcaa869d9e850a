/* See server.h. One thread owns every connection and nghttp2 session; the
 * only state shared with Python is the policy pointer (swapped atomically),
 * the job and completion queues (a mutex each), the health table (a mutex)
 * and relaxed counters. HTTP/2 is entirely libnghttp2's: this file feeds it
 * bytes and writes what it produces. */
#define _GNU_SOURCE
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_LISTENERS 4
#define MAX_HEALTH 32
#define MAX_WATCHES 4096 /* open health Watch streams, whole server */
#define MAX_CHECKS 1024
#define MAX_ENTRIES 1024
#define MAX_HEADER_BYTES (16 * 1024)
#define READ_CHUNK (64 * 1024)
#define OUT_HIGH_WATER (64 * 1024) /* stop reading a connection whose peer does not read */
#define ACCEPT_PAUSE_NS (100 * 1000000LL) /* out of file descriptors: stop accepting this long */
#define TICK_MS 50

enum {
    GRPC_OK = 0, GRPC_CANCELLED = 1, GRPC_UNKNOWN = 2, GRPC_INVALID_ARGUMENT = 3,
    GRPC_DEADLINE_EXCEEDED = 4, GRPC_NOT_FOUND = 5, GRPC_RESOURCE_EXHAUSTED = 8,
    GRPC_UNIMPLEMENTED = 12, GRPC_INTERNAL = 13, GRPC_UNAVAILABLE = 14,
};

static const double LATENCY_BOUNDS[] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                        0.01, 0.025, 0.05, 0.1, 0.25, 1.0};
#define NB ((int)(sizeof LATENCY_BOUNDS / sizeof LATENCY_BOUNDS[0]))

typedef struct g_conn g_conn;

typedef struct g_stream {
    int32_t id;
    uint8_t method;
    uint8_t is_post, content_type_ok, responded, handed, compressed_bad;
    char *path;
    g_buf body;
    g_buf headers; /* for a handoff: name\0value\0 ... */
    size_t header_bytes;
    g_buf resp; /* framed response message(s) */
    size_t resp_off;
    int status;
    char *message;
    int64_t deadline_ns;
    uint64_t job;
    /* a health Watch: the service watched, the status to send (-1: none
     * yet), the one last sent, and whether the stream is to end */
    char *watch;
    size_t watch_n;
    int watch_want, watch_sent, watch_end;
    /* the status message being sent: a window smaller than it gets part */
    uint8_t watch_msg[7];
    uint8_t watch_len, watch_off;
    g_conn *conn;
    struct g_stream *prev, *next; /* the connection's streams */
} g_stream;

struct g_conn {
    int fd;
    uint64_t serial;
    nghttp2_session *h2;
    g_buf out;
    size_t out_off;
    int epollout, reading, dead;
    int64_t last_active_ns;
    int ping_outstanding;
    g_stream *streams;
    uint32_t nstreams;
    g_server *srv;
    struct g_conn *prev, *next;
};

typedef struct {
    char name[256];
    size_t n;
    int status;
} g_health;

struct g_server {
    gs_options o;
    int listeners[MAX_LISTENERS];
    int nlisteners;
    int ep, wake_fd /* Python -> thread */, py_fd /* thread -> Python */;
    pthread_t thread;
    int started;
    g_policy *policy;
    uint64_t loops;
    g_conn *conns;
    g_conn **by_fd;
    int by_fd_cap;
    uint64_t next_serial;
    uint32_t nconns;
    uint64_t buffered; /* request bytes (bodies, kept headers) of streams and jobs in flight */
    uint32_t nstreams; /* open streams, all connections */
    int64_t accept_paused_until; /* 0: accepting */
    /* jobs */
    pthread_mutex_t qlock;
    g_job *jobs_head, *jobs_tail, *done_head;
    uint64_t *cancels; /* jobs whose stream closed before Python answered */
    uint32_t ncancels, cap_cancels;
    uint32_t njobs; /* handed to Python and not yet completed */
    uint64_t next_job;
    pthread_mutex_t hlock;
    g_health health[MAX_HEALTH];
    int nhealth;
    uint32_t nwatches; /* open health Watch streams */
    uint64_t health_gen, health_seen; /* bumped by gs_set_health; the last the thread acted on */
    /* drain */
    int draining, drain_started, finished;
    uint32_t grace_ms;
    int64_t drain_deadline;
    /* scratch for decoding */
    g_check_req checks[MAX_CHECKS];
    g_descriptor descs[MAX_CHECKS];
    g_entry entries[MAX_ENTRIES];
    gs_stats stats;
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void bump(uint64_t *c, uint64_t n) { __atomic_fetch_add(c, n, __ATOMIC_RELAXED); }

static char *dup_n(const void *p, size_t n) {
    char *s = malloc(n + 1);
    if (s) {
        if (n) memcpy(s, p, n);
        s[n] = 0;
    }
    return s;
}

static void wake(int fd) {
    uint64_t one = 1;
    ssize_t r = write(fd, &one, sizeof one);
    (void)r; /* an eventfd at its maximum is already awake */
}

/* --- responses ----------------------------------------------------------- */

#define NV(name, value) {(uint8_t *)(name), (uint8_t *)(value), sizeof(name) - 1, sizeof(value) - 1, \
                         NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE}

static ssize_t read_body(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *user) {
    (void)user;
    g_stream *st = src->ptr;
    size_t left = st->resp.n - st->resp_off;
    size_t n = left < len ? left : len;
    if (n) memcpy(buf, st->resp.p + st->resp_off, n);
    st->resp_off += n;
    if (st->resp_off == st->resp.n) {
        *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        static const nghttp2_nv ok[] = {NV("grpc-status", "0")};
        if (nghttp2_submit_trailer(h2, id, ok, 1) != 0) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return (ssize_t)n;
}

/* grpc-message is percent-encoded: bytes outside 0x20-0x7e and '%'. */
static size_t percent_encode(const char *in, char *out, size_t cap) {
    static const char hex[] = "0123456789ABCDEF";
    size_t w = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && w + 4 < cap; p++) {
        if (*p >= 0x20 && *p <= 0x7e && *p != '%') {
            out[w++] = (char)*p;
        } else {
            out[w++] = '%';
            out[w++] = hex[*p >> 4];
            out[w++] = hex[*p & 15];
        }
    }
    out[w] = 0;
    return w;
}

/* A trailers-only response: the status in the one HEADERS frame. */
static void respond_error(g_stream *st, int status, const char *message, int http_status) {
    if (st->responded) return;
    st->responded = 1;
    char code[16], msg[1024], hs[8];
    snprintf(code, sizeof code, "%d", status);
    snprintf(hs, sizeof hs, "%d", http_status);
    size_t mlen = percent_encode(message ? message : "", msg, sizeof msg);
    nghttp2_nv nv[5] = {
        {(uint8_t *)":status", (uint8_t *)hs, 7, strlen(hs), NGHTTP2_NV_FLAG_NO_COPY_NAME},
        NV("content-type", "application/grpc"),
        {(uint8_t *)"grpc-status", (uint8_t *)code, 11, strlen(code), NGHTTP2_NV_FLAG_NO_COPY_NAME},
        {(uint8_t *)"grpc-message", (uint8_t *)msg, 12, mlen, NGHTTP2_NV_FLAG_NO_COPY_NAME},
        NV("grpc-accept-encoding", "identity"),
    };
    size_t n = mlen ? 4 : 3;
    if (status == GRPC_UNIMPLEMENTED && st->compressed_bad) {
        nv[n] = nv[4];
        n++;
    }
    if (status != GRPC_OK) bump(&st->conn->srv->stats.errors, 1);
    nghttp2_submit_response(st->conn->h2, st->id, nv, n, NULL);
}

/* A 200 response whose body (messages, then trailers) ``body`` makes. */
static void respond_with(g_stream *st, nghttp2_data_source_read_callback body) {
    if (st->responded) return;
    st->responded = 1;
    static const nghttp2_nv hdrs[] = {NV(":status", "200"), NV("content-type", "application/grpc"),
                                      NV("grpc-accept-encoding", "identity")};
    nghttp2_data_provider prd;
    prd.source.ptr = st;
    prd.read_callback = body;
    nghttp2_submit_response(st->conn->h2, st->id, hdrs, 3, &prd);
}

/* The response message is in st->resp (framed): headers, data, trailers. */
static void respond_ok(g_stream *st) { respond_with(st, read_body); }

/* A health Watch's body, made when nghttp2 asks for it: the latest status
 * as one HealthCheckResponse message when it differs from the last sent
 * (so a client that does not read holds one pending status, not a backlog),
 * then nothing until the status changes (deferred), and at the end the
 * trailers. */
enum { WATCH_DRAIN = 1, WATCH_DEADLINE = 2 }; /* why a Watch ends (watch_end) */

static ssize_t read_watch(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                          nghttp2_data_source *src, void *user) {
    (void)user;
    g_stream *st = src->ptr;
    if (st->watch_off == st->watch_len && st->watch_want != st->watch_sent) {
        int v = st->watch_want;
        uint8_t n = v ? 2 : 0; /* proto3: status 0 (UNKNOWN) is the empty message */
        uint8_t *m = st->watch_msg;
        m[0] = m[1] = m[2] = m[3] = 0;
        m[4] = n;
        m[5] = 0x08; /* field 1, varint */
        m[6] = (uint8_t)v; /* 0..3 */
        st->watch_len = (uint8_t)(5 + n);
        st->watch_off = 0;
        st->watch_sent = v;
    }
    if (st->watch_off < st->watch_len) {
        /* as much as the flow-control window takes (a message may span
         * DATA frames); nghttp2 asks again when the window opens */
        size_t k = (size_t)(st->watch_len - st->watch_off);
        if (k > len) k = len;
        memcpy(buf, st->watch_msg + st->watch_off, k);
        st->watch_off = (uint8_t)(st->watch_off + k);
        return (ssize_t)k;
    }
    if (!st->watch_end) return NGHTTP2_ERR_DEFERRED;
    *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    static const nghttp2_nv gone[] = {NV("grpc-status", "14"), NV("grpc-message", "server shutting down")};
    static const nghttp2_nv late[] = {NV("grpc-status", "4"), NV("grpc-message", "Deadline Exceeded")};
    if (nghttp2_submit_trailer(h2, id, st->watch_end == WATCH_DEADLINE ? late : gone, 2) != 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}


/* --- requests ------------------------------------------------------------ */

static const struct {
    const char *path;
    uint8_t method;
} METHODS[] = {
    {"/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", M_RLS},
    {"/guardian.v1.RateLimiter/CheckLimit", M_CHECK},
    {"/guardian.v1.RateLimiter/CheckLimits", M_CHECKS},
    {"/grpc.health.v1.Health/Check", M_HEALTH},
    {"/grpc.health.v1.Health/Watch", M_WATCH},
};

#define SERVICE_UNKNOWN 3 /* HealthCheckResponse.ServingStatus: what Watch says of an unknown name */

static int64_t parse_timeout(const uint8_t *v, size_t n) {
    /* grpc-timeout: 1-8 digits and a unit (H M S m u n) */
    if (n < 2 || n > 9) return -1;
    int64_t x = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (v[i] < '0' || v[i] > '9') return -1;
        x = x * 10 + (v[i] - '0');
    }
    switch (v[n - 1]) {
    case 'H': return x * 3600LL * 1000000000LL;
    case 'M': return x * 60LL * 1000000000LL;
    case 'S': return x * 1000000000LL;
    case 'm': return x * 1000000LL;
    case 'u': return x * 1000LL;
    case 'n': return x;
    default: return -1;
    }
}

static void handoff(g_stream *st, const uint8_t *msg, size_t n);

static int health_status(g_server *s, const g_str *name) {
    int status = -1;
    pthread_mutex_lock(&s->hlock);
    for (int i = 0; i < s->nhealth; i++)
        if (s->health[i].n == name->n && (name->n == 0 || memcmp(s->health[i].name, name->p, name->n) == 0))
            status = s->health[i].status;
    pthread_mutex_unlock(&s->hlock);
    return status;
}

static void finish_message(g_stream *st, size_t mark) {
    /* the 5-byte gRPC frame prefix, reserved at mark */
    size_t len = st->resp.n - mark - 5;
    uint8_t *p = st->resp.p + mark;
    p[0] = 0;
    p[1] = (uint8_t)(len >> 24);
    p[2] = (uint8_t)(len >> 16);
    p[3] = (uint8_t)(len >> 8);
    p[4] = (uint8_t)len;
}

/* Frees a stream's request bytes and takes them off the server's budget. */
static void body_release(g_stream *st) {
    st->conn->srv->buffered -= st->body.n;
    buf_free(&st->body);
}

static void observe(g_server *s, int m, int64_t t0) {
    int64_t dt = now_ns() - t0;
    double sec = (double)dt / 1e9;
    int b = 0;
    while (b < NB && sec > LATENCY_BOUNDS[b]) b++;
    bump(&s->stats.latency[m][b], 1);
    bump(&s->stats.latency_ns[m], (uint64_t)dt);
    bump(&s->stats.calls[m], 1);
}

/* The whole request has arrived: answer it, or hand it to Python. */
static void on_request(g_stream *st) {
    g_server *s = st->conn->srv;
    int64_t t0 = now_ns();
    if (!st->is_post) {
        respond_error(st, GRPC_UNIMPLEMENTED, "only POST is a gRPC call", 405);
        return;
    }
    if (!st->content_type_ok) {
        respond_error(st, GRPC_UNKNOWN, "content-type must be application/grpc", 415);
        return;
    }
    if (st->deadline_ns && t0 > st->deadline_ns) {
        respond_error(st, GRPC_DEADLINE_EXCEEDED, "Deadline Exceeded", 200);
        return;
    }
    /* exactly one message, uncompressed */
    const uint8_t *b = st->body.p;
    size_t n = st->body.n;
    if (n < 5) {
        respond_error(st, GRPC_INTERNAL, n ? "truncated gRPC message" : "no request message", 200);
        return;
    }
    uint32_t len = ((uint32_t)b[1] << 24) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 8) | b[4];
    if (b[0] == 1) {
        st->compressed_bad = 1;
        respond_error(st, GRPC_UNIMPLEMENTED, "compressed messages are not accepted (grpc-accept-encoding: identity)", 200);
        return;
    }
    if (st->method == M_OTHER) {
        /* Python's: the whole body, once every frame is known to be whole
         * and uncompressed (a streaming method may carry several). */
        for (size_t off = 0; off < n;) {
            if (n - off < 5) {
                respond_error(st, GRPC_INTERNAL, "truncated gRPC message", 200);
                return;
            }
            uint32_t l = ((uint32_t)b[off + 1] << 24) | ((uint32_t)b[off + 2] << 16) | ((uint32_t)b[off + 3] << 8) | b[off + 4];
            if (b[off] == 1) st->compressed_bad = 1;
            if (b[off] > 1 || (size_t)l > n - off - 5) {
                respond_error(st, GRPC_INTERNAL, "truncated gRPC message", 200);
                return;
            }
            off += 5 + (size_t)l;
        }
        if (st->compressed_bad) {
            respond_error(st, GRPC_UNIMPLEMENTED, "compressed messages are not accepted (grpc-accept-encoding: identity)", 200);
            return;
        }
        handoff(st, b, n);
        return;
    }
    if (b[0] != 0 || (size_t)len + 5 != n) {
        respond_error(st, GRPC_INTERNAL, (size_t)len + 5 > n ? "truncated gRPC message" : "a unary call carries one message", 200);
        return;
    }
    const uint8_t *msg = b + 5;
    if (st->method == M_WATCH) {
        g_str name;
        if (pb_decode_health(msg, len, &name) == PB_MALFORMED) {
            respond_error(st, GRPC_INTERNAL, "Exception deserializing request!", 200);
            return;
        }
        if (s->drain_started) {
            respond_error(st, GRPC_UNAVAILABLE, "server shutting down", 200);
            return;
        }
        if (s->nwatches >= MAX_WATCHES) {
            /* a Watch holds its stream for as long as the client likes: a
             * cap of their own keeps them from taking every stream slot */
            respond_error(st, GRPC_RESOURCE_EXHAUSTED, "too many health watches open on this server", 200);
            return;
        }
        st->watch = dup_n(name.p, name.n);
        if (!st->watch) {
            respond_error(st, GRPC_RESOURCE_EXHAUSTED, "out of memory", 200);
            return;
        }
        st->watch_n = name.n;
        s->nwatches++;
        int status = health_status(s, &name);
        st->watch_want = status < 0 ? SERVICE_UNKNOWN : status;
        st->watch_sent = -1;
        body_release(st);
        respond_with(st, read_watch);
        return;
    }
    g_policy *p = __atomic_load_n(&s->policy, __ATOMIC_ACQUIRE);
    if (!p && st->method != M_HEALTH) {
        handoff(st, b, n);
        return;
    }
    buf_init(&st->resp);
    size_t mark = 0;
    if (buf_reserve(&st->resp, 5) == 0) {
        st->resp.n = 5;
    }
    int rc = G_HANDOFF, dec;
    switch (st->method) {
    case M_CHECK:
        dec = pb_decode_check(msg, len, &s->checks[0]);
        if (dec == PB_MALFORMED) break;
        rc = policy_check(p, &s->checks[0], &st->resp);
        break;
    case M_CHECKS: {
        uint32_t count = 0;
        dec = pb_decode_checks(msg, len, s->checks, MAX_CHECKS, &count);
        if (dec == PB_MALFORMED || dec == PB_TOO_MANY) break;
        rc = policy_checks(p, s->checks, count, &st->resp);
        break;
    }
    case M_RLS: {
        g_rls_req q;
        q.descs = s->descs;
        q.max_descs = MAX_CHECKS;
        q.entries = s->entries;
        q.max_entries = MAX_ENTRIES;
        dec = pb_decode_rls(msg, len, &q);
        if (dec == PB_MALFORMED || dec == PB_TOO_MANY) break;
        rc = policy_rls(p, &q, &st->resp);
        break;
    }
    default: { /* M_HEALTH */
        g_str name;
        dec = pb_decode_health(msg, len, &name);
        if (dec == PB_MALFORMED) break;
        int status = health_status(s, &name);
        if (status < 0) break; /* unknown service: Python says NOT_FOUND */
        pb_uint(&st->resp, 1, (uint64_t)status);
        rc = st->resp.failed ? G_NOMEM : G_DONE;
        break;
    }
    }
    if (dec == PB_MALFORMED) {
        buf_free(&st->resp);
        /* as grpcio answers a request it cannot deserialize */
        respond_error(st, GRPC_INTERNAL, "Exception deserializing request!", 200);
        return;
    }
    if (rc == G_HANDOFF) {
        buf_free(&st->resp);
        handoff(st, b, n);
        return;
    }
    if (rc == G_NOMEM || st->resp.failed) {
        buf_free(&st->resp);
        respond_error(st, GRPC_RESOURCE_EXHAUSTED, "out of memory", 200);
        return;
    }
    finish_message(st, mark);
    body_release(st);
    respond_ok(st);
    observe(s, st->method, t0);
}

/* --- handoff to Python --------------------------------------------------- */

static void handoff(g_stream *st, const uint8_t *msg, size_t n) {
    g_server *s = st->conn->srv;
    pthread_mutex_lock(&s->qlock);
    uint32_t pending = s->njobs;
    pthread_mutex_unlock(&s->qlock);
    if (pending >= s->o.max_jobs) {
        respond_error(st, GRPC_RESOURCE_EXHAUSTED, "too many calls waiting for the Python engine", 200);
        return;
    }
    g_job *j = calloc(1, sizeof *j);
    if (!j) {
        respond_error(st, GRPC_RESOURCE_EXHAUSTED, "out of memory", 200);
        return;
    }
    j->id = ++s->next_job;
    j->fd = st->conn->fd;
    j->serial = st->conn->serial;
    j->stream_id = st->id;
    j->path = st->path;
    st->path = NULL;
    j->payload = malloc(n ? n : 1);
    j->headers = st->headers.p;
    j->headers_len = st->headers.n;
    buf_init(&st->headers);
    j->deadline_ns = st->deadline_ns;
    if (!j->payload || !j->path) {
        s->buffered -= j->headers_len;
        gs_job_free(j);
        respond_error(st, GRPC_RESOURCE_EXHAUSTED, "out of memory", 200);
        return;
    }
    if (n) memcpy(j->payload, msg, n);
    j->payload_len = n;
    /* the body's bytes move into the job: they stay counted until it completes */
    body_release(st);
    s->buffered += n;
    st->handed = 1;
    st->job = j->id;
    bump(&s->stats.handoffs, 1);
    pthread_mutex_lock(&s->qlock);
    s->njobs++;
    if (s->jobs_tail) s->jobs_tail->next = j;
    else s->jobs_head = j;
    s->jobs_tail = j;
    pthread_mutex_unlock(&s->qlock);
    wake(s->py_fd);
}

uint32_t gs_take_cancels(g_server *s, uint64_t *out, uint32_t max) {
    pthread_mutex_lock(&s->qlock);
    uint32_t n = s->ncancels < max ? s->ncancels : max;
    if (n) {
        memcpy(out, s->cancels, n * sizeof *out);
        memmove(s->cancels, s->cancels + n, (s->ncancels - n) * sizeof *out);
        s->ncancels -= n;
    }
    pthread_mutex_unlock(&s->qlock);
    return n;
}

g_job *gs_take_jobs(g_server *s) {
    pthread_mutex_lock(&s->qlock);
    g_job *j = s->jobs_head;
    s->jobs_head = s->jobs_tail = NULL;
    pthread_mutex_unlock(&s->qlock);
    return j;
}

void gs_job_free(g_job *j) {
    if (!j) return;
    free(j->path);
    free(j->payload);
    free(j->headers);
    free(j->message);
    free(j->response);
    free(j);
}

void gs_complete(g_server *s, g_job *j) {
    pthread_mutex_lock(&s->qlock);
    j->next = s->done_head;
    s->done_head = j;
    pthread_mutex_unlock(&s->qlock);
    wake(s->wake_fd);
}

static g_conn *conn_of(g_server *s, int fd, uint64_t serial) {
    if (fd < 0 || fd >= s->by_fd_cap) return NULL;
    g_conn *c = s->by_fd[fd];
    return c && c->serial == serial && !c->dead ? c : NULL;
}

static void flush(g_conn *c);

static void run_completions(g_server *s) {
    pthread_mutex_lock(&s->qlock);
    g_job *j = s->done_head;
    s->done_head = NULL;
    pthread_mutex_unlock(&s->qlock);
    while (j) {
        g_job *next = j->next;
        pthread_mutex_lock(&s->qlock);
        s->njobs--;
        pthread_mutex_unlock(&s->qlock);
        s->buffered -= j->payload_len + j->headers_len;
        g_conn *c = conn_of(s, j->fd, j->serial);
        g_stream *st = c ? nghttp2_session_get_stream_user_data(c->h2, j->stream_id) : NULL;
        if (st && st->job == j->id && !st->responded) {
            if (j->status == GRPC_OK) {
                /* already framed by Python: zero or more messages */
                buf_init(&st->resp);
                buf_reserve(&st->resp, j->response_len + 1);
                if (!st->resp.failed) {
                    buf_bytes(&st->resp, j->response, j->response_len);
                    respond_ok(st);
                } else {
                    respond_error(st, GRPC_RESOURCE_EXHAUSTED, "out of memory", 200);
                }
            } else {
                respond_error(st, j->status, j->message, 200);
            }
            flush(c);
        }
        gs_job_free(j);
        j = next;
    }
}

/* --- nghttp2 callbacks --------------------------------------------------- */

static void cancel_job(g_server *s, uint64_t id) {
    pthread_mutex_lock(&s->qlock);
    if (s->ncancels == s->cap_cancels) {
        uint32_t cap = s->cap_cancels ? s->cap_cancels * 2 : 64;
        uint64_t *m = realloc(s->cancels, cap * sizeof *m);
        if (m) {
            s->cancels = m;
            s->cap_cancels = cap;
        }
    }
    /* bounded by the jobs in flight (max_jobs): each job is cancelled once */
    if (s->ncancels < s->cap_cancels) s->cancels[s->ncancels++] = id;
    pthread_mutex_unlock(&s->qlock);
    wake(s->py_fd);
}

static void stream_free(g_stream *st) {
    g_conn *c = st->conn;
    if (st->handed && !st->responded) cancel_job(c->srv, st->job);
    if (st->prev) st->prev->next = st->next;
    else c->streams = st->next;
    if (st->next) st->next->prev = st->prev;
    c->nstreams--;
    c->srv->nstreams--;
    body_release(st);
    c->srv->buffered -= st->headers.n;
    buf_free(&st->headers);
    buf_free(&st->resp);
    free(st->path);
    free(st->message);
    if (st->watch) c->srv->nwatches--;
    free(st->watch);
    free(st);
}

static int on_begin_headers(nghttp2_session *h2, const nghttp2_frame *f, void *user) {
    g_conn *c = user;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    if (c->srv->nstreams >= c->srv->o.max_streams) {
        /* the whole server holds its maximum: the client may retry this one */
        nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_REFUSED_STREAM);
        return 0;
    }
    g_stream *st = calloc(1, sizeof *st);
    if (!st) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream */
    st->id = f->hd.stream_id;
    st->method = M_OTHER;
    st->conn = c;
    st->next = c->streams;
    if (c->streams) c->streams->prev = st;
    c->streams = st;
    c->nstreams++;
    c->srv->nstreams++;
    nghttp2_session_set_stream_user_data(h2, st->id, st);
    return 0;
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *user) {
    (void)flags;
    (void)user;
    if (f->hd.type != NGHTTP2_HEADERS) return 0;
    g_stream *st = nghttp2_session_get_stream_user_data(h2, f->hd.stream_id);
    if (!st) return 0;
    st->header_bytes += nlen + vlen + 32;
    if (st->header_bytes > MAX_HEADER_BYTES) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (nlen == 5 && memcmp(name, ":path", 5) == 0) {
        free(st->path);
        st->path = dup_n(value, vlen);
        st->method = M_OTHER;
        for (size_t i = 0; i < sizeof METHODS / sizeof METHODS[0]; i++)
            if (strlen(METHODS[i].path) == vlen && memcmp(METHODS[i].path, value, vlen) == 0) st->method = METHODS[i].method;
    } else if (nlen == 7 && memcmp(name, ":method", 7) == 0) {
        st->is_post = vlen == 4 && memcmp(value, "POST", 4) == 0;
    } else if (nlen == 12 && memcmp(name, "content-type", 12) == 0) {
        st->content_type_ok = vlen >= 16 && memcmp(value, "application/grpc", 16) == 0 &&
                              (vlen == 16 || value[16] == '+' || value[16] == ';');
    } else if (nlen == 12 && memcmp(name, "grpc-timeout", 12) == 0) {
        int64_t t = parse_timeout(value, vlen);
        if (t >= 0) st->deadline_ns = now_ns() + t;
    } else if (nlen > 0 && name[0] != ':') {
        /* kept for a call handed to Python (its metadata), on the byte budget */
        g_server *s = st->conn->srv;
        if (s->buffered + nlen + vlen + 2 > s->o.max_buffered) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        size_t before = st->headers.n;
        buf_bytes(&st->headers, name, nlen);
        buf_bytes(&st->headers, "", 1);
        buf_bytes(&st->headers, value, vlen);
        buf_bytes(&st->headers, "", 1);
        if (st->headers.failed) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        s->buffered += st->headers.n - before;
    }
    return 0;
}

static int on_data(nghttp2_session *h2, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *user) {
    (void)flags;
    g_conn *c = user;
    g_server *s = c->srv;
    g_stream *st = nghttp2_session_get_stream_user_data(h2, id);
    if (!st || st->responded) return 0;
    if (st->body.n + len > (size_t)s->o.max_message + 5) {
        char m[128];
        snprintf(m, sizeof m, "received message larger than max (%zu vs. %u)", st->body.n + len - 5, s->o.max_message);
        body_release(st);
        respond_error(st, GRPC_RESOURCE_EXHAUSTED, m, 200);
        return 0;
    }
    if (s->buffered + len > s->o.max_buffered) {
        body_release(st);
        respond_error(st, GRPC_RESOURCE_EXHAUSTED, "server is holding too many request bytes", 200);
        return 0;
    }
    size_t before = st->body.n;
    buf_bytes(&st->body, data, len);
    if (st->body.failed) {
        st->body.n = before;
        body_release(st);
        respond_error(st, GRPC_RESOURCE_EXHAUSTED, "out of memory", 200);
        return 0;
    }
    s->buffered += len;
    return 0;
}

static int on_frame(nghttp2_session *h2, const nghttp2_frame *f, void *user) {
    (void)user;
    if ((f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS) && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        g_stream *st = nghttp2_session_get_stream_user_data(h2, f->hd.stream_id);
        if (st && !st->responded && !st->handed) on_request(st);
    }
    return 0;
}

static int on_close(nghttp2_session *h2, int32_t id, uint32_t code, void *user) {
    (void)code;
    (void)user;
    g_stream *st = nghttp2_session_get_stream_user_data(h2, id);
    if (st) {
        nghttp2_session_set_stream_user_data(h2, id, NULL);
        stream_free(st);
    }
    return 0;
}

static nghttp2_session_callbacks *CALLBACKS;

/* --- connections ---------------------------------------------------------- */

static void conn_close(g_conn *c) {
    g_server *s = c->srv;
    epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
    nghttp2_session_del(c->h2); /* calls no callbacks: our streams are freed below */
    while (c->streams) stream_free(c->streams);
    buf_free(&c->out);
    s->by_fd[c->fd] = NULL;
    close(c->fd);
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->nconns--;
    bump(&s->stats.open_connections, (uint64_t)-1);
    free(c);
}

static void set_events(g_conn *c) {
    int want_out = c->out.n > c->out_off;
    int want_in = c->out.n - c->out_off < OUT_HIGH_WATER;
    if (want_out == c->epollout && want_in == c->reading) return;
    struct epoll_event ev = {0};
    ev.events = (want_in ? EPOLLIN : 0) | (want_out ? EPOLLOUT : 0) | EPOLLRDHUP;
    ev.data.ptr = c;
    epoll_ctl(c->srv->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->epollout = want_out;
    c->reading = want_in;
}

/* Writes what nghttp2 has to send; marks the connection dead on error. */
static void flush(g_conn *c) {
    if (c->dead) return;
    for (;;) {
        while (c->out.n > c->out_off) {
            ssize_t w = send(c->fd, c->out.p + c->out_off, c->out.n - c->out_off, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    set_events(c);
                    return;
                }
                c->dead = 1;
                return;
            }
            c->out_off += (size_t)w;
        }
        c->out.n = c->out_off = 0;
        int produced = 0;
        for (;;) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(c->h2, &data);
            if (n < 0) {
                c->dead = 1;
                return;
            }
            if (n == 0) break;
            buf_bytes(&c->out, data, (size_t)n);
            if (c->out.failed) {
                c->dead = 1;
                return;
            }
            produced = 1;
            if (c->out.n >= OUT_HIGH_WATER) break;
        }
        if (!produced) break;
    }
    set_events(c);
    if (!nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2) && c->out.n == 0) c->dead = 1;
}

static void conn_read(g_conn *c) {
    uint8_t buf[READ_CHUNK];
    for (int rounds = 0; rounds < 16 && !c->dead; rounds++) {
        if (c->out.n - c->out_off >= OUT_HIGH_WATER) break;
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) c->dead = 1;
            break;
        }
        if (n == 0) {
            c->dead = 1;
            break;
        }
        c->last_active_ns = now_ns();
        c->ping_outstanding = 0;
        ssize_t r = nghttp2_session_mem_recv(c->h2, buf, (size_t)n);
        if (r < 0) {
            c->dead = 1; /* nghttp2 queued a GOAWAY for a protocol error; best effort */
            flush(c);
            c->dead = 1;
            break;
        }
        flush(c); /* answer as we go: responses leave before the next read */
        if ((size_t)n < sizeof buf) break;
    }
}

static void conn_accept(g_server *s, int lfd) {
    for (int k = 0; k < 64; k++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* a level-triggered listener would wake us at once, forever: pause it */
                for (int i = 0; i < s->nlisteners; i++) epoll_ctl(s->ep, EPOLL_CTL_DEL, s->listeners[i], NULL);
                s->accept_paused_until = now_ns() + ACCEPT_PAUSE_NS;
            }
            return;
        }
        if (s->draining || s->nconns >= s->o.max_connections) {
            close(fd);
            continue;
        }
        if (fd >= s->by_fd_cap) {
            int cap = s->by_fd_cap ? s->by_fd_cap : 1024;
            while (cap <= fd) cap *= 2;
            g_conn **m = realloc(s->by_fd, (size_t)cap * sizeof *m);
            if (!m) {
                close(fd);
                continue;
            }
            memset(m + s->by_fd_cap, 0, (size_t)(cap - s->by_fd_cap) * sizeof *m);
            s->by_fd = m;
            s->by_fd_cap = cap;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails harmlessly on a Unix socket */
        g_conn *c = calloc(1, sizeof *c);
        if (!c || nghttp2_session_server_new(&c->h2, CALLBACKS, c) != 0) {
            free(c);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->serial = ++s->next_serial;
        c->srv = s;
        c->reading = 1;
        c->last_active_ns = now_ns();
        buf_init(&c->out);
        nghttp2_settings_entry iv[] = {
            {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, s->o.max_concurrent_streams},
            {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_BYTES},
        };
        nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 2);
        struct epoll_event ev = {0};
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.ptr = c;
        if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            nghttp2_session_del(c->h2);
            free(c);
            close(fd);
            continue;
        }
        s->by_fd[fd] = c;
        c->next = s->conns;
        if (s->conns) s->conns->prev = c;
        s->conns = c;
        s->nconns++;
        bump(&s->stats.connections, 1);
        bump(&s->stats.open_connections, 1);
        flush(c);
    }
}

/* --- the loop --------------------------------------------------------------- */

static void listen_all(g_server *s) {
    for (int i = 0; i < s->nlisteners; i++) {
        struct epoll_event ev = {0};
        ev.events = EPOLLIN;
        ev.data.ptr = &s->listeners[i];
        epoll_ctl(s->ep, EPOLL_CTL_ADD, s->listeners[i], &ev);
    }
}

static void sweep(g_server *s, int64_t now) {
    if (s->accept_paused_until && now > s->accept_paused_until && !s->drain_started) {
        s->accept_paused_until = 0;
        listen_all(s);
    }
    for (g_conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        int touched = 0;
        for (g_stream *st = c->streams; st; st = st->next) {
            if (st->deadline_ns && !st->responded && now > st->deadline_ns) {
                if (st->handed) cancel_job(s, st->job);
                respond_error(st, GRPC_DEADLINE_EXCEEDED, "Deadline Exceeded", 200);
                touched = 1;
            }
            if (st->watch && !st->watch_end && st->deadline_ns && now > st->deadline_ns) {
                st->watch_end = WATCH_DEADLINE; /* as grpcio ends a Watch at its deadline */
                nghttp2_session_resume_data(c->h2, st->id);
                touched = 1;
            }
        }
        if (s->o.keepalive_ms && !s->draining && now - c->last_active_ns > (int64_t)s->o.keepalive_ms * 1000000LL) {
            if (c->ping_outstanding) {
                c->dead = 1; /* no answer to the last PING within a whole interval */
            } else {
                nghttp2_submit_ping(c->h2, NGHTTP2_FLAG_NONE, NULL);
                c->ping_outstanding = 1;
                c->last_active_ns = now;
                touched = 1;
            }
        }
        if (s->drain_started && c->nstreams == 0) {
            c->dead = 1; /* drained: GOAWAY went out when the drain began */
            flush(c);
            c->dead = 1;
        }
        if (touched) flush(c);
        if (c->dead) conn_close(c);
    }
}

/* Every Watch whose service's status changed gets it (and one that is to
 * end, its trailers). */
static void wake_watchers(g_server *s, int end) {
    for (g_conn *c = s->conns; c; c = c->next) {
        int touched = 0;
        for (g_stream *st = c->streams; st; st = st->next) {
            if (!st->watch) continue;
            g_str name = {(const uint8_t *)st->watch, (uint32_t)st->watch_n};
            int status = health_status(s, &name);
            status = status < 0 ? SERVICE_UNKNOWN : status;
            if (status == st->watch_want && !end) continue;
            st->watch_want = status;
            if (end && !st->watch_end) st->watch_end = WATCH_DRAIN;
            nghttp2_session_resume_data(c->h2, st->id);
            touched = 1;
        }
        if (touched) flush(c);
    }
}

static void begin_drain(g_server *s) {
    s->drain_started = 1;
    s->drain_deadline = now_ns() + (int64_t)s->grace_ms * 1000000LL;
    for (int i = 0; i < s->nlisteners; i++) {
        epoll_ctl(s->ep, EPOLL_CTL_DEL, s->listeners[i], NULL);
        close(s->listeners[i]);
    }
    s->nlisteners = 0;
    wake_watchers(s, 0); /* a last change (NOT_SERVING, as the worker drains) first */
    wake_watchers(s, 1);
    for (g_conn *c = s->conns; c; c = c->next) {
        nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->h2),
                              NGHTTP2_NO_ERROR, NULL, 0);
        flush(c);
    }
}

static void *loop(void *arg) {
    g_server *s = arg;
    struct epoll_event evs[128];
    int64_t last_sweep = 0;
    for (;;) {
        int n = epoll_wait(s->ep, evs, 128, TICK_MS);
        for (int i = 0; i < n; i++) {
            void *ptr = evs[i].data.ptr;
            if (ptr == (void *)&s->wake_fd) {
                uint64_t v;
                ssize_t r = read(s->wake_fd, &v, sizeof v);
                (void)r;
                run_completions(s);
                continue;
            }
            int is_listener = 0;
            for (int k = 0; k < s->nlisteners; k++)
                if (ptr == (void *)&s->listeners[k]) {
                    conn_accept(s, s->listeners[k]);
                    is_listener = 1;
                }
            if (is_listener) continue;
            g_conn *c = ptr;
            if (c->dead) continue;
            if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) conn_read(c);
            if (!c->dead && (evs[i].events & EPOLLOUT)) flush(c);
            if (c->dead) conn_close(c);
        }
        int64_t now = now_ns();
        uint64_t gen = __atomic_load_n(&s->health_gen, __ATOMIC_ACQUIRE);
        if (gen != s->health_seen) {
            s->health_seen = gen;
            wake_watchers(s, 0);
        }
        if (__atomic_load_n(&s->draining, __ATOMIC_ACQUIRE) && !s->drain_started) begin_drain(s);
        if (now - last_sweep >= TICK_MS * 1000000LL || s->drain_started) {
            sweep(s, now);
            last_sweep = now;
        }
        __atomic_store_n(&s->loops, s->loops + 1, __ATOMIC_RELEASE);
        if (s->drain_started && (s->conns == NULL || now > s->drain_deadline)) break;
    }
    while (s->conns) conn_close(s->conns);
    __atomic_store_n(&s->finished, 1, __ATOMIC_RELEASE);
    wake(s->py_fd);
    return NULL;
}

/* --- the API ------------------------------------------------------------- */

static pthread_once_t callbacks_once = PTHREAD_ONCE_INIT;
static void make_callbacks(void) {
    nghttp2_session_callbacks_new(&CALLBACKS);
    nghttp2_session_callbacks_set_on_begin_headers_callback(CALLBACKS, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(CALLBACKS, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(CALLBACKS, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(CALLBACKS, on_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(CALLBACKS, on_close);
}

g_server *gs_new(const gs_options *o) {
    pthread_once(&callbacks_once, make_callbacks);
    if (!CALLBACKS) return NULL;
    g_server *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->o = *o;
    s->ep = epoll_create1(EPOLL_CLOEXEC);
    s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    s->py_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init(&s->qlock, NULL);
    pthread_mutex_init(&s->hlock, NULL);
    if (s->ep < 0 || s->wake_fd < 0 || s->py_fd < 0) {
        gs_free(s);
        return NULL;
    }
    struct epoll_event ev = {0};
    ev.events = EPOLLIN;
    ev.data.ptr = &s->wake_fd;
    epoll_ctl(s->ep, EPOLL_CTL_ADD, s->wake_fd, &ev);
    return s;
}

int gs_add_listener(g_server *s, int fd) {
    if (s->nlisteners >= MAX_LISTENERS || s->started) return -1;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
    s->listeners[s->nlisteners] = fd;
    struct epoll_event ev = {0};
    ev.events = EPOLLIN;
    ev.data.ptr = &s->listeners[s->nlisteners];
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) != 0) return -1;
    s->nlisteners++;
    return 0;
}

int gs_start(g_server *s) {
    if (s->started) return -1;
    if (pthread_create(&s->thread, NULL, loop, s) != 0) return -1;
    s->started = 1;
    return 0;
}

g_policy *gs_swap_policy(g_server *s, g_policy *p) {
    return __atomic_exchange_n(&s->policy, p, __ATOMIC_ACQ_REL);
}

uint64_t gs_loops(g_server *s) { return __atomic_load_n(&s->loops, __ATOMIC_ACQUIRE); }

int gs_python_fd(g_server *s) { return s->py_fd; }

void gs_set_health(g_server *s, const char *name, size_t n, int status) {
    if (n >= sizeof s->health[0].name) return;
    pthread_mutex_lock(&s->hlock);
    int i;
    for (i = 0; i < s->nhealth; i++)
        if (s->health[i].n == n && memcmp(s->health[i].name, name, n) == 0) break;
    if (status < 0) {
        if (i < s->nhealth) s->health[i] = s->health[--s->nhealth];
    } else if (i < s->nhealth) {
        s->health[i].status = status;
    } else if (s->nhealth < MAX_HEALTH) {
        memcpy(s->health[i].name, name, n);
        s->health[i].n = n;
        s->health[i].status = status;
        s->nhealth++;
    }
    pthread_mutex_unlock(&s->hlock);
    __atomic_fetch_add(&s->health_gen, 1, __ATOMIC_RELEASE);
    wake(s->wake_fd);
}

void gs_drain(g_server *s, uint32_t grace_ms) {
    s->grace_ms = grace_ms;
    __atomic_store_n(&s->draining, 1, __ATOMIC_RELEASE);
    wake(s->wake_fd);
}

int gs_finished(g_server *s) { return __atomic_load_n(&s->finished, __ATOMIC_ACQUIRE); }

void gs_free(g_server *s) {
    if (!s) return;
    if (s->started) {
        if (!gs_finished(s)) gs_drain(s, 0);
        pthread_join(s->thread, NULL);
    }
    for (int i = 0; i < s->nlisteners; i++) close(s->listeners[i]);
    gs_job_free(NULL);
    for (g_job *j = s->jobs_head, *n; j; j = n) {
        n = j->next;
        gs_job_free(j);
    }
    for (g_job *j = s->done_head, *n; j; j = n) {
        n = j->next;
        gs_job_free(j);
    }
    if (s->ep >= 0) close(s->ep);
    if (s->wake_fd >= 0) close(s->wake_fd);
    if (s->py_fd >= 0) close(s->py_fd);
    pthread_mutex_destroy(&s->qlock);
    pthread_mutex_destroy(&s->hlock);
    free(s->by_fd);
    free(s->cancels);
    free(s);
}

void gs_read_stats(g_server *s, gs_stats *out) {
    uint64_t *src = (uint64_t *)&s->stats, *dst = (uint64_t *)out;
    for (size_t i = 0; i < sizeof *out / sizeof(uint64_t); i++) dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}
