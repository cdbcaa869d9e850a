"""``guardian serve`` options: flags, each also read from the environment
(flags win). Imports nothing of gRPC, so ``guardian --help`` works without
the ``server`` extra."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Mapping, Optional, Union

__all__ = ["ServeOptions", "OptionsError", "add_arguments", "options_from_args", "WORKER_ENV", "RUN_ENV",
           "DIR_ENV", "REDIS_SCHEMES", "redact"]

#: The URL schemes --redis-url understands.
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster")


class OptionsError(ValueError):
    """Options that cannot work together or are out of range (exit 2, one line)."""

#: Set by the supervisor in the environment of each worker it starts.
WORKER_ENV = "GUARDIAN_WORKER_INDEX"
RUN_ENV = "GUARDIAN_RUN_ID"
DIR_ENV = "GUARDIAN_RUN_DIR"

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
    "admin_token_file": "GUARDIAN_ADMIN_TOKEN_FILE",
    "log_level": "GUARDIAN_LOG_LEVEL",
    "slots": "GUARDIAN_SLOTS",
    "response_headers": "GUARDIAN_RESPONSE_HEADERS",
    "grace": "GUARDIAN_GRACE",
    "batched": "GUARDIAN_BATCHED",
    "response_dynamic_metadata": "GUARDIAN_RESPONSE_DYNAMIC_METADATA",
    "max_table_memory": "GUARDIAN_MAX_TABLE_MEMORY",
    "merge_domains": "GUARDIAN_MERGE_DOMAINS",
    "shadow_mode": "GUARDIAN_SHADOW_MODE",
    "quota_mode": "GUARDIAN_QUOTA_MODE",
    "engine": "GUARDIAN_ENGINE",
}

#: --engine's choices.
ENGINES = ("auto", "native", "grpcio")


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
    #: A file holding the admin token (read at start; not visible in ps like --admin-token).
    admin_token_file: Optional[str] = None
    log_level: str = "INFO"
    #: Slots per in-memory table (None: the core's default).
    slots: Optional[int] = None
    #: Add RateLimit-* headers to Envoy responses (response_headers_to_add).
    response_headers: bool = False
    #: Seconds SIGTERM waits for in-flight calls.
    grace: float = 3.0
    #: With redis_url: serve checks from token leases (AsyncBatchedRedisBackend).
    batched: bool = False
    #: A domain in several files is merged (ratelimit's MERGE_DOMAIN_CONFIG), not refused.
    merge_domains: bool = False
    #: Envoy requests over the limit are answered OK (statuses still say OVER_LIMIT): ratelimit's SHADOW_MODE.
    shadow_mode: bool = False
    #: Every Envoy rule in quota mode: ratelimit's QUOTA_MODE.
    quota_mode: bool = False
    #: MiB the policy's in-memory tables may take together (one table per distinct limit).
    max_table_memory: int = 256
    #: Envoy responses carry dynamic_metadata (ratelimit's RESPONSE_DYNAMIC_METADATA).
    response_dynamic_metadata: bool = False
    #: "auto" (native where guardian._native is built, else grpcio), "native"
    #: (the hot RPCs answered in C, docs/native.md), or "grpcio".
    engine: str = "auto"


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
    # A typo ("ture", "enabled") must not quietly mean false.
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError("use true or false (also 1/0, yes/no, on/off)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--bind", help="address to listen on (default 127.0.0.1; env GUARDIAN_BIND)")
    a("--grpc-port", type=_port, help="gRPC port, 1-65535 (default 50051; env GUARDIAN_GRPC_PORT)")
    a("--http-port", type=_port, help="HTTP port for /metrics, /health, /ready; 0: none "
                                    "(default 9090; env GUARDIAN_HTTP_PORT)")
    a("--config", help="policy file or directory of *.yaml (envoyproxy/ratelimit format plus "
                       "guardian's named limits; env GUARDIAN_CONFIG); without it guardian.v1 serves one "
                       "limit, 'default': a burst of 100, then 10 per second per key")
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
    a("--admin-token-file", help="file holding the token ResetLimit needs as 'authorization: Bearer TOKEN' "
                                 "(env GUARDIAN_ADMIN_TOKEN_FILE); without a token ResetLimit is open")
    a("--admin-token", help="the token itself (env GUARDIAN_ADMIN_TOKEN); prefer --admin-token-file: "
                            "a command line is visible to every user in ps")
    a("--log-level", help="DEBUG, INFO, WARNING, ERROR (default INFO; env GUARDIAN_LOG_LEVEL)")
    a("--slots", type=int, help="slots per in-memory table, 16 bytes each (default 131072: 2 MiB; "
                                "env GUARDIAN_SLOTS)")
    a("--max-table-memory", type=int, help="MiB all in-memory tables of the policy may take; each distinct "
                                           "limit is one table; a policy that needs more is refused "
                                           "(default 256; env GUARDIAN_MAX_TABLE_MEMORY)")
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
    g5 = p.add_mutually_exclusive_group()
    g5.add_argument("--merge-domains", dest="merge_domains", action="store_const", const=True,
                    help="a domain defined in several policy files is merged, as envoyproxy/ratelimit's "
                         "MERGE_DOMAIN_CONFIG (a descriptor defined twice is still refused); default: refused "
                         "(env GUARDIAN_MERGE_DOMAINS)")
    g5.add_argument("--no-merge-domains", dest="merge_domains", action="store_const", const=False)
    a("--shadow-mode", dest="shadow_mode", action="store_const", const=True,
      help="Envoy: answer OK overall even when a descriptor is OVER_LIMIT (its status still says so); "
           "ratelimit's SHADOW_MODE (env GUARDIAN_SHADOW_MODE)")
    a("--quota-mode", dest="quota_mode", action="store_const", const=True,
      help="Envoy: every rule in quota_mode (OVER_LIMIT only when all of a request's rules are); "
           "ratelimit's QUOTA_MODE (env GUARDIAN_QUOTA_MODE)")
    g4 = p.add_mutually_exclusive_group()
    g4.add_argument("--response-dynamic-metadata", dest="response_dynamic_metadata", action="store_const",
                    const=True, help="send the request and the passed rules' metadata to Envoy as "
                                     "dynamic_metadata (env GUARDIAN_RESPONSE_DYNAMIC_METADATA)")
    g4.add_argument("--no-response-dynamic-metadata", dest="response_dynamic_metadata", action="store_const",
                    const=False)
    a("--engine", choices=ENGINES,
      help="native: the hot RPCs answered in C over libnghttp2 (docs/native.md); grpcio: every call "
           "by Python's grpc.aio; auto (the default): native where it is built, else grpcio "
           "(env GUARDIAN_ENGINE)")


def _port(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None


_CONVERT = {
    "grpc_port": _port, "http_port": _port, "workers": int, "slots": int, "max_table_memory": int, "grace": float,
    "fail_open": _fail_policy, "response_headers": _flag, "batched": _flag,
    "response_dynamic_metadata": _flag, "merge_domains": _flag, "shadow_mode": _flag, "quota_mode": _flag,
}


def options_from_args(args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None) -> ServeOptions:
    """Flags, then the environment, then the defaults. Raises OptionsError."""
    env = os.environ if environ is None else environ
    opts = ServeOptions()
    for dest, var in ENV.items():
        value = getattr(args, dest, None)
        if value is None and env.get(var, "") != "":
            raw = env[var]
            try:
                value = _CONVERT.get(dest, str)(raw)  # type: ignore[operator]
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise OptionsError(f"bad {var}={raw!r}: {exc}") from exc
        if value is not None:
            setattr(opts, dest, value)
    _check(opts)
    return opts


def _check(opts: ServeOptions) -> None:
    if not 1 <= opts.grpc_port <= 65535:
        raise OptionsError(f"--grpc-port must be 1-65535, got {opts.grpc_port}")
    if not 0 <= opts.http_port <= 65535:
        raise OptionsError(f"--http-port must be 1-65535 (0: no HTTP port), got {opts.http_port}")
    if opts.workers < 1:
        raise OptionsError("--workers must be at least 1")
    if opts.slots is not None and opts.slots < 1:
        raise OptionsError("--slots must be at least 1")
    if opts.max_table_memory < 1:
        raise OptionsError("--max-table-memory must be at least 1 (MiB)")
    if not 0 <= opts.grace < float("inf"):  # nan and inf too: a stop must end
        raise OptionsError(f"--grace must be finite seconds >= 0, got {opts.grace}")
    if opts.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise OptionsError(f"unknown log level {opts.log_level!r}")
    opts.log_level = opts.log_level.upper()
    if opts.redis_url is not None:
        scheme, sep, _ = opts.redis_url.partition("://")
        if not sep or scheme.lower() not in REDIS_SCHEMES:
            raise OptionsError(f"--redis-url must start with one of {', '.join(s + '://' for s in REDIS_SCHEMES)}"
                               f", got {redact(opts.redis_url)!r}")
    opts.engine = str(opts.engine).strip().lower()
    if opts.engine not in ENGINES:
        raise OptionsError(f"--engine must be one of {', '.join(ENGINES)}, got {opts.engine!r}")
    if opts.batched and not opts.redis_url:
        raise OptionsError("--batched needs --redis-url (leases are reserved from Redis)")
    if opts.admin_token_file:
        if opts.admin_token:
            raise OptionsError("use --admin-token-file or --admin-token, not both")
        try:
            with open(opts.admin_token_file, encoding="utf-8") as f:
                opts.admin_token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise OptionsError(f"cannot read --admin-token-file {opts.admin_token_file}: {exc}") from exc
        if not opts.admin_token:
            raise OptionsError(f"--admin-token-file {opts.admin_token_file} is empty")


def redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest
