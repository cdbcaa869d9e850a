"""One serving process: the gRPC server (grpc.aio) with guardian.v1, Envoy
RLS v3, health and reflection; the HTTP port; signals; the backend monitor.

Signals: SIGTERM/SIGINT drain (health NOT_SERVING, stop accepting, wait up
to ``--grace`` seconds for in-flight calls, close backends) and exit 0;
SIGHUP reloads the policy file, keeping the old policy when the new one is
bad. Logs: one line per start, stop, reload and backend state change.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any, Dict, List, Optional, Tuple

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client.registry import CollectorRegistry

from .. import __version__
from .._errors import ConfigurationError
from ..v1 import guardian_pb2, guardian_pb2_grpc
from .backend_probe import REFUSED, UP, probe
from .config import ServeOptions, redact
from .policy import load_policy
from .probes import start_http
from .metrics import GuardianCollector, SnapshotStore
from .service_rls import RateLimitService
from .service_v1 import RateLimiterService
from .signals import stop_requested
from .state import State

__all__ = ["run_worker", "SERVICE_NAMES"]

log = logging.getLogger("guardian.server")

V1_NAME = guardian_pb2.DESCRIPTOR.services_by_name["RateLimiter"].full_name
RLS_NAME = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name
SERVICE_NAMES = (V1_NAME, RLS_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME)
#: Names gRPC health answers: the server, each service, and the name
#: envoyproxy/ratelimit registers (a deployment may already probe it).
HEALTH_NAMES = ("", V1_NAME, RLS_NAME, "ratelimit")
#: The GIL switch interval while a reload parses in a thread (default 5 ms).
RELOAD_SWITCH_INTERVAL = 0.0005
#: How often the backend is probed, and snapshots are written.
MONITOR_INTERVAL = 0.5
SNAPSHOT_INTERVAL = 1.0
#: Seconds after the grace that closing the backends (returning leases) may
#: take, and at least; below workers._KILL_MARGIN.
CLOSE_MARGIN = 0.75
MIN_CLOSE = 0.5


#: Seconds between a worker's checks that its supervisor is alive.
SUPERVISOR_POLL = 0.2


class Worker:
    def __init__(self, opts: ServeOptions, run_id: Optional[str], index: int, metrics_dir: Optional[str]) -> None:
        self.opts = opts
        self.index = index
        self.state = State(opts, run_id)
        self.store = SnapshotStore(metrics_dir, index)
        previous = self.store.load_own()
        if previous:
            self.state.stats.restore(previous)
        self.state.stats.gauges = self._gauges
        self.state.stats.core = self.state.buckets.core_counts
        self.health = health.aio.HealthServicer()
        self.rls = RateLimitService(self.state)
        self.stop_event = asyncio.Event()
        self._reloading: "Optional[asyncio.Future[None]]" = None
        self._reload_again = False
        self.tasks: List["asyncio.Task[Any]"] = []
        #: the gRPC engine serving (--engine auto resolves to one of them)
        self.engine = "grpcio"
        self.who = f"worker {index}" if opts.workers > 1 else "server"
        #: The supervisor that started this worker (None: not supervised).
        self.supervisor = os.getppid() if run_id is not None and opts.workers > 1 else None

    def _gauges(self) -> Dict[str, float]:
        g = self.state.buckets.gauges()
        g["backend_up"] = float(self.state.backend_up)
        g["backend_config_error"] = float(self.state.backend_state == REFUSED)
        g["workers"] = 1.0
        return g

    def ready(self) -> Tuple[bool, str]:
        if self.state.draining:
            return False, "draining"
        if self.state.backend_state == REFUSED:
            return False, f"configuration error: the backend refuses our credentials or ACL ({self.state.backend_why})"
        if not self.state.serving:
            return False, "backend unreachable and fail-closed"
        return True, ""

    async def _set_health(self) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if self.state.serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in HEALTH_NAMES:
            await self.health.set(name, status)

    async def run(self) -> int:
        try:
            self.state.load()
        except ConfigurationError as exc:
            log.error("guardian: %s", exc)
            return 2
        except Exception:  # noqa: BLE001 - any failure to load the policy is one a restart repeats
            log.exception("guardian: cannot load the policy")
            return 2
        server = self._grpc_server()
        if server is None:  # --engine native could not run (logged)
            return 2
        try:
            port = self._listen(server)
        except RuntimeError as exc:
            log.error("guardian: cannot listen on %s: %s", self._address(), exc)
            return 2
        await server.start()
        await self._set_health()
        try:
            http = await self._start_http()
        except OSError as exc:
            log.error("guardian: cannot listen for HTTP on %s:%d: %s", self.opts.bind, self.opts.http_port, exc)
            await server.stop(0)
            return 2
        self._install_signals()
        self._start_tasks()
        self._log_started(port, http is not None)
        self._warn_open_admin()
        await self.stop_event.wait()
        await self._drain(server, http)
        return 0

    def _grpc_server(self) -> Any:
        server: Any = None
        if self.opts.engine != "grpcio":
            from .native import available, native_server

            ok, why = available()
            if ok or self.opts.engine == "native":
                server = native_server(self.opts, self.state, self.health)
                if server is None:  # --engine native asked for, and not built here (logged)
                    return None
                self.engine = "native"
            elif self.index == 0:
                log.info("guardian: the native engine is not built here (%s); serving with grpcio", why)
        if server is None:
            server = grpc.aio.server(options=[
                ("grpc.so_reuseport", 1 if self.opts.workers > 1 else 0),
                ("grpc.max_concurrent_streams", 1000),
            ])
        guardian_pb2_grpc.add_RateLimiterServicer_to_server(RateLimiterService(self.state), server)
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self.rls, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(SERVICE_NAMES, server)
        return server

    def _address(self) -> str:
        bind, port = self.opts.bind, self.opts.grpc_port
        return f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"

    def _listen(self, server: Any) -> int:
        """Adds the TCP port (and the Unix socket on the first worker); returns the port."""
        port: int = server.add_insecure_port(self._address())
        if self.opts.uds and self.index == 0:
            server.add_insecure_port(f"unix:{self.opts.uds}")
        return port

    async def _start_http(self) -> Any:
        if not self.opts.http_port:
            return None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(GuardianCollector(self.state.stats, self.store))
        return await start_http(self.opts.bind, self.opts.http_port, registry, self.ready, self.opts.workers > 1,
                                self.rls.answer_json)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        if self.opts.workers == 1:  # a worker leaves Ctrl-C to its supervisor
            loop.add_signal_handler(signal.SIGINT, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        if stop_requested():  # a SIGTERM while it started: serve no longer, drain
            self.stop_event.set()

    def _start_tasks(self) -> None:
        self.tasks.append(asyncio.ensure_future(self._monitor()))
        if self.supervisor is not None:
            self.tasks.append(asyncio.ensure_future(self._watch_supervisor()))
        if self.store.dir is not None:
            self.tasks.append(asyncio.ensure_future(self._snapshots()))

    def _log_started(self, port: int, http: bool) -> None:
        opts = self.opts
        backend = (("batched redis" if opts.batched else "redis") if opts.redis_url
                   else ("shared memory" if opts.workers > 1 else "memory"))
        log.info("guardian %s %s (pid %d) serving gRPC (%s engine) on %s%s, HTTP on %s; %s backend, fail-%s; "
                 "policy: %s", __version__, self.who, os.getpid(), self.engine, f"{opts.bind}:{port}",
                 f" and unix:{opts.uds}" if opts.uds and self.index == 0 else "",
                 f"{opts.bind}:{opts.http_port}" if http else "off", backend,
                 _mode(opts.fail_open, "open", "closed", "local"),
                 self.state.policy.summary())
        self._warn_empty_policy()

    def _warn_empty_policy(self) -> None:
        # Valid (ratelimit loads it too), but an empty file or directory (a
        # volume not mounted, a file truncated by a deploy) is rarely meant.
        policy = self.state.policy
        if not policy.limits and not policy.domains:
            log.warning("guardian %s: the policy from %s limits nothing: guardian.v1 checks are refused "
                        "(no named limit) and every Envoy request is allowed", self.who, policy.source)

    def _warn_open_admin(self) -> None:
        if not self.opts.admin_token and self.index == 0 and self.opts.bind not in ("127.0.0.1", "::1", "localhost"):
            log.warning("guardian %s: no admin token and listening on %s: anyone who reaches the port may "
                        "call ResetLimit (give --admin-token-file)", self.who, self.opts.bind)

    async def _drain(self, server: Any, http: Any) -> None:
        """Health NOT_SERVING, stop accepting, wait for in-flight calls, return leases."""
        opts = self.opts
        loop = asyncio.get_running_loop()
        stop_at = loop.time()
        log.info("guardian %s (pid %d) stopping: draining for up to %gs", self.who, os.getpid(), opts.grace)
        # Another SIGTERM (the supervisor forwards the one the whole group got)
        # must not kill the drain, nor the process once the loop has closed and
        # put the default action back.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        self.state.draining = True
        await self.health.enter_graceful_shutdown()
        if http is not None:
            http.close()
        await server.stop(opts.grace)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        # Return leases within what is left of grace + CLOSE_MARGIN (inside the
        # supervisor's kill margin, and the 5 s SIGTERM budget at the default grace).
        budget = max(stop_at + opts.grace + CLOSE_MARGIN - loop.time(), MIN_CLOSE)
        try:
            await asyncio.wait_for(self.state.buckets.close(), budget)
        except asyncio.TimeoutError:
            log.warning("guardian %s: backends not closed within %.2fs; unreturned leased tokens "
                        "come back as their buckets refill", self.who, budget)
        self.store.write(self.state.stats.snapshot())
        log.info("guardian %s (pid %d) stopped", self.who, os.getpid())

    def _reload(self) -> None:
        """SIGHUP: reads and parses the policy in a thread, so checks keep
        being answered meanwhile; installs it on the loop. One reload at a
        time; a SIGHUP during one asks for another after it."""
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return
        self._reloading = asyncio.ensure_future(self._reload_off_loop())

    async def _reload_off_loop(self) -> None:
        loop = asyncio.get_running_loop()
        # The parsing thread holds the GIL in slices of the switch interval;
        # shorter slices let the loop answer between them (restored after).
        interval = sys.getswitchinterval()
        sys.setswitchinterval(RELOAD_SWITCH_INTERVAL)
        try:
            await self._reload_loop(loop)
        finally:
            sys.setswitchinterval(interval)

    async def _reload_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            self._reload_again = False
            try:
                policy = await loop.run_in_executor(None, load_policy, self.opts.config, self.opts.merge_domains)
                if self.state.buckets.in_memory:  # tables take time to build; Redis clients stay on the loop
                    prepared = await loop.run_in_executor(None, self.state.prepare, policy)
                else:
                    prepared = self.state.prepare(policy)
                self.state.commit(prepared)
            except ConfigurationError as exc:
                log.error("guardian %s: policy reload rejected, keeping the old policy: %s", self.who, exc)
            except Exception:  # noqa: BLE001 - a reload must never take the worker down
                log.exception("guardian %s: policy reload failed, keeping the old policy", self.who)
            else:
                log.info("guardian %s: policy reloaded: %s", self.who, self.state.policy.summary())
                self._warn_empty_policy()
            if not self._reload_again:
                return

    async def _watch_supervisor(self) -> None:
        """A worker whose supervisor died (SIGKILL, OOM) drains and exits:
        an orphan would keep serving the run's ports with its own table
        beside the next run, and the limit would count twice."""
        while os.getppid() == self.supervisor:
            await asyncio.sleep(SUPERVISOR_POLL)
        log.error("guardian %s: the supervisor (pid %d) is gone; draining and exiting",
                  self.who, self.supervisor)
        self.stop_event.set()

    async def _monitor(self) -> None:
        """Probes Redis; logs and reports each change of its state."""
        client = self.state.buckets.redis_client
        if client is None:
            return
        while True:
            state, why = await probe(client, 0.5)
            if state != self.state.backend_state:
                self.state.backend_state, self.state.backend_why = state, why
                self._log_backend(state, why)
                await self._set_health()
            await asyncio.sleep(MONITOR_INTERVAL)

    def _log_backend(self, state: str, why: str) -> None:
        url = redact(self.opts.redis_url or "")
        mode = _mode(self.opts.fail_open, "allowed", "denied", "limited in-process")
        if state == UP:
            log.info("guardian %s: backend %s is reachable again", self.who, url)
        elif state == REFUSED:
            log.error("guardian %s: configuration error: backend %s refuses our credentials or ACL (%s); "
                      "checks are %s until it is fixed", self.who, url, why, mode)
        else:
            log.warning("guardian %s: backend %s is unreachable; checks are %s", self.who, url, mode)

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL)
            try:
                self.store.write(self.state.stats.snapshot())
            except OSError as exc:
                log.warning("guardian %s: cannot write metrics snapshot: %s", self.who, exc)


def _mode(fail_open: object, when_open: str, when_closed: str, when_local: str) -> str:
    return when_local if fail_open == "local" else when_open if fail_open else when_closed


def run_worker(opts: ServeOptions, run_id: Optional[str] = None, index: int = 0,
               metrics_dir: Optional[str] = None) -> int:
    async def main() -> int:
        try:
            worker = Worker(opts, run_id, index, metrics_dir)
        except ConfigurationError as exc:  # e.g. a Redis URL its client cannot use
            log.error("guardian: %s", exc)
            return 2
        return await worker.run()

    return asyncio.run(main())
