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
from typing import Any, Dict, List, Optional, Tuple

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client.registry import CollectorRegistry

from .. import __version__
from .._errors import ConfigurationError
from ..v1 import guardian_pb2, guardian_pb2_grpc
from .config import ServeOptions
from .http import start_http
from .metrics import GuardianCollector, SnapshotStore
from .service_rls import RateLimitService
from .service_v1 import RateLimiterService
from .state import State

__all__ = ["run_worker", "SERVICE_NAMES"]

log = logging.getLogger("guardian.server")

V1_NAME = guardian_pb2.DESCRIPTOR.services_by_name["RateLimiter"].full_name
RLS_NAME = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name
SERVICE_NAMES = (V1_NAME, RLS_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME)
#: How often the backend is probed, and snapshots are written.
MONITOR_INTERVAL = 0.5
SNAPSHOT_INTERVAL = 1.0
#: Seconds after the grace that closing the backends (returning leases) may
#: take, and at least; below workers._KILL_MARGIN.
CLOSE_MARGIN = 0.75
MIN_CLOSE = 0.5


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
        self.stop_event = asyncio.Event()
        self.tasks: List["asyncio.Task[Any]"] = []
        self.who = f"worker {index}" if opts.workers > 1 else "server"

    def _gauges(self) -> Dict[str, float]:
        g = self.state.buckets.gauges()
        g["backend_up"] = float(self.state.backend_up)
        g["workers"] = 1.0
        return g

    def ready(self) -> Tuple[bool, str]:
        if self.state.draining:
            return False, "draining"
        if not self.state.serving:
            return False, "backend unreachable and fail-closed"
        return True, ""

    async def _set_health(self) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if self.state.serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", V1_NAME, RLS_NAME):
            await self.health.set(name, status)

    async def run(self) -> int:
        opts = self.opts
        try:
            self.state.load()
        except ConfigurationError as exc:
            log.error("guardian: %s", exc)
            return 2
        # --- native data plane hook (issue 14): --engine native swaps the server ---
        if opts.engine == "native":
            from .native import native_server

            server = native_server(opts, self.state, self.health)
            if server is None:
                return 2
        else:
            server = grpc.aio.server(options=[
                ("grpc.so_reuseport", 1 if opts.workers > 1 else 0),
                ("grpc.max_concurrent_streams", 1000),
            ])
        # --- end hook ---
        guardian_pb2_grpc.add_RateLimiterServicer_to_server(RateLimiterService(self.state), server)
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(RateLimitService(self.state), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(SERVICE_NAMES, server)
        address = f"{opts.bind}:{opts.grpc_port}" if ":" not in opts.bind else f"[{opts.bind}]:{opts.grpc_port}"
        try:
            port = server.add_insecure_port(address)
            if opts.uds and self.index == 0:
                server.add_insecure_port(f"unix:{opts.uds}")
        except RuntimeError as exc:
            log.error("guardian: cannot listen on %s: %s", address, exc)
            return 2
        await server.start()
        await self._set_health()
        http = None
        if opts.http_port:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(GuardianCollector(self.state.stats, self.store))
            try:
                http = await start_http(opts.bind, opts.http_port, registry, self.ready, opts.workers > 1)
            except OSError as exc:
                log.error("guardian: cannot listen for HTTP on %s:%d: %s", opts.bind, opts.http_port, exc)
                await server.stop(0)
                return 2
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        self.tasks.append(asyncio.ensure_future(self._monitor()))
        if self.store.dir is not None:
            self.tasks.append(asyncio.ensure_future(self._snapshots()))
        backend = (("batched redis" if opts.batched else "redis") if opts.redis_url
                   else ("shared memory" if opts.workers > 1 else "memory"))
        log.info("guardian %s %s (pid %d) serving gRPC on %s%s, HTTP on %s; %s backend, fail-%s; policy: %s",
                 __version__, self.who, os.getpid(), f"{opts.bind}:{port}",
                 f" and unix:{opts.uds}" if opts.uds and self.index == 0 else "",
                 f"{opts.bind}:{opts.http_port}" if http else "off", backend,
                 _mode(opts.fail_open, "open", "closed", "local"),
                 self.state.policy.summary())
        await self.stop_event.wait()
        # drain
        stop_at = loop.time()
        log.info("guardian %s (pid %d) stopping: draining for up to %gs", self.who, os.getpid(), opts.grace)
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
        return 0

    def _reload(self) -> None:
        try:
            self.state.load()
        except ConfigurationError as exc:
            log.error("guardian %s: policy reload rejected, keeping the old policy: %s", self.who, exc)
        else:
            log.info("guardian %s: policy reloaded: %s", self.who, self.state.policy.summary())

    async def _monitor(self) -> None:
        """Probes Redis; logs and reports each change of its state."""
        client = self.state.buckets.redis_client
        if client is None:
            return
        while True:
            try:
                await asyncio.wait_for(client.ping(), 0.5)
                up = True
            except Exception:  # noqa: BLE001 - any failure means unreachable
                up = False
            if up != self.state.backend_up:
                self.state.backend_up = up
                if up:
                    log.info("guardian %s: backend %s is reachable again", self.who, _redact(self.opts.redis_url))
                else:
                    log.warning("guardian %s: backend %s is unreachable; checks are %s", self.who,
                                _redact(self.opts.redis_url),
                                _mode(self.opts.fail_open, "allowed", "denied", "limited in-process"))
                await self._set_health()
            await asyncio.sleep(MONITOR_INTERVAL)

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL)
            try:
                self.store.write(self.state.stats.snapshot())
            except OSError as exc:
                log.warning("guardian %s: cannot write metrics snapshot: %s", self.who, exc)


def _mode(fail_open: object, when_open: str, when_closed: str, when_local: str) -> str:
    return when_local if fail_open == "local" else when_open if fail_open else when_closed


def _redact(url: Optional[str]) -> str:
    if not url:
        return ""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


def run_worker(opts: ServeOptions, run_id: Optional[str] = None, index: int = 0,
               metrics_dir: Optional[str] = None) -> int:
    async def main() -> int:
        return await Worker(opts, run_id, index, metrics_dir).run()

    return asyncio.run(main())
