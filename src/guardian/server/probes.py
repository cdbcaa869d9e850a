"""The HTTP port: GET /metrics (Prometheus text), /health (liveness: the
process answers), /ready (readiness: serving, not draining, backend usable
under the fail policy), and envoyproxy/ratelimit's /healthcheck and POST
/json. A few lines of asyncio streams, one request per connection; nothing
else is served."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Optional, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

__all__ = ["start_http"]

log = logging.getLogger("guardian.server")

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            411: "Length Required", 413: "Payload Too Large", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}
#: The largest /json body read (a RateLimitRequest is a few hundred bytes).
MAX_BODY = 64 << 10
_TEXT = "text/plain; charset=utf-8"

Answer = Tuple[int, bytes, str]
#: /json: the body of a POST -> (status, body, content type).
JsonHandler = Callable[[bytes], Awaitable[Answer]]


async def start_http(host: str, port: int, registry: CollectorRegistry, ready: Callable[[], Tuple[bool, str]],
                     reuse_port: bool, rls_json: Optional[JsonHandler] = None) -> Any:
    """Serves /metrics, /health, /ready; and envoyproxy/ratelimit's
    /healthcheck (200 OK or 500, as ready) and POST /json (ShouldRateLimit as JSON)."""

    def get(path: str) -> Answer:
        if path == "/metrics":
            return 200, generate_latest(registry), CONTENT_TYPE_LATEST
        if path in ("/health", "/healthz", "/livez"):
            return 200, b"ok\n", _TEXT
        if path in ("/ready", "/readyz"):
            ok, why = ready()
            return (200, b"ready\n", _TEXT) if ok else (503, f"not ready: {why}\n".encode(), _TEXT)
        if path == "/healthcheck":  # ratelimit's: "OK", or a bare 500
            return (200, b"OK", _TEXT) if ready()[0] else (500, b"", _TEXT)
        return 404, b"not found: /metrics, /health, /ready, /healthcheck, POST /json\n", _TEXT

    async def post(path: str, head: bytes, reader: asyncio.StreamReader) -> Answer:
        if path != "/json" or rls_json is None:
            return 405, b"GET only (POST: /json)\n", _TEXT
        length = _content_length(head)
        if length is None:
            return 411, b"Content-Length required\n", _TEXT
        if length > MAX_BODY:
            return 413, f"body larger than {MAX_BODY} bytes\n".encode(), _TEXT
        body = await asyncio.wait_for(reader.readexactly(length), 5.0)
        return await rls_json(body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method in ("GET", "HEAD"):
                status, body, ctype = get(path)
            elif method == "POST":
                status, body, ctype = await post(path, head, reader)
            else:
                status, body, ctype = 405, b"GET only (POST: /json)\n", _TEXT
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


def _content_length(head: bytes) -> Optional[int]:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                n = int(value.strip())
            except ValueError:
                return None
            return n if n >= 0 else None
    return None
