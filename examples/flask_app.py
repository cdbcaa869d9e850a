"""A Flask app behind guardian's WSGI middleware, one limit for all workers.

    GUARDIAN_SHARED=flask-demo gunicorn -w 2 --chdir examples flask_app:app -b 127.0.0.1:8000
    curl -i localhost:8000/hello

Every gunicorn worker attaches the same shared-memory table, so the limit
holds across workers with no server in between. Environment:
GUARDIAN_CAPACITY (default 5), GUARDIAN_RATE (per second, default 1),
GUARDIAN_SHARED (table name; unset: one table per worker), REDIS_URL
(Redis instead).
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from guardian import MemoryBackend, RateLimiter, TokenBucketConfig
from guardian.flask import RateLimit
from guardian.http import client_ip, route

config = TokenBucketConfig(int(os.environ.get("GUARDIAN_CAPACITY", "5")),
                           float(os.environ.get("GUARDIAN_RATE", "1")))
if os.environ.get("REDIS_URL"):
    from guardian.backends import RedisBackend

    limiter = RateLimiter(RedisBackend(config, url=os.environ["REDIS_URL"]))
else:
    limiter = RateLimiter(MemoryBackend(config, shared=os.environ.get("GUARDIAN_SHARED") or None))

app = Flask(__name__)


@app.get("/hello")
def hello() -> dict:
    return {"hello": "world"}


@app.get("/health")
def health() -> dict:
    return {"ok": True}


# One bucket per route and client address (the TCP peer; see
# guardian.http.client_ip for proxies), with the legacy X-RateLimit-* fields
# as well as the draft's. The extension asks Flask's URL map which rule a
# request runs, so /items/1 and /items/2 would share their route's bucket.
RateLimit(app, limiter=limiter, key_func=route(client_ip()), headers="both", routes={"/health": None})


def served_by(wsgi_app: Any) -> Any:
    """Names the worker process on every response, 429s included, to watch
    one limit hold across workers."""
    def wrapped(environ: Any, start_response: Any) -> Any:
        def start(status: str, headers: list, *exc: Any) -> Any:
            return start_response(status, headers + [("X-Served-By", str(os.getpid()))], *exc)
        return wsgi_app(environ, start)
    return wrapped


app.wsgi_app = served_by(app.wsgi_app)  # type: ignore[method-assign]
