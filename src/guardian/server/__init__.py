"""guardian.server: the sidecar behind ``guardian serve``.

It sits above the façade: it builds backends and limiters from a policy file
and answers guardian.v1, Envoy's RLS v3, gRPC health and reflection, plus
/metrics, /health and /ready over HTTP. Nothing below it imports it.
Needs the ``server`` extra (grpcio, grpcio-health-checking,
grpcio-reflection, xds-protos, prometheus-client, PyYAML).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from .config import DIR_ENV, RUN_ENV, WORKER_ENV, ServeOptions, add_arguments, options_from_args

__all__ = ["serve", "add_arguments", "ServeOptions", "options_from_args"]


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="%(asctime)s guardian[%(process)d] %(levelname)s %(message)s",
    )


def serve(args: argparse.Namespace) -> int:
    """``guardian serve``: one server, or a supervisor of ``--workers`` servers."""
    if WORKER_ENV in os.environ:
        # SIGHUP's default action kills: a reload forwarded while this worker
        # still starts must not (it reads the file when it starts anyway).
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    opts = options_from_args(args)
    _logging(opts.log_level)
    try:
        from .app import run_worker
    except ImportError as exc:  # pragma: no cover - depends on the install
        print(f"guardian serve needs the server extra (pip install 'guardian-ratelimit[server]'): {exc}",
              file=sys.stderr)
        return 2
    if WORKER_ENV in os.environ:
        return run_worker(opts, os.environ[RUN_ENV], int(os.environ[WORKER_ENV]), os.environ.get(DIR_ENV))
    if opts.workers == 1:
        return run_worker(opts)
    from .workers import supervise

    argv = getattr(args, "argv", None)
    return supervise(opts, sys.argv[1:] if argv is None else list(argv))
