# cython: language_level=3, embedsignature=True
# (no negative indexing in this file: a build may turn wraparound off)
"""guardian's native data plane (experimental): a gRPC server in C over
libnghttp2 on its own thread, answering CheckLimit, CheckLimits,
ShouldRateLimit and health Check from a compiled policy and the core's
tables, and handing every other call to Python (guardian.server.native).

This module is the thin boundary: it turns a plan built in Python into the
C structs of _dataplane/policy.h and moves jobs between the C queues and
Python objects. No GCRA arithmetic here or in _dataplane/: takes go
through the capsule guardian._core exports (Table._native_api).
"""

from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, strlen

cdef extern from "_dataplane/core_api.h":
    ctypedef struct g_decision:
        pass
    ctypedef struct g_core_api:
        unsigned version
        unsigned decision_size
        int (*params)(void *table, int64_t *capacity, double *scale) nogil
        int (*spend)(void *table, const unsigned char *key, size_t n, int64_t cost, int64_t *left,
                     g_decision *d) nogil
        int (*unspend)(void *table, const unsigned char *key, size_t n, g_decision *d) nogil
    enum: G_CORE_API_VERSION

cdef extern from "_dataplane/pb.h":
    ctypedef struct g_str:
        const uint8_t *p
        uint32_t n
    ctypedef struct g_check_req:
        g_str key, limit
        uint64_t cost
    ctypedef struct g_entry:
        g_str key, value
    ctypedef struct g_descriptor:
        uint32_t first, count
        int has_limit
        uint32_t limit_rpu
        int32_t limit_unit
        int has_hits
        uint64_t hits
    ctypedef struct g_rls_req:
        g_str domain
        uint32_t hits_addend
        g_descriptor *descs
        uint32_t ndescs, max_descs
        g_entry *entries
        uint32_t nentries, max_entries
    int pb_decode_check(const uint8_t *p, size_t n, g_check_req *out)
    int pb_decode_checks(const uint8_t *p, size_t n, g_check_req *out, uint32_t max, uint32_t *count)
    int pb_decode_rls(const uint8_t *p, size_t n, g_rls_req *out)
    int pb_decode_health(const uint8_t *p, size_t n, g_str *service)
    enum: PB_OK
    enum: PB_MALFORMED
    enum: PB_TOO_MANY

cdef extern from "_dataplane/lease.h" nogil:
    ctypedef struct g_low_hit:
        uint8_t *key
        uint32_t n
        int64_t left
    ctypedef struct g_lease:
        int64_t low_cap
        int failing
        int broken
        int efd
    enum: G_LOW_HITS
    uint32_t lease_take_low(g_lease *m, g_low_hit *out, uint32_t max)
    int lease_init(g_lease *m, uint64_t k0, uint64_t k1)
    void lease_destroy(g_lease *m)
    int lease_set(g_lease *m, const uint8_t *key, size_t n, int64_t ahead, int64_t ahead_at, int64_t low)
    void lease_drop(g_lease *m, const uint8_t *key, size_t n)
    void lease_clear(g_lease *m)
    int lease_get(g_lease *m, const uint8_t *key, size_t n, int64_t *ahead, int64_t *ahead_at)
    uint32_t lease_count(g_lease *m)

cdef extern from *:
    void __atomic_store_n(int64_t *p, int64_t v, int order) nogil
    void __atomic_store_int "__atomic_store_n"(int *p, int v, int order) nogil
    enum: __ATOMIC_RELEASE

cdef extern from "_dataplane/policy.h":
    ctypedef struct g_table_ref:
        void *table
        int64_t capacity
        double scale
        g_lease *lease
        int64_t P, tau, tps
    ctypedef struct g_limit:
        char *name
        uint32_t name_len
        int table
        uint64_t lease_hits
    ctypedef struct g_rule_counts:
        uint64_t allowed, denied, shadow_denied, unlimited
    ctypedef struct g_rule:
        int table
        double emission_interval
        uint32_t rpu, window
        int32_t unit
        char *name
        uint32_t name_len
        int unlimited, shadow, python
        int quota, shared
        char **replaces
        uint32_t *replaces_len
        uint32_t nreplaces
        g_rule_counts counts
    ctypedef struct g_edge:
        char *key
        char *value
        uint32_t key_len, value_len
        int node
        int share
    ctypedef struct g_node:
        g_edge *exact
        g_edge *wild
        g_edge *any "any"
        uint32_t nexact, nwild, nany
        int rule
    ctypedef struct g_domain:
        char *name
        uint32_t name_len
        int root
        int python
    ctypedef struct g_policy_counts:
        uint64_t local, remote, global_shadow
    ctypedef struct g_policy:
        g_table_ref *tables
        uint32_t ntables
        g_limit *limits
        uint32_t nlimits
        g_rule *rules
        uint32_t nrules
        g_node *nodes
        uint32_t nnodes
        g_domain *domains
        uint32_t ndomains
        int python_all
        int rls_python
        int response_headers
        int shadow_mode, quota_mode
        uint32_t max_checks
        g_policy_counts counts
        const g_core_api *api
    void policy_free(g_policy *p)
    int policy_index(g_policy *p)

cdef extern from "_dataplane/server.h" nogil:
    ctypedef struct g_server:
        pass
    ctypedef struct gs_options:
        uint32_t max_concurrent_streams
        uint32_t max_message
        uint64_t max_buffered
        uint32_t max_jobs
        uint32_t max_connections
        uint32_t max_streams
        uint32_t keepalive_ms
    ctypedef struct g_job:
        uint64_t id
        char *path
        uint8_t *payload
        size_t payload_len
        uint8_t *headers
        size_t headers_len
        int64_t deadline_ns
        int status
        char *message
        uint8_t *response
        size_t response_len
        g_job *next
    ctypedef struct gs_stats:
        uint64_t calls[4]
        uint64_t handoffs, errors, connections, open_connections
        uint64_t latency[4][15]
        uint64_t latency_ns[4]
    g_server *gs_new(const gs_options *o)
    int gs_add_listener(g_server *s, int fd)
    int gs_start(g_server *s)
    g_policy *gs_swap_policy(g_server *s, g_policy *p)
    uint64_t gs_loops(g_server *s)
    int gs_python_fd(g_server *s)
    g_job *gs_take_jobs(g_server *s)
    void gs_job_free(g_job *j)
    uint32_t gs_take_cancels(g_server *s, uint64_t *out, uint32_t max)
    void gs_complete(g_server *s, g_job *j)
    void gs_set_health(g_server *s, const char *name, size_t n, int status)
    void gs_drain(g_server *s, uint32_t grace_ms)
    int gs_finished(g_server *s)
    void gs_free(g_server *s)
    void gs_read_stats(g_server *s, gs_stats *out)

cdef extern from "time.h" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    enum: CLOCK_MONOTONIC

__all__ = ["Server", "CompiledPolicy", "decode_check", "decode_checks", "decode_rls", "decode_health",
           "METHODS"]

#: The calls answered natively (the rest go to Python); index = the C method id.
METHODS = ("check_limit", "check_limits", "should_rate_limit", "health_check")

cdef const g_core_api *_api_of(object table) except NULL:
    capsule = table._native_api()
    if not PyCapsule_IsValid(capsule, b"guardian._core.native_api"):
        raise RuntimeError("guardian._core exported no native API capsule")
    cdef const g_core_api *api = <const g_core_api *>PyCapsule_GetPointer(capsule, b"guardian._core.native_api")
    if api.version != G_CORE_API_VERSION or api.decision_size != sizeof(g_decision):
        raise RuntimeError("guardian._core and guardian._native were built from different sources")
    return api


def _spend_then_unspend(table, str key, int64_t cost, between):
    """For tests: the data plane's spend of ``cost`` from a lease table,
    ``between()``, then its undo (what a request C began and handed to
    Python does): (tokens left after the spend, the undo's code: 0 given
    back, 1 dropped)."""
    cdef const g_core_api *api = _api_of(table)
    cdef g_decision d
    cdef int64_t left
    b = key.encode()
    if api.spend(<void *>table, b, len(b), cost, &left, &d) != 0 or left < 0:
        raise ValueError("nothing spent")
    between()
    return left, api.unspend(<void *>table, b, len(b), &d)


cdef char *_cstr(bytes b, uint32_t *n) except? NULL:
    cdef char *p = <char *>malloc(len(b) + 1)
    if p == NULL:
        raise MemoryError()
    memcpy(p, <const char *>b, len(b))
    p[len(b)] = 0
    n[0] = <uint32_t>len(b)
    return p


cdef class LeaseMirror:
    """A copy of one batched backend's lease book for the data plane (see
    _dataplane/lease.h): a guardian.backends._lease.LeaseObserver, given to
    ``book.observe``, and the breaker's ``watch``. Lives as long as a
    compiled policy naming it (the policy holds it)."""

    cdef g_lease m
    cdef bint ready

    def __cinit__(self):
        import os
        seed = os.urandom(16)
        if lease_init(&self.m, int.from_bytes(seed[:8], "little"), int.from_bytes(seed[8:], "little")) != 0:
            raise MemoryError()
        self.ready = True

    def __dealloc__(self):
        if self.ready:
            lease_destroy(&self.m)
            self.ready = False

    def reserved(self, str key, int64_t ahead, int64_t ahead_at, int64_t low):
        b = key.encode("utf-8", "surrogatepass")
        if ahead < 0:
            lease_drop(&self.m, b, len(b))
        elif lease_set(&self.m, b, len(b), ahead, ahead_at, low) != 0:
            # No room to grow: without its entry the key's hits would report
            # the lease's own numbers, so from now on every hit is Python's.
            # Not raised: the book is crediting a reservation Redis granted.
            lease_drop(&self.m, b, len(b))
            __atomic_store_int(&self.m.broken, 1, __ATOMIC_RELEASE)

    def forgot(self, str key):
        b = key.encode("utf-8", "surrogatepass")
        lease_drop(&self.m, b, len(b))

    def forgot_all(self):
        lease_clear(&self.m)

    def low_water(self, int64_t low_cap):
        __atomic_store_n(&self.m.low_cap, low_cap, __ATOMIC_RELEASE)

    def failing(self, bint failing):
        """The breaker's watch: while True, every check of the backend is Python's."""
        __atomic_store_int(&self.m.failing, 1 if failing else 0, __ATOMIC_RELEASE)

    def get(self, str key):
        """(ahead, ahead_at) of the key's reservation, or None (for tests)."""
        cdef int64_t ahead, at
        b = key.encode("utf-8", "surrogatepass")
        if lease_get(&self.m, b, len(b), &ahead, &at):
            return ahead, at
        return None

    @property
    def fd(self):
        """Readable when hits answered in C left keys at or below the low
        water (then ``take_low``)."""
        return self.m.efd

    def take_low(self):
        """[(key, tokens left)] of the hits the data plane answered that left
        their key at or below the low water, oldest first (each starts a
        refill in Python, as its own hit would: refill_if_low)."""
        cdef g_low_hit hits[G_LOW_HITS]
        cdef uint32_t i, n
        import os
        try:
            os.read(self.m.efd, 8)
        except BlockingIOError:
            pass
        n = lease_take_low(&self.m, hits, G_LOW_HITS)
        out = []
        for i in range(n):
            out.append((hits[i].key[:hits[i].n].decode("utf-8", "surrogateescape"), hits[i].left))
            free(hits[i].key)
        return out

    def __len__(self):
        return lease_count(&self.m)

    @property
    def state(self):
        """(low_cap, failing) as the data plane reads them (failing: the
        breaker counts failures, or a reservation could not be copied)."""
        return _rd64(&self.m.low_cap), bool(_rdi(&self.m.failing) or _rdi(&self.m.broken))


cdef class CompiledPolicy:
    """A plan (see guardian.server.native.build_plan) as C structs. Holds
    the Table objects the structs point to for as long as it lives."""

    cdef g_policy *p
    cdef list tables
    cdef readonly list metrics   # rule index -> metric name (str)
    cdef bint installed

    def __cinit__(self):
        self.p = <g_policy *>calloc(1, sizeof(g_policy))
        if self.p == NULL:
            raise MemoryError()

    def __init__(self, plan):
        cdef g_policy *p = self.p
        cdef int64_t cap
        cdef double scale
        cdef uint32_t i, k
        self.tables = list(plan["tables"])
        self.metrics = []
        p.python_all = bool(plan["python_all"])
        p.rls_python = bool(plan.get("rls_python", False))
        p.response_headers = bool(plan["response_headers"])
        p.shadow_mode = bool(plan.get("shadow_mode", False))
        p.quota_mode = bool(plan.get("quota_mode", False))
        p.max_checks = plan["max_checks"]
        p.tables = <g_table_ref *>calloc(max(len(self.tables), 1), sizeof(g_table_ref))
        limits, rules, nodes, domains = plan["limits"], plan["rules"], plan["nodes"], plan["domains"]
        p.limits = <g_limit *>calloc(max(len(limits), 1), sizeof(g_limit))
        p.rules = <g_rule *>calloc(max(len(rules), 1), sizeof(g_rule))
        p.nodes = <g_node *>calloc(max(len(nodes), 1), sizeof(g_node))
        p.domains = <g_domain *>calloc(max(len(domains), 1), sizeof(g_domain))
        if not (p.tables and p.limits and p.rules and p.nodes and p.domains):
            raise MemoryError()
        for i, t in enumerate(self.tables):
            # a memory table, or a lease table: {"table", "mirror", "P", "tau", "tps"}
            table = t["table"] if isinstance(t, dict) else t
            api = _api_of(table)
            api.params(<void *>table, &cap, &scale)
            if isinstance(t, dict):
                mirror = <LeaseMirror?>t["mirror"]
                p.tables[i].lease = &mirror.m
                p.tables[i].P, p.tables[i].tau, p.tables[i].tps = t["P"], t["tau"], t["tps"]
                if not (p.tables[i].P >= 1 and p.tables[i].tps >= 1):
                    raise ValueError("a lease table needs P >= 1 and tps >= 1")
                scale = <double>p.tables[i].tps  # its results are in the Redis scripts' ticks
            p.api = api
            p.tables[i].table = <void *>table
            p.tables[i].capacity = cap
            p.tables[i].scale = scale
        p.ntables = len(self.tables)
        if p.api == NULL:
            from guardian._core import Table
            spare = Table(1, 1, 1, slots=8)  # only to reach the API
            self.tables.append(spare)
            p.api = _api_of(spare)
        for i, (name, table) in enumerate(limits):
            p.limits[i].name = _cstr(name.encode(), &p.limits[i].name_len)
            p.limits[i].table = table
            p.nlimits = i + 1
        for i, r in enumerate(rules):
            p.rules[i].table = r["table"]
            p.rules[i].emission_interval = r["emission_interval"]
            p.rules[i].rpu = r["rpu"]
            p.rules[i].window = r["window"]
            p.rules[i].unit = r["unit"]
            p.rules[i].name = _cstr(r["name"].encode(), &p.rules[i].name_len)
            p.rules[i].unlimited = r["unlimited"]
            p.rules[i].shadow = r["shadow"]
            p.rules[i].python = r["python"]
            p.rules[i].quota = bool(r.get("quota", False))
            p.rules[i].shared = bool(r.get("shared", False))
            reps = r["replaces"]
            p.rules[i].replaces = <char **>calloc(max(len(reps), 1), sizeof(char *))
            p.rules[i].replaces_len = <uint32_t *>calloc(max(len(reps), 1), sizeof(uint32_t))
            p.nrules = i + 1
            if p.rules[i].replaces == NULL or p.rules[i].replaces_len == NULL:
                raise MemoryError()
            for k, name in enumerate(reps):
                p.rules[i].replaces[k] = _cstr(name.encode(), &p.rules[i].replaces_len[k])
                p.rules[i].nreplaces = k + 1
            self.metrics.append(r["metric"])
        for i, (rule, exact, wild, anyv) in enumerate(nodes):
            p.nodes[i].rule = rule
            p.nnodes = i + 1
            p.nodes[i].exact = self._edges(exact, &p.nodes[i].nexact)
            p.nodes[i].wild = self._edges(wild, &p.nodes[i].nwild)
            p.nodes[i].any = self._edges(anyv, &p.nodes[i].nany)
        for i, (name, root, python) in enumerate(domains):
            p.domains[i].name = _cstr(name.encode(), &p.domains[i].name_len)
            p.domains[i].root = root
            p.domains[i].python = python
            p.ndomains = i + 1
        if policy_index(p) != 0:
            raise MemoryError()

    cdef g_edge *_edges(self, list edges, uint32_t *count) except? NULL:
        cdef g_edge *out = <g_edge *>calloc(max(len(edges), 1), sizeof(g_edge))
        if out == NULL:
            raise MemoryError()
        for i, edge in enumerate(edges):
            key, value, node = edge[0], edge[1], edge[2]
            out[i].key = _cstr(key.encode(), &out[i].key_len)
            out[i].value = _cstr(value.encode(), &out[i].value_len)
            out[i].node = node
            out[i].share = bool(edge[3]) if len(edge) > 3 else False
            count[0] = i + 1
        return out

    def counts(self):
        """(local checks, [(metric, allowed, denied, shadow_denied, unlimited)],
        requests --shadow-mode answered OK) as the data plane counted them
        under this policy."""
        cdef uint32_t i
        rows = []
        for i in range(self.p.nrules):
            c = &self.p.rules[i].counts
            rows.append((self.metrics[i], _rd(&c.allowed), _rd(&c.denied), _rd(&c.shadow_denied),
                         _rd(&c.unlimited)))
        return _rd(&self.p.counts.local), rows, _rd(&self.p.counts.global_shadow)

    def lease_counts(self):
        """(checks answered from leases, {guardian.v1 limit: its lease hits})
        under this policy: Python counts a batched check as remote, and by
        limit (a memory table's core counts its own)."""
        cdef uint32_t i
        hits = {}
        for i in range(self.p.nlimits):
            n = _rd(&self.p.limits[i].lease_hits)
            if n:
                hits[self.p.limits[i].name[:self.p.limits[i].name_len].decode()] = n
        return _rd(&self.p.counts.remote), hits

    def __dealloc__(self):
        if self.p != NULL and not self.installed:
            policy_free(self.p)
        self.p = NULL


cdef inline uint64_t _rd(uint64_t *c):
    return __atomic_load_n(c, __ATOMIC_RELAXED)

cdef inline int64_t _rd64(int64_t *c):
    return __atomic_load_i64(c, __ATOMIC_RELAXED)

cdef inline int _rdi(int *c):
    return __atomic_load_int(c, __ATOMIC_RELAXED)

cdef extern from *:
    uint64_t __atomic_load_n(uint64_t *p, int order) nogil
    int64_t __atomic_load_i64 "__atomic_load_n"(int64_t *p, int order) nogil
    int __atomic_load_int "__atomic_load_n"(int *p, int order) nogil
    enum: __ATOMIC_RELAXED


cdef class Server:
    """One data plane thread. Python creates the listening sockets and
    answers the jobs; see guardian.server.native for the lifecycle."""

    cdef g_server *s
    cdef dict jobs          # id -> <size_t>g_job*, taken and not yet completed
    cdef CompiledPolicy current
    cdef list retired       # [(loops at swap, CompiledPolicy)]

    def __cinit__(self, int max_concurrent_streams=1000, int max_message=4 * 1024 * 1024,
                  long long max_buffered=64 * 1024 * 1024, int max_jobs=4096,
                  int max_connections=4096, int max_streams=65536, int keepalive_ms=0):
        cdef gs_options o
        o.max_concurrent_streams = max_concurrent_streams
        o.max_message = max_message
        o.max_buffered = max_buffered
        o.max_jobs = max_jobs
        o.max_connections = max_connections
        o.max_streams = max_streams
        o.keepalive_ms = keepalive_ms
        self.s = gs_new(&o)
        if self.s == NULL:
            raise OSError("guardian: cannot create the native data plane (epoll/eventfd)")
        self.jobs = {}
        self.retired = []

    def add_listener(self, int fd):
        self._open()
        if gs_add_listener(self.s, fd) != 0:
            raise OSError(f"guardian: cannot listen on fd {fd} natively")

    def start(self):
        self._open()
        if gs_start(self.s) != 0:
            raise OSError("guardian: cannot start the native data plane thread")

    cdef int _open(self) except -1:
        if self.s == NULL:
            raise ValueError("the native server is closed")
        return 0

    @property
    def python_fd(self):
        """An eventfd readable when jobs wait (or the thread finished)."""
        return gs_python_fd(self.s)

    def install(self, CompiledPolicy policy):
        self._open()
        """Swaps the policy in at once; the old one is freed once the
        data plane thread cannot be reading it (see retire)."""
        policy.installed = True
        gs_swap_policy(self.s, policy.p)
        if self.current is not None:
            self.retired.append((gs_loops(self.s), self.current))
        self.current = policy

    def retire(self):
        """Frees replaced policies the thread has moved past; returns them
        (their counters are still readable until they are dropped)."""
        if self.s == NULL:
            return []
        cdef uint64_t loops = gs_loops(self.s)
        done = [p for at, p in self.retired if loops > at or gs_finished(self.s)]
        self.retired = [(at, p) for at, p in self.retired if not (loops > at or gs_finished(self.s))]
        for p in done:
            (<CompiledPolicy>p).installed = False  # __dealloc__ frees it when dropped
        return done

    def take_jobs(self):
        self._open()
        """[(id, path, payload, metadata, deadline_ns)] handed to Python."""
        cdef uint64_t v
        cdef g_job *j = gs_take_jobs(self.s)
        cdef g_job *nxt
        out = []
        while j != NULL:
            nxt = j.next
            j.next = NULL
            meta = []
            raw = (<char *>j.headers)[:j.headers_len] if j.headers_len else b""
            parts = raw.split(b"\0")
            for k in range(0, len(parts) - 1, 2):
                meta.append((parts[k].decode("latin-1"), parts[k + 1].decode("latin-1")))
            out.append((j.id, j.path.decode("utf-8", "replace"),
                        (<char *>j.payload)[:j.payload_len] if j.payload_len else b"",
                        tuple(meta), j.deadline_ns))
            self.jobs[j.id] = <size_t>j
            j = nxt
        return out

    def take_cancels(self):
        """Ids of taken jobs whose call ended before Python answered."""
        cdef uint64_t ids[256]
        cdef uint32_t n
        out = []
        if self.s == NULL:
            return out
        while True:
            n = gs_take_cancels(self.s, ids, 256)
            out.extend(ids[i] for i in range(n))
            if n < 256:
                return out

    def complete(self, uint64_t job_id, int status, str message, bytes response):
        """Python's answer to a job (status 0 with the serialized response,
        or a gRPC status code and message)."""
        addr = self.jobs.pop(job_id, None)
        if addr is None or self.s == NULL:
            return
        cdef g_job *j = <g_job *><size_t>addr
        cdef bytes m = message.encode("utf-8")
        j.status = status
        j.message = <char *>malloc(len(m) + 1)
        j.response = <uint8_t *>malloc(max(len(response), 1))
        if j.message != NULL:
            memcpy(j.message, <const char *>m, len(m))
            j.message[len(m)] = 0
        if j.response != NULL:
            memcpy(j.response, <const char *>response, len(response))
            j.response_len = len(response)
        if j.message == NULL or j.response == NULL:
            j.status = 8  # RESOURCE_EXHAUSTED
            j.response_len = 0
        gs_complete(self.s, j)

    def set_health(self, str name, int status):
        self._open()
        b = name.encode("utf-8")
        gs_set_health(self.s, b, len(b), status)

    def drain(self, double grace):
        self._open()
        gs_drain(self.s, <uint32_t>max(grace * 1000, 0))

    @property
    def finished(self):
        return self.s == NULL or bool(gs_finished(self.s))

    def stats(self):
        cdef gs_stats st
        if self.s == NULL:
            raise ValueError("the native server is closed")
        gs_read_stats(self.s, &st)
        return {
            "calls": {METHODS[i]: st.calls[i] for i in range(4)},
            "latency": {METHODS[i]: ([st.latency[i][b] for b in range(15)], st.latency_ns[i] / 1e9)
                        for i in range(4)},
            "handoffs": st.handoffs, "errors": st.errors, "connections": st.connections,
            "open_connections": st.open_connections,
        }

    def close(self):
        """Joins the thread (draining with no grace if still running)."""
        if self.s != NULL:
            if self.jobs:  # (None when the GC cleared it first)
                for addr in self.jobs.values():
                    gs_job_free(<g_job *><size_t>addr)
                self.jobs.clear()
            with nogil:
                gs_free(self.s)
            self.s = NULL
            if self.current is not None:
                self.current.installed = False
            for at, p in self.retired or ():
                (<CompiledPolicy>p).installed = False
            self.retired = []

    def __dealloc__(self):
        self.close()


# --- the decoders, exposed for the differential tests ---------------------

cdef str _s(g_str s):
    return (<const char *>s.p)[:s.n].decode("utf-8") if s.n else ""


def decode_check(bytes data):
    """CheckLimitRequest as (key, cost, limit), or None when malformed."""
    cdef g_check_req r
    if pb_decode_check(<const uint8_t *><const char *>data, len(data), &r) != PB_OK:
        return None
    return (_s(r.key), r.cost, _s(r.limit))


def decode_checks(bytes data, uint32_t max_checks=1024):
    """CheckLimitsRequest as [(key, cost, limit)], None when malformed, "too many" beyond max."""
    cdef g_check_req *out = <g_check_req *>malloc(max(max_checks, 1) * sizeof(g_check_req))
    cdef uint32_t n = 0
    if out == NULL:
        raise MemoryError()
    try:
        rc = pb_decode_checks(<const uint8_t *><const char *>data, len(data), out, max_checks, &n)
        if rc == PB_MALFORMED:
            return None
        if rc == PB_TOO_MANY:
            return "too many"
        return [(_s(out[i].key), out[i].cost, _s(out[i].limit)) for i in range(n)]
    finally:
        free(out)


def decode_rls(bytes data, uint32_t max_descs=1024, uint32_t max_entries=1024):
    """RateLimitRequest as (domain, hits_addend, [(entries, limit or None,
    hits or None)]), None when malformed, "too many" beyond the maxima."""
    cdef g_rls_req q
    q.descs = <g_descriptor *>malloc(max(max_descs, 1) * sizeof(g_descriptor))
    q.entries = <g_entry *>malloc(max(max_entries, 1) * sizeof(g_entry))
    q.max_descs = max_descs
    q.max_entries = max_entries
    if q.descs == NULL or q.entries == NULL:
        free(q.descs)
        free(q.entries)
        raise MemoryError()
    try:
        rc = pb_decode_rls(<const uint8_t *><const char *>data, len(data), &q)
        if rc == PB_MALFORMED:
            return None
        if rc == PB_TOO_MANY:
            return "too many"
        descs = []
        for i in range(q.ndescs):
            d = &q.descs[i]
            entries = [(_s(q.entries[d.first + k].key), _s(q.entries[d.first + k].value)) for k in range(d.count)]
            descs.append((entries, (d.limit_rpu, d.limit_unit) if d.has_limit else None,
                          d.hits if d.has_hits else None))
        return (_s(q.domain), q.hits_addend, descs)
    finally:
        free(q.descs)
        free(q.entries)


def decode_health(bytes data):
    cdef g_str s
    if pb_decode_health(<const uint8_t *><const char *>data, len(data), &s) != PB_OK:
        return None
    return _s(s)
