"""``guardian serve`` options: flags, each also read from the environment
(flags win). Imports nothing of gRPC, so ``guardian --help`` works without
the ``server`` extra."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Mapping, Optional, Union

__all__ = ["ServeOptions", "add_arguments", "options_from_args"]

FailPolicy = Union[bool, str]

#: flag destination -> environment variable
ENV = {
    "bind": "GUARDIAN_BIND",
    "grpc_port": "GUARDIAN_GRPC_PORT",
    "http_port": "GUARDIAN_HTTP_PORT",
    "config": "GUARDIAN_CONFIG",
    "redis_url": "REDIS_URL",
    "fail_open": "FAIL_OPEN",
    "workers": "GUARDIAN_WORKERS",
    "uds": "GUARDIAN_UDS",
    "admin_token": "GUARDIAN_ADMIN_TOKEN",
    "log_level": "GUARDIAN_LOG_LEVEL",
    "slots": "GUARDIAN_SLOTS",
    "response_headers": "GUARDIAN_RESPONSE_HEADERS",
    "grace": "GUARDIAN_GRACE",
    "batched": "GUARDIAN_BATCHED",
    "engine": "GUARDIAN_ENGINE",  # native data plane hook (issue 14)
}


@dataclass
class ServeOptions:
    bind: str = "127.0.0.1"
    grpc_port: int = 50051
    #: 0 turns the HTTP port (metrics, health) off.
    http_port: int = 9090
    config: Optional[str] = None
    redis_url: Optional[str] = None
    #: True (allow), False (deny) or "local" (an in-process limit) while Redis fails.
    fail_open: FailPolicy = True
    workers: int = 1
    uds: Optional[str] = None
    admin_token: Optional[str] = None
    log_level: str = "INFO"
    #: Slots per in-memory table (None: the core's default).
    slots: Optional[int] = None
    #: Add RateLimit-* headers to Envoy responses (response_headers_to_add).
    response_headers: bool = False
    #: Seconds SIGTERM waits for in-flight calls.
    grace: float = 3.0
    #: With redis_url: serve checks from token leases (AsyncBatchedRedisBackend).
    batched: bool = False
    #: "grpcio", or "native" (experimental: guardian._native, docs/native.md). Native data plane hook.
    engine: str = "grpcio"


def _fail_policy(text: str) -> FailPolicy:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on", "open"):
        return True
    if value in ("0", "false", "no", "off", "closed"):
        return False
    if value == "local":
        return "local"
    raise argparse.ArgumentTypeError(f"FAIL_OPEN must be true, false or local, got {text!r}")


def _flag(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def add_arguments(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--bind", help="address to listen on (default 127.0.0.1; env GUARDIAN_BIND)")
    a("--grpc-port", type=int, help="gRPC port (default 50051; env GUARDIAN_GRPC_PORT)")
    a("--http-port", type=int, help="HTTP port for /metrics, /health, /ready; 0: none "
                                    "(default 9090; env GUARDIAN_HTTP_PORT)")
    a("--config", help="policy file or directory of *.yaml (envoyproxy/ratelimit format plus "
                       "guardian's named limits; env GUARDIAN_CONFIG)")
    a("--redis-url", help="keep buckets in Redis (redis://, rediss://, redis+sentinel://, "
                          "redis+cluster://; env REDIS_URL); default: the embedded memory backend")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fail-open", dest="fail_open", action="store_const", const=True,
                   help="allow while Redis fails (the default; env FAIL_OPEN=true)")
    g.add_argument("--fail-closed", dest="fail_open", action="store_const", const=False,
                   help="deny while Redis fails (env FAIL_OPEN=false)")
    g.add_argument("--fail-local", dest="fail_open", action="store_const", const="local",
                   help="limit in-process while Redis fails (env FAIL_OPEN=local)")
    a("--workers", type=int, help="processes serving the same ports (SO_REUSEPORT), sharing one "
                                  "shared-memory table or one Redis (default 1; env GUARDIAN_WORKERS)")
    a("--uds", help="also listen on this Unix socket (the first worker; env GUARDIAN_UDS)")
    a("--admin-token", help="ResetLimit needs 'authorization: Bearer TOKEN' (env GUARDIAN_ADMIN_TOKEN)")
    a("--log-level", help="DEBUG, INFO, WARNING, ERROR (default INFO; env GUARDIAN_LOG_LEVEL)")
    a("--slots", type=int, help="slots per in-memory table (env GUARDIAN_SLOTS)")
    g2 = p.add_mutually_exclusive_group()
    g2.add_argument("--response-headers", dest="response_headers", action="store_const", const=True,
                    help="send RateLimit-Limit/-Remaining/-Reset to Envoy (env GUARDIAN_RESPONSE_HEADERS)")
    g2.add_argument("--no-response-headers", dest="response_headers", action="store_const", const=False)
    a("--grace", type=float, help="seconds SIGTERM waits for in-flight calls (default 3; env GUARDIAN_GRACE)")
    g3 = p.add_mutually_exclusive_group()
    g3.add_argument("--batched", dest="batched", action="store_const", const=True,
                    help="with --redis-url: reserve tokens from Redis in leases and answer checks from "
                         "them locally; unused tokens go back at exit (env GUARDIAN_BATCHED)")
    g3.add_argument("--no-batched", dest="batched", action="store_const", const=False)
    # --- native data plane hook (issue 14) ---
    a("--engine", choices=("grpcio", "native"),
      help="grpcio (default), or native: the hot RPCs answered in C over libnghttp2, "
           "experimental, see docs/native.md (env GUARDIAN_ENGINE)")


_CONVERT = {
    "grpc_port": int, "http_port": int, "workers": int, "slots": int, "grace": float,
    "fail_open": _fail_policy, "response_headers": _flag, "batched": _flag,
}


def options_from_args(args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None) -> ServeOptions:
    """Flags, then the environment, then the defaults."""
    env = os.environ if environ is None else environ
    opts = ServeOptions()
    for dest, var in ENV.items():
        value = getattr(args, dest, None)
        if value is None and env.get(var, "") != "":
            raw = env[var]
            try:
                value = _CONVERT.get(dest, str)(raw)  # type: ignore[operator]
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise SystemExit(f"guardian serve: bad {var}={raw!r}: {exc}") from exc
        if value is not None:
            setattr(opts, dest, value)
    if opts.workers < 1:
        raise SystemExit("guardian serve: --workers must be at least 1")
    if opts.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SystemExit(f"guardian serve: unknown log level {opts.log_level!r}")
    opts.log_level = opts.log_level.upper()
    if opts.engine not in ("grpcio", "native"):  # native data plane hook
        raise SystemExit(f"guardian serve: --engine must be grpcio or native, got {opts.engine!r}")
    if opts.batched and not opts.redis_url:
        raise SystemExit("guardian serve: --batched needs --redis-url (leases are reserved from Redis)")
    return opts
