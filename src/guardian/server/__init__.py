"""guardian.server: the sidecar behind ``guardian serve``.

It sits above the façade: it builds backends and limiters from a policy file
and answers guardian.v1, Envoy's RLS v3, gRPC health and reflection, plus
/metrics, /health and /ready over HTTP. Nothing below it imports it.
Needs the ``server`` extra (grpcio, grpcio-health-checking,
grpcio-reflection, xds-protos, prometheus-client, PyYAML).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import sys

from typing import List, Tuple

from .config import DIR_ENV, RUN_ENV, WORKER_ENV, OptionsError, ServeOptions, add_arguments, options_from_args

__all__ = ["serve", "add_arguments", "ServeOptions", "options_from_args"]

#: Modules of the ``server`` extra (checked without importing them).
_EXTRA = ("grpc", "grpc_health", "grpc_reflection", "envoy", "prometheus_client", "yaml")


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="%(asctime)s guardian[%(process)d] %(levelname)s %(message)s",
    )


def _early_signals(worker: bool) -> None:
    """Signals that arrive before the event loop takes them over: SIGTERM
    (and SIGINT in the single server) mark the server to drain as soon as it
    serves, so a signal at startup still exits 0; a worker ignores SIGINT
    (Ctrl-C reaches the whole group; the supervisor turns it into SIGTERM)
    and SIGHUP (it reads the policy when it starts anyway)."""
    from . import signals  # noqa: PLW0406 - guardian.server.signals

    signal.signal(signal.SIGTERM, signals.note_stop)
    if worker:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGINT, signals.note_stop)


def serve(args: argparse.Namespace) -> int:
    """``guardian serve``: one server, or a supervisor of ``--workers`` servers.
    Exit codes: 0 after a drain, 2 for a configuration error (options, policy,
    ports), 1 when workers failed."""
    worker = WORKER_ENV in os.environ
    _early_signals(worker)  # before the slow imports: a stop during them still drains
    try:
        opts = options_from_args(args)
    except OptionsError as exc:
        print(f"guardian serve: {exc}", file=sys.stderr)
        return 2
    _logging(opts.log_level)
    missing = [m for m in _EXTRA if importlib.util.find_spec(m) is None]
    if missing:  # pragma: no cover - depends on the install
        print(f"guardian serve needs the server extra (pip install 'guardian-ratelimit[server]'): "
              f"missing {', '.join(missing)}", file=sys.stderr)
        return 2
    if worker:
        from .app import run_worker

        code = run_worker(opts, os.environ[RUN_ENV], int(os.environ[WORKER_ENV]), os.environ.get(DIR_ENV))
        # Drained, leases returned, snapshot written: skip the interpreter's
        # teardown (gRPC's takes seconds on a busy machine; the supervisor waits).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    from .ports import PortBusy, claim_ports, release

    try:
        locks = claim_ports(opts.bind, _ports(opts))
    except PortBusy as exc:
        logging.getLogger("guardian.server").error("guardian serve: %s", exc)
        return 2
    try:
        if opts.workers == 1:
            from .app import run_worker

            return run_worker(opts)
        from .workers import supervise  # the supervisor never loads gRPC

        argv = getattr(args, "argv", None)
        return supervise(opts, sys.argv[1:] if argv is None else list(argv))
    finally:
        release(locks)


def _ports(opts: ServeOptions) -> List[Tuple[int, str, str]]:
    ports = [(opts.grpc_port, "gRPC", "--grpc-port")]
    if opts.http_port:
        ports.append((opts.http_port, "HTTP", "--http-port"))
    return ports
