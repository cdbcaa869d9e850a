"""One run owns its ports.

Workers of one run bind the same ports with SO_REUSEPORT, and so could the
workers of a second run started by mistake: each run would keep its own
table, doubling every limit. So before a run starts (the supervisor, or
the single server), it

- takes an exclusive lock named after each port, in a directory of the
  user's (``$XDG_RUNTIME_DIR`` or the temp dir): a second run of the same
  user on the same host is refused at once, naming the holder's pid;
- binds each port once without SO_REUSEPORT and lets go: a port another
  process listens on (whatever its user or lock directory) is refused too.

The lock is held until the process exits (the kernel drops it even after a
SIGKILL, so a crash never leaves a stale lock). Where no lock can be made
(a read-only filesystem), a warning says so and the probe alone decides.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import tempfile
from typing import List, Optional, Tuple

__all__ = ["PortBusy", "claim_ports", "lock_dir"]

log = logging.getLogger("guardian.server")


class PortBusy(Exception):
    """A port another run or process holds; the message says which and what to do."""


def lock_dir() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(base, f"guardian-{os.getuid()}-ports")


def _lock(port: int, what: str, flag: str) -> Optional[int]:
    directory = lock_dir()
    path = os.path.join(directory, f"{port}.lock")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        # e.g. a read-only root filesystem in a container: the bind probe still
        # refuses a port a live run listens on, without the lock's holder pid
        log.warning("guardian serve: no lock for %s port %d (%s: %s); point XDG_RUNTIME_DIR or TMPDIR at "
                    "a writable directory to have one", what, port, path, exc.strerror)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise PortBusy(f"{what} port {port} belongs to another guardian serve run (pid {holder}, "
                           f"lock {path}); stop it first, or choose another {flag}") from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _probe(bind: str, port: int, what: str, flag: str) -> None:
    """Binds without SO_REUSEPORT: fails while anyone listens on the port."""
    try:
        infos = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortBusy(f"cannot resolve --bind {bind!r}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortBusy(f"{what} port {port} on {bind} is in use by another process; "
                               f"stop it first, or choose another {flag}") from None
            raise PortBusy(f"cannot listen on {bind}:{port}: {exc.strerror}") from None


def claim_ports(bind: str, ports: List[Tuple[int, str, str]]) -> List[int]:
    """Locks and probes each (port, name, flag); returns the lock fds to keep
    open for the life of the run. Raises PortBusy."""
    fds: List[int] = []
    try:
        for port, what, flag in ports:
            fd = _lock(port, what, flag)
            if fd is not None:
                fds.append(fd)
        for port, what, flag in ports:
            _probe(bind, port, what, flag)
    except BaseException:
        release(fds)
        raise
    return fds


def release(fds: Optional[List[int]]) -> None:
    for fd in fds or ():
        try:
            os.close(fd)
        except OSError:
            pass
