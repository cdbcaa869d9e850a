"""``guardian serve --engine native`` (experimental): the data plane of
guardian._native in place of grpc.aio's server.

It offers the part of grpc.aio.Server that guardian.server.app uses
(``add_generic_rpc_handlers``, ``add_registered_method_handlers``,
``add_insecure_port``, ``start``, ``stop``), so the services register
with it exactly as with grpcio. The C thread answers CheckLimit,
CheckLimits, ShouldRateLimit and health Check from a compiled form of the
policy in force, from memory tables and (with ``--batched``) from leases;
every call it does not answer itself (other methods, error cases, Redis
without leases, a lease's misses, low water and denials, descriptor
overrides, rules it cannot compile) comes here as a job and is answered by the registered Python handler on this
event loop, while the C thread keeps serving other streams. Streaming
methods (reflection, health Watch) answer UNIMPLEMENTED.

A module of its own beside the server's (app.py imports it only for
``--engine native``), so the grpcio engine never loads the extension.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import grpc

from .metrics import LATENCY_BUCKETS
from .service_rls import GLOBAL_SHADOW

log = logging.getLogger("guardian.server")

__all__ = ["NativeServer", "native_server", "build_plan", "available"]

_native: Any
_IMPORT_ERROR: Optional[BaseException] = None
try:
    from .. import _native  # type: ignore[no-redef,attr-defined,unused-ignore]
except ImportError as exc:  # not built: no libnghttp2 at build time, or a pure build
    _native = None
    _IMPORT_ERROR = exc

#: Methods the C thread answers (the rest are handed to Python).
NATIVE_METHODS = (
    "/guardian.v1.RateLimiter/CheckLimit",
    "/guardian.v1.RateLimiter/CheckLimits",
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    "/grpc.health.v1.Health/Check",
)
#: The operation label of guardian_native_calls_total for each of NATIVE_METHODS
#: (guardian._native.METHODS, the latency histogram's names); any other path is
#: "other" (a client's made-up paths must not grow the series).
_OPERATION = dict(zip(NATIVE_METHODS, ("check_limit", "check_limits", "should_rate_limit", "health_check")))
#: Fields of policy.Rule / Node / Domain the compiler knows; any other with a
#: non-default value makes the rule (or domain) Python's.
_RULE_FIELDS = {"path", "name", "unit", "requests_per_unit", "burst", "unlimited", "replaces",
                "shadow_mode", "detailed_metric", "quota_mode", "metadata", "config"}
_NODE_FIELDS = {"exact", "wildcards", "any_value", "rule", "path", "detailed", "value", "share_threshold",
                "value_to_metric"}
_DOMAIN_FIELDS = {"name", "root"}


def available() -> Tuple[bool, str]:
    """Whether the native engine is built here, and why not."""
    if _native is None:
        return False, f"guardian._native is not built ({_IMPORT_ERROR}); build with libnghttp2-dev installed"
    from .. import _impl

    if not _impl.USING_C:
        return False, "the native engine needs the C core (guardian._core)"
    return True, ""


#: sha256 (first 16 hex digits) of the Python code whose answers the C code
#: reproduces, as it was when the native engine was checked against it
#: (tests/integration/test_native_engine.py compares the two engines). When
#: that code changes, its calls go to Python until the C side is checked
#: again and these are updated (tests/unit/test_native_build.py says which).
CHECKED_AGAINST = {
    "rls": "93de3edcc54b6b4f",
    "v1": "0e888687ee01a2b9",
    "lease": "b8efccc28b34885c",
}


def python_digests() -> Dict[str, str]:
    """The digests of CHECKED_AGAINST for the code installed now."""
    import hashlib
    import inspect

    from . import buckets, policy, service_rls, service_v1, state

    # How a policy comes into force (State.commit is wrapped to compile it)
    # and how a bucket answers: both. app.py imports this module, so its
    # reload is read as text, not imported.
    common: List[Any] = [state.State, buckets.Bucket, _source_of("app.py", "Worker", "_reload_loop")]
    parts: Dict[str, List[Any]] = {
        # the whole service module: its helpers (_overall, _add_headers, _key...) decide too
        "rls": [service_rls, policy.Node, policy.Domain, policy.Match, policy.Rule, policy.glob_match,
                policy._metric_part, policy._bucket, *common],
        "v1": [service_v1.RateLimiterService.CheckLimit, service_v1.RateLimiterService.CheckLimits,
               service_v1.RateLimiterService._bucket, str(service_v1.MAX_CHECKS), *common],
    }
    # A lease hit (--batched): the backend's take, the book that reports the
    # bucket, the limiter's gate over it and the breaker behind the gate.
    from .. import _breaker, limiter
    from ..backends import _lease, batched_async

    parts["lease"] = [batched_async.AsyncBatchedRedisBackend.take, batched_async.AsyncBatchedRedisBackend.refill_if_low,
                      _lease.LeaseBook, _lease.LeaseTable, _lease.BatchedCommon.__init__,
                      limiter.AsyncRateLimiter.check_limit, limiter._Policy._gate, _breaker.CircuitBreaker]
    out = {}
    for name, objs in parts.items():
        h = hashlib.sha256()
        for obj in objs:
            try:
                h.update(obj.encode() if isinstance(obj, str) else inspect.getsource(obj).encode())
            except (OSError, TypeError):  # no source installed: never matches
                h.update(b"\0no source")
        out[name] = h.hexdigest()[:16]
    return out


def _source_of(filename: str, cls: str, method: str) -> str:
    """The source text of cls.method in this package's ``filename`` ("" if absent)."""
    import ast
    from pathlib import Path

    try:
        text = Path(__file__).with_name(filename).read_text()
    except OSError:
        return ""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    return ast.get_source_segment(text, item) or ""
    return ""


def _extras(obj: Any, known: Set[str]) -> bool:
    """True when a dataclass carries a field the compiler does not know, set."""
    for f in dataclasses.fields(obj):
        if f.name in known:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else object())
        if getattr(obj, f.name) != default:
            return True
    return False


def build_plan(state: Any, opts: Any, mirror_of: Optional[Callable[[Any], Any]] = None) -> Dict[str, Any]:
    """The policy in force as flat lists for guardian._native.CompiledPolicy.
    ``mirror_of(bucket)``: the LeaseMirror of a --batched bucket, or None
    when its checks must stay Python's (without it, all of them do)."""
    from envoy.service.ratelimit.v3 import rls_pb2

    from . import service_v1

    unit_enum = rls_pb2.RateLimitResponse.RateLimit.Unit
    tables: List[Any] = []
    table_index: Dict[int, int] = {}
    current = python_digests()
    lease_checked = current["lease"] == CHECKED_AGAINST["lease"]

    def index_of(table: Any, entry: Any) -> int:
        """The index of a core table the C thread can use (``entry`` is what
        the plan lists for it), or -1: the twin, or an injected clock that
        only Python can read."""
        if table is None or not hasattr(table, "_native_api"):
            return -1
        try:
            table._native_api()
        except ValueError:
            return -1
        if id(table) not in table_index:
            table_index[id(table)] = len(tables)
            tables.append(entry(table))
        return table_index[id(table)]

    def table_of(bucket: Any) -> int:
        """The index of a bucket's core table, or -1 when its checks are Python's:
        anything but an in-process core table or a lease (Redis, the twin)."""
        backend: Any = getattr(bucket, "backend", None)
        book = getattr(backend, "book", None)
        if book is not None:  # --batched: its lease table, given a mirror and the checked lease code
            if mirror_of is None or not lease_checked:
                return -1
            mirror, layout = mirror_of, backend.redis.layout
            return index_of(getattr(book.table, "_table", None), lambda table: {
                "table": table, "mirror": mirror(bucket), "P": layout.P, "tau": layout.tau,
                "tps": layout.ticks_per_second})
        if getattr(backend, "does_io", False):
            return -1
        return index_of(getattr(backend, "table", None), lambda table: table)

    v1_checked = current["v1"] == CHECKED_AGAINST["v1"]
    rls_checked = current["rls"] == CHECKED_AGAINST["rls"]
    limits = [(name, table_of(bucket) if v1_checked else -1) for name, (_rule, bucket) in state.limits.items()]
    rules: List[Dict[str, Any]] = []
    nodes: List[Any] = []
    domains = []

    def rule_of(rule: Any, shared: bool, named: bool) -> int:
        # detailed_metric and value_to_metric name a metric per request value:
        # Python's (the C counters are one per rule).
        python = _extras(rule, _RULE_FIELDS) or rule.detailed_metric or named
        table = -1
        if rule.config is not None and not rule.unlimited:
            table = table_of(state.rule_buckets.get(id(rule)))
            python = python or table < 0
        rules.append({
            "table": table,
            "emission_interval": rule.config.emission_interval if rule.config is not None else 0.0,
            "rpu": rule.requests_per_unit if 0 <= rule.requests_per_unit < 2**32 else 0,
            "window": rule.window,
            "unit": unit_enum.Value(rule.unit.upper()),
            "name": rule.name,
            "unlimited": rule.unlimited,
            "shadow": rule.shadow_mode,
            "quota": rule.quota_mode,
            "shared": shared,
            "python": python or not 0 <= rule.requests_per_unit < 2**32,
            "replaces": list(rule.replaces),
            "metric": rule.name or rule.path,
        })
        return len(rules) - 1

    class Unsupported(Exception):
        pass

    def node_of(node: Any, shared: bool = False, named: bool = False) -> int:
        """``shared``: a share_threshold wildcard on the way here (the bucket
        is keyed by its pattern); ``named``: a value_to_metric level."""
        if _extras(node, _NODE_FIELDS):
            raise Unsupported
        named = named or node.value_to_metric
        index = len(nodes)
        nodes.append(None)
        rule = rule_of(node.rule, shared, named) if node.rule is not None else -1
        exact = [(k, v, node_of(n, shared, named), False) for (k, v), n in node.exact.items()]
        wild = []
        for entry in node.wildcards:
            if len(entry) != 3:
                raise Unsupported
            key, parts, child = entry
            wild.append((key, "*".join(parts), node_of(child, shared or child.share_threshold, named),
                         child.share_threshold))
        anyv = [(k, "", node_of(n, shared, named), False) for k, n in node.any_value.items()]
        nodes[index] = (rule, exact, wild, anyv)
        return index

    for name, domain in state.policy.domains.items():
        mark = (len(nodes), len(rules))
        try:
            if _extras(domain, _DOMAIN_FIELDS):
                raise Unsupported
            root = node_of(domain.root)
            domains.append((name, root, False))
        except Unsupported:
            del nodes[mark[0]:], rules[mark[1]:]
            domains.append((name, -1, True))
    return {
        "tables": tables, "limits": limits, "rules": rules, "nodes": nodes, "domains": domains,
        # Redis without leases: every check is a round trip, Python's
        "python_all": bool(getattr(opts, "redis_url", None)) and not getattr(opts, "batched", False),
        # dynamic metadata (the request echoed, rules' metadata): Python's
        "rls_python": not rls_checked or bool(getattr(opts, "response_dynamic_metadata", False)),
        "shadow_mode": bool(getattr(opts, "shadow_mode", False)),
        "quota_mode": bool(getattr(opts, "quota_mode", False)),
        "checked": {"v1": v1_checked, "rls": rls_checked,
                    **({"lease": lease_checked} if getattr(opts, "batched", False) else {})},
        "response_headers": bool(getattr(opts, "response_headers", False)),
        "max_checks": int(getattr(service_v1, "MAX_CHECKS", 1024)),
    }


class _Abort(Exception):
    def __init__(self, code: Any, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Context:
    """The part of grpc.aio.ServicerContext guardian's services use."""

    def __init__(self, metadata: Tuple[Tuple[str, str], ...], deadline_ns: int) -> None:
        self._metadata = metadata
        self._deadline_ns = deadline_ns
        self.code: Any = None
        self.details = ""

    async def abort(self, code: Any, details: str = "", trailing_metadata: Any = None) -> None:
        raise _Abort(code, details)

    def invocation_metadata(self) -> Tuple[Tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> Optional[float]:
        if not self._deadline_ns:
            return None
        return max(self._deadline_ns - time.monotonic_ns(), 0) / 1e9

    def set_code(self, code: Any) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def peer(self) -> str:
        return "native"


class _CallDetails:
    def __init__(self, method: str, metadata: Any) -> None:
        self.method = method
        self.invocation_metadata = metadata


class _HealthMirror(dict):  # type: ignore[type-arg]
    """grpc_health's status table, mirrored into the C thread on every write."""

    def __init__(self, initial: Dict[str, int], server: Any) -> None:
        super().__init__()
        self._server = server
        for k, v in initial.items():
            self[k] = v

    def __setitem__(self, key: str, value: int) -> None:
        super().__setitem__(key, value)
        self._server.set_health(key, int(value))

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._server.set_health(key, -1)


class NativeServer(grpc.aio.Server):  # type: ignore[misc]
    """A stand-in for grpc.aio.Server over guardian._native.Server (a
    subclass, so that services registering an asyncio servicer for an aio
    server, like reflection, do so here too)."""

    def __init__(self, opts: Any, state: Any, health: Any) -> None:
        assert _native is not None
        self.opts = opts
        self.state = state
        self.health = health
        self.core = _native.Server()
        self._registered: Dict[str, Any] = {}
        self._generic: List[Any] = []
        self._tasks: Dict[int, "asyncio.Task[Any]"] = {}
        self._seen: Dict[Tuple[int, int], Tuple[int, ...]] = {}
        self._seen_local: Dict[int, int] = {}
        #: id(policy) -> (remote, {limit: lease hits}) as last folded
        self._seen_lease: Dict[int, Tuple[int, Dict[str, int]]] = {}
        #: id(backend) -> (backend, its LeaseMirror): one per --batched backend, for the server's life
        self._mirrors: Dict[int, Tuple[Any, Any]] = {}
        self._seen_latency: Dict[str, List[float]] = {}
        self._policies: List[Any] = []  # the current one and replaced ones not yet folded
        self._ticker: Optional["asyncio.Task[Any]"] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._closed = False
        self._warned: Set[str] = set()
        #: operation -> calls the C thread handed to Python (counted as they are taken)
        self._handed: Dict[str, int] = {}
        #: operation -> calls the C thread answered, as last read (kept once it is closed)
        self._in_c: Dict[str, int] = {}
        # Reloads: State.commit swaps the buckets in (install and SIGHUP's
        # prepare-then-commit both end there), then this compiles and swaps.
        commit = state.commit

        def commit_and_compile(prepared: Any) -> None:
            commit(prepared)
            if self._loop is not None and not self._closed:
                self._compile()

        state.commit = commit_and_compile
        # Buckets a reload dropped stay reachable from the C thread until the
        # policy that names them retires: closed (and their counters read for
        # the last time) only then, so no check taken meanwhile goes uncounted.
        # A guardian.v1 table's counts move into Stats at once, as State.retire
        # does (no longer listed, the table would drop out of /metrics and the
        # counter go down meanwhile), and what it counts after, at retirement.
        self._dropped: List[Tuple[Any, Any, Any]] = []  # (ident, bucket, counts moved) since the last compile
        self._retire_after: Dict[int, List[Tuple[Any, Any, Any]]] = {}  # id(policy) -> its dropped buckets
        state.retire = self._drop
        snapshot = state.stats.snapshot

        def snapshot_with_native() -> Dict[str, Any]:
            self._fold()
            snap: Dict[str, Any] = snapshot()
            snap["gauges"] = {**snap.get("gauges", {}), **self._answered_by()}
            return snap

        state.stats.snapshot = snapshot_with_native

    # --- grpc.aio.Server's surface ----------------------------------------

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Dict[str, Any]) -> None:
        for method, handler in handlers.items():
            self._registered[f"/{service}/{method}"] = handler

    def add_insecure_port(self, address: str) -> int:
        try:
            sock, port = _listen(address, self.opts.workers > 1)
        except OSError as exc:
            raise RuntimeError(f"Failed to bind to address {address}: {exc}") from exc
        self.core.add_listener(sock.detach())
        return port

    def add_secure_port(self, address: str, server_credentials: Any) -> int:
        raise RuntimeError("the native engine serves plaintext HTTP/2 only (a sidecar on loopback)")

    async def wait_for_termination(self, timeout: Optional[float] = None) -> bool:
        while not self.core.finished:
            await asyncio.sleep(0.05)
        return True

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._compile()
        self.health._server_status = _HealthMirror(dict(self.health._server_status), self.core)
        self.core.start()
        self._loop.add_reader(self.core.python_fd, self._on_jobs)
        self._ticker = asyncio.ensure_future(self._tick())
        log.debug("guardian: native engine: %s answered in C, other calls by Python",
                  ", ".join(m.rsplit("/", 1)[1] for m in NATIVE_METHODS))

    async def stop(self, grace: Optional[float]) -> None:
        if self._closed:
            return
        self.core.drain(grace or 0.0)
        while not self.core.finished:
            await asyncio.sleep(0.02)
        assert self._loop is not None
        self._loop.remove_reader(self.core.python_fd)
        for _, mirror in self._mirrors.values():
            self._loop.remove_reader(mirror.fd)
        if self._ticker is not None:
            self._ticker.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fold()
        self._closed = True
        self.core.close()

    # --- the policy and the counters ----------------------------------------

    def _compile(self) -> None:
        """Compiles the policy in force and swaps it in. Should that fail, every
        call goes to Python: the C side must never go on with an old policy."""
        assert _native is not None
        try:
            plan = build_plan(self.state, self.opts, self._mirror_of)
            compiled = _native.CompiledPolicy(plan)
        except Exception:  # noqa: BLE001 - any failure: Python answers everything
            log.exception("guardian: cannot compile the policy for the native engine; "
                          "every call is answered by Python")
            plan = {"tables": [], "limits": [], "rules": [], "nodes": [], "domains": [], "python_all": True,
                    "response_headers": False, "max_checks": 0}
            compiled = _native.CompiledPolicy(plan)
        for part, checked in plan.get("checked", {}).items():
            if not checked and part not in self._warned:
                self._warned.add(part)
                log.warning("guardian: the Python %s code changed since the native engine was checked against "
                            "it (guardian.server.native.CHECKED_AGAINST): its calls are answered by Python",
                            {"rls": "Envoy RLS", "v1": "guardian.v1", "lease": "batched lease"}[part])
        self.core.install(compiled)
        dropped, self._dropped = self._dropped, []
        if self._policies:
            self._retire_after.setdefault(id(self._policies[-1]), []).extend(dropped)
        else:
            for ident, old, moved in dropped:
                self._retire(ident, old, moved)
        self._policies.append(compiled)

    def _mirror_of(self, bucket: Any) -> Any:
        """The LeaseMirror of a --batched bucket, made and attached on first use:
        the book tells it every reservation, the breaker when failures start
        and end (then every check of the bucket is Python's)."""
        assert _native is not None
        backend = bucket.backend
        entry = self._mirrors.get(id(backend))
        if entry is not None:
            return entry[1]
        mirror = _native.LeaseMirror()
        backend.book.observe(mirror)
        breaker = getattr(bucket.limiter, "breaker", None)
        if breaker is not None:
            breaker.watch = mirror.failing
            mirror.failing(bool(breaker.failures))
        assert self._loop is not None
        self._loop.add_reader(mirror.fd, self._low_hits, backend, mirror)
        self._mirrors[id(backend)] = (backend, mirror)
        return mirror

    @staticmethod
    def _low_hits(backend: Any, mirror: Any) -> None:
        """Hits C answered that left their lease at or below its low water:
        the refills Python's own hits would have started."""
        for key, left in mirror.take_low():
            try:
                backend.refill_if_low(key, left)
            except Exception:  # noqa: BLE001 - one key's refill must not stop the others'
                log.exception("guardian: starting a lease refill failed")

    def _drop(self, ident: Any, old: Any) -> None:
        """State.retire, deferred: a v1 table's counts so far go to Stats now."""
        moved = None
        if ident[0].startswith("v1:"):
            moved = old.backend.stats()
            for result in ("allowed", "denied"):
                if moved[result]:
                    self.state.stats.count(ident[0][3:], result, moved[result])
        self._dropped.append((ident, old, moved))

    def _retire(self, ident: Any, old: Any, moved: Any) -> None:
        """A dropped bucket the C thread can no longer reach: what it counted
        since it was dropped goes to Stats, and it is closed."""
        if moved is not None:
            now = old.backend.stats()
            for result in ("allowed", "denied"):
                if now[result] != moved[result]:
                    self.state.stats.count(ident[0][3:], result, now[result] - moved[result])
        old.backend.close()

    def _fold(self) -> None:
        """Adds what the C thread counted since the last fold to the worker's
        Stats (so /metrics reads native and Python counts as one)."""
        stats = self.state.stats
        retired = {id(p) for p in self.core.retire()}
        latency = self.core.stats()["latency"] if not self._closed else {}
        keep = []
        for p in self._policies:
            local, rows, shadowed = p.counts()
            rows = [*rows, (GLOBAL_SHADOW, 0, 0, shadowed, 0)]
            key = id(p)
            stats.local += local - self._seen_local.get(key, 0)
            self._seen_local[key] = local
            remote, hits = p.lease_counts()
            seen_remote, seen_hits = self._seen_lease.get(key, (0, {}))
            stats.remote += remote - seen_remote
            for limit, n in hits.items():
                if n != seen_hits.get(limit, 0):
                    stats.count(limit, "allowed", n - seen_hits.get(limit, 0))
            self._seen_lease[key] = (remote, hits)
            for i, (metric, *counts) in enumerate(rows):
                before = self._seen.get((key, i), (0, 0, 0, 0))
                for result, now, then in zip(("allowed", "denied", "shadow_denied", "unlimited"), counts, before):
                    if now != then:
                        stats.count(metric, result, now - then)
                self._seen[(key, i)] = tuple(counts)
            if key in retired:
                for ident, old, moved in self._retire_after.pop(key, ()):
                    self._retire(ident, old, moved)
                self._seen_local.pop(key, None)
                self._seen_lease.pop(key, None)
                for i in range(len(rows)):
                    self._seen.pop((key, i), None)
            else:
                keep.append(p)
        self._policies = keep
        for op, (buckets, total) in latency.items():
            if op == "health_check":
                continue
            last = self._seen_latency.get(op)
            # Stats.observe's shape: a count per LATENCY_BUCKETS bound and one
            # above them (C's array has a spare slot after those), then the sum
            current = [float(b) for b in buckets[:len(LATENCY_BUCKETS) + 1]] + [total]
            delta = [a - b for a, b in zip(current, last)] if last else current
            self._seen_latency[op] = current
            if any(delta):
                h = stats.latency.setdefault(op, [0.0] * len(current))
                for i, d in enumerate(delta):
                    h[i] += d

    def _answered_by(self) -> Dict[str, float]:
        """guardian_native_calls_total as gauges of the snapshot
        ("native_calls:<operation>:<native|python>", summed over workers):
        the calls the C thread answered itself, and those it handed to Python.
        Live counts of this worker's server (a restarted worker starts at 0)."""
        if not self._closed:
            self._in_c = dict(self.core.stats()["calls"])
        out = {f"native_calls:{op}:native": float(n) for op, n in self._in_c.items()}
        for op, n in self._handed.items():
            out[f"native_calls:{op}:python"] = float(n)
        return out

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                self._fold()
            except Exception:  # noqa: BLE001 - the next tick retries; a dead task would never free old policies
                log.exception("guardian: folding the native engine's counters failed")

    # --- calls handed to Python --------------------------------------------

    def _on_jobs(self) -> None:
        try:
            os.read(self.core.python_fd, 8)
        except BlockingIOError:
            pass
        for job in self.core.take_jobs():
            op = _OPERATION.get(job[1], "other")
            self._handed[op] = self._handed.get(op, 0) + 1
            task = asyncio.ensure_future(self._answer(*job))
            self._tasks[job[0]] = task
            task.add_done_callback(self._forget(job[0]))
        for job_id in self.core.take_cancels():
            running = self._tasks.get(job_id)
            if running is not None:
                running.cancel()  # the client is gone or its deadline passed

    def _forget(self, job: int) -> Any:
        def forget(_task: "asyncio.Task[Any]") -> None:
            self._tasks.pop(job, None)

        return forget

    def _handler(self, path: str, metadata: Any) -> Any:
        handler = self._registered.get(path)
        if handler is None:
            details = _CallDetails(path, metadata)
            for generic in self._generic:
                handler = generic.service(details)
                if handler is not None:
                    break
        return handler

    async def _answer(self, job: int, path: str, payload: bytes, metadata: Any, deadline_ns: int) -> None:
        try:
            status, message, response = await self._call(path, payload, metadata, deadline_ns)
        except asyncio.CancelledError:
            status, message, response = grpc.StatusCode.UNAVAILABLE.value[0], "server stopping", b""
            self.core.complete(job, status, message, response)
            raise
        self.core.complete(job, status, message, response)

    async def _call(self, path: str, body: bytes, metadata: Any, deadline_ns: int) -> Tuple[int, str, bytes]:
        """(status, message, framed response messages) from the registered handler.
        Streaming calls are buffered: every request message has arrived
        (the client half-closed) before the handler runs, and its responses
        leave when it returns; server-streaming methods are refused."""
        handler = self._handler(path, metadata)
        if handler is None:
            return grpc.StatusCode.UNIMPLEMENTED.value[0], "Method not found!", b""
        if handler.response_streaming and not handler.request_streaming:
            return (grpc.StatusCode.UNIMPLEMENTED.value[0],
                    "server-streaming methods are not served by the native engine (use --engine grpcio)", b"")
        try:
            messages = _split(body)
            decode = handler.request_deserializer or (lambda b: b)
            requests = [decode(m) for m in messages]
        except Exception:  # noqa: BLE001 - as grpcio answers
            return grpc.StatusCode.INTERNAL.value[0], "Exception deserializing request!", b""
        if not handler.request_streaming and len(requests) != 1:
            return grpc.StatusCode.INTERNAL.value[0], "a unary call carries one message", b""
        context = _Context(metadata, deadline_ns)
        try:
            run = self._run(handler, requests, context)
            remaining = context.time_remaining()
            responses = await (asyncio.wait_for(run, remaining) if remaining is not None else run)
        except _Abort as a:
            return a.code.value[0], a.details, b""
        except asyncio.TimeoutError:
            return grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded", b""
        except Exception as exc:  # noqa: BLE001 - as grpcio answers an exception in a handler
            log.exception("guardian: unexpected error in %s", path)
            return grpc.StatusCode.UNKNOWN.value[0], f"Unexpected {type(exc)}: {exc}", b""
        if context.code is not None and context.code != grpc.StatusCode.OK:
            return context.code.value[0], context.details, b""
        try:
            encode = handler.response_serializer or (lambda m: m)
            return 0, "", b"".join(_frame(encode(r)) for r in responses)
        except Exception:  # noqa: BLE001
            return grpc.StatusCode.INTERNAL.value[0], "Failed to serialize response!", b""

    @staticmethod
    async def _run(handler: Any, requests: List[Any], context: _Context) -> List[Any]:
        if not handler.request_streaming:
            result = handler.unary_unary(requests[0], context)
            return [await result if asyncio.iscoroutine(result) else result]

        async def feed() -> Any:
            for r in requests:
                yield r

        if handler.response_streaming:
            out = []
            gen = handler.stream_stream(feed(), context)
            if hasattr(gen, "__aiter__"):
                async for r in gen:
                    out.append(r)
            else:
                for r in gen:
                    out.append(r)
            return out
        result = handler.stream_unary(feed(), context)
        return [await result if asyncio.iscoroutine(result) else result]


def _split(body: bytes) -> List[bytes]:
    """The messages of a request body (the C side checked the framing)."""
    out, off = [], 0
    while off < len(body):
        n = int.from_bytes(body[off + 1:off + 5], "big")
        out.append(body[off + 5:off + 5 + n])
        off += 5 + n
    return out


def _frame(message: bytes) -> bytes:
    return b"\0" + len(message).to_bytes(4, "big") + message


def _listen(address: str, reuse_port: bool) -> Tuple[socket.socket, int]:
    if address.startswith("unix:"):
        path = address[5:]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if os.path.exists(path):
                os.unlink(path)  # a stale socket file, as grpcio replaces it
            sock.bind(path)
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        return sock, 0
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    infos = socket.getaddrinfo(host or None, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock, sock.getsockname()[1]


def native_server(opts: Any, state: Any, health: Any) -> Optional[NativeServer]:
    """The native server for a worker, or None (logged) when it cannot run here."""
    ok, why = available()
    if not ok:
        log.error("guardian: --engine native: %s", why)
        return None
    return NativeServer(opts, state, health)
