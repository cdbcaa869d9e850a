"""The HTTP port: GET /metrics (Prometheus text), /health (liveness: the
process answers), /ready (readiness: serving, not draining, backend usable
under the fail policy). A few lines of asyncio streams, one request per
connection; nothing else is served."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

__all__ = ["start_http"]

log = logging.getLogger("guardian.server")

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def start_http(host: str, port: int, registry: CollectorRegistry, ready: Callable[[], Tuple[bool, str]],
                     reuse_port: bool) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            ctype = "text/plain; charset=utf-8"
            if method not in ("GET", "HEAD"):
                status, body = 405, b"GET only\n"
            elif path == "/metrics":
                status, body, ctype = 200, generate_latest(registry), CONTENT_TYPE_LATEST
            elif path in ("/health", "/healthz", "/livez"):
                status, body = 200, b"ok\n"
            elif path in ("/ready", "/readyz"):
                ok, why = ready()
                status, body = (200, b"ready\n") if ok else (503, f"not ready: {why}\n".encode())
            else:
                status, body = 404, b"not found: /metrics, /health, /ready\n"
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (body if method != "HEAD" else b"")
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError, ValueError):
            pass
        except Exception:  # noqa: BLE001 - a scrape must never take the worker down
            log.exception("guardian: HTTP request failed")
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, reuse_port=reuse_port or None, reuse_address=True)
