/* The data plane: a gRPC server over libnghttp2 on its own thread (epoll),
 * answering the hot RPCs in C from the compiled policy and handing every
 * other call to Python through a bounded job queue (an eventfd wakes the
 * asyncio loop; another wakes this thread when Python has answered). */
#ifndef GUARDIAN_SERVER_H
#define GUARDIAN_SERVER_H
#include <stddef.h>
#include <stdint.h>

#include "policy.h"

typedef struct g_server g_server;

typedef struct {
    uint32_t max_concurrent_streams;
    uint32_t max_message;       /* bytes of one request message */
    uint64_t max_buffered;      /* request and job bytes held at once, whole server */
    uint32_t max_jobs;          /* calls waiting for Python at once */
    uint32_t max_connections;
    uint32_t max_streams;       /* open streams, whole server (REFUSED_STREAM beyond) */
    uint32_t keepalive_ms;      /* PING an idle connection this often; 0: never */
} gs_options;

/* A call handed to Python. */
typedef struct g_job {
    uint64_t id;
    int fd;
    uint64_t serial;
    int32_t stream_id;
    char *path;
    uint8_t *payload;
    size_t payload_len;
    uint8_t *headers; /* name\0value\0 ... */
    size_t headers_len;
    int64_t deadline_ns; /* 0: none */
    /* the answer */
    int status;
    char *message;
    uint8_t *response;
    size_t response_len;
    struct g_job *next;
} g_job;

g_server *gs_new(const gs_options *o);
int gs_add_listener(g_server *s, int fd);
int gs_start(g_server *s);
/* Installs p (the server owns nothing of it); returns the previous one,
 * which may still be read until gs_loops(s) exceeds the value it had just
 * after this call. */
g_policy *gs_swap_policy(g_server *s, g_policy *p);
uint64_t gs_loops(g_server *s);
int gs_python_fd(g_server *s);
/* Jobs for Python, oldest first (the caller frees them with gs_job_free). */
g_job *gs_take_jobs(g_server *s);
void gs_job_free(g_job *j);
/* Ids of jobs whose call ended (client cancel, connection closed) before
 * Python answered: Python stops working on them. */
uint32_t gs_take_cancels(g_server *s, uint64_t *out, uint32_t max);
/* Python's answer to a job: takes ownership of j (its answer fields set;
 * the response already framed as gRPC messages). A job's payload is the
 * request body as received: framed, uncompressed messages. */
void gs_complete(g_server *s, g_job *j);
void gs_set_health(g_server *s, const char *name, size_t n, int status); /* status < 0: remove */
/* Stops accepting, sends GOAWAY, and ends the thread when no call is open
 * or after grace_ms. */
void gs_drain(g_server *s, uint32_t grace_ms);
int gs_finished(g_server *s);
void gs_free(g_server *s); /* joins the thread */

typedef struct {
    uint64_t calls[4], handoffs, errors, connections, open_connections;
    uint64_t latency[4][15]; /* per method: the buckets of metrics.LATENCY_BUCKETS + above */
    uint64_t latency_ns[4];
} gs_stats;
void gs_read_stats(g_server *s, gs_stats *out);
/* M_WATCH (health Watch, server-streaming) is answered in C but not timed:
 * a watch lasts as long as its client wants. */
enum { M_CHECK = 0, M_CHECKS = 1, M_RLS = 2, M_HEALTH = 3, M_OTHER = 4, M_WATCH = 5 };
#endif
