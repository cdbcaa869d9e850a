"""Real web servers for the middleware tests: uvicorn and gunicorn serving
the apps in mw_apps/ on a loopback port or a Unix socket, and a raw HTTP/1.1
client that sends a request target byte for byte (urllib would quote or
refuse the hostile paths the bypass tests send)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from redis_servers import free_port, wait_until

APPS = Path(__file__).resolve().parent / "mw_apps"
HELPERS = Path(__file__).resolve().parent

#: (framework, server) -> the app's import string
TARGETS = {
    ("starlette", "uvicorn"): "mw_starlette:app",
    ("fastapi", "uvicorn"): "mw_fastapi:app",
    ("flask", "gunicorn"): "mw_flask:app",
    ("django", "gunicorn"): "mw_django:wsgi_app",
    ("django", "uvicorn"): "mw_django:asgi_app",
}


class Reply:
    def __init__(self, status: int, headers: Dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def handler(self) -> Optional[str]:
        """The handler that ran (each app's handlers name themselves), or None."""
        return self.headers.get("x-handler")

    def item(self, field: str, policy: str) -> Optional[str]:
        """The member of a RateLimit / RateLimit-Policy list named ``policy``."""
        for member in self.headers.get(field, "").split(", "):
            if member.startswith(f'"{policy}";'):
                return member
        return None

    def __repr__(self) -> str:
        return f"Reply({self.status}, handler={self.handler})"


class WebServer:
    """One server process; ``address`` is a port (TCP on 127.0.0.1) or a socket path."""

    def __init__(self, framework: str, server: str, workdir: Path, unix: bool = False,
                 env: Optional[Dict[str, str]] = None, args: Tuple[str, ...] = (),
                 app: Optional[str] = None, cwd: Path = APPS, proxy_headers: bool = False) -> None:
        self.target = app or TARGETS[(framework, server)]
        self.cwd = cwd
        self.proxy_headers = proxy_headers
        self.server = server
        self.log = workdir / f"{framework}-{server}.log"
        self.unix_path: Optional[str] = str(workdir / "app.sock") if unix else None
        self.port = 0 if unix else free_port()
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cwd), str(APPS), str(HELPERS)] + sys.path),
                        **(env or {}))
        self.args = args
        self.proc: Optional["subprocess.Popen[bytes]"] = None

    def command(self) -> List[str]:
        if self.server == "uvicorn":
            where = ["--uds", self.unix_path] if self.unix_path else ["--host", "127.0.0.1", "--port", str(self.port)]
            # --no-proxy-headers (unless asked): uvicorn's own X-Forwarded-For rewriting
            # is off, so what guardian sees is the peer the socket gives.
            proxy = [] if self.proxy_headers else ["--no-proxy-headers"]
            return [sys.executable, "-m", "uvicorn", self.target, *where, "--log-level", "warning",
                    *proxy, *self.args]
        bind = f"unix:{self.unix_path}" if self.unix_path else f"127.0.0.1:{self.port}"
        return [sys.executable, "-m", "gunicorn", "-w", "1", "-b", bind, "--log-level", "warning",
                *self.args, self.target]

    def start(self) -> "WebServer":
        with open(self.log, "wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                         cwd=self.cwd)
        wait_until(lambda: self.up() or self.proc.poll() is not None, 30, " ".join(self.command()))  # type: ignore[union-attr]
        if self.proc.poll() is not None:
            raise RuntimeError(self.log.read_text())
        return self

    def up(self) -> bool:
        try:
            return self.request("/health").status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def request(self, target: str, method: str = "GET", headers: Optional[Dict[str, str]] = None) -> Reply:
        """Sends ``method target HTTP/1.1`` with ``target`` as given (latin-1 bytes)."""
        lines = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.unix_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            try:
                sock.connect(self.unix_path)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        with sock:
            sock.sendall(data)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return parse(b"".join(chunks), method)


def parse(raw: bytes, method: str) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return Reply(0, {}, raw)  # the server closed without an HTTP answer
    status = int(lines[0].split()[1])
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        # Repeated fields are one list (RFC 9110 5.3), as the RateLimit fields are.
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Reply(status, headers, b"" if method == "HEAD" else body)
