"""``guardian tables``: list the shared-memory tables of this host, with
their limits, owner and size, and remove one (``--unlink NAME``) without
writing Python. A table outlives its processes (docs/core.md), so this is
how an operator changes a limit or clears a table another user planted.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from typing import Any, List, TextIO

from . import _region
from ._config import MAX_LIMITS

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Adds ``tables`` to the ``guardian`` command's subparsers."""
    t = sub.add_parser("tables", help="list the shared-memory tables of this host, or remove one",
                       description="List guardian's shared-memory tables (Linux: /dev/shm/guardian.*) "
                                   "with their limit, owner and size, or remove one.",
                       allow_abbrev=False)
    t.add_argument("--unlink", metavar="NAME",
                   help="remove the table NAME: processes attached keep their copy, "
                        "new ones create a fresh table")
    t.set_defaults(run=run)


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return str(uid) if uid >= 0 else "?"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def attached_pids(name: str) -> List[int]:
    """Processes that map the table now (those /proc lets us see)."""
    path = os.path.join(_region.SHM_DIR, _region.segment_name(name)[1:])
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps", encoding="utf-8", errors="replace") as maps:
                if any(line.rstrip("\n").endswith(path) for line in maps):
                    pids.append(int(entry))
        except OSError:
            continue
    return sorted(pids)


def list_tables(out: TextIO) -> int:
    names = _region.table_names()
    if not names:
        print(f"no guardian tables in {_region.SHM_DIR}", file=out)
        return 0
    me = os.geteuid()
    for name in names:
        info = _region.table_info(name)
        trusted = info.uid == me and not info.mode & 0o077
        owner = f"{_owner(info.uid)}, mode {info.mode:#o}"
        if not trusted:
            owner += " (refused by guardian: " + ("another user's" if info.uid != me else "others may write it") + ")"
        print(f"{name}", file=out)
        if info.limit is not None:
            print(f"  limit  {info.limit}", file=out)
        shape = f"{_size(info.size)}"
        if info.nslots is not None:
            live = "" if info.live_keys is None else f", {info.live_keys} live keys"
            shape += f", {info.nslots} slots{live}, {info.core} core"
        print(f"  size   {shape}", file=out)
        print(f"  owner  {owner}", file=out)
        if info.problem:
            print(f"  PROBLEM {info.problem}: remove it with guardian tables --unlink {name}", file=out)
    return 0


def unlink_table(name: str, out: TextIO, err: TextIO) -> int:
    """Removes the table ``name``, and the tables ``name.0``, ``name.1``, ...
    that ``shared=name`` makes for several limits, so the name given to the
    backend is the name removed."""
    try:
        _region.segment_name(name)
    except ValueError as exc:
        print(f"guardian tables: {exc}", file=err)
        return 2
    names = [name] + [f"{name}.{i}" for i in range(MAX_LIMITS) if len(name) <= 198]
    removed_any = False
    for n in names:
        users = [p for p in attached_pids(n) if p != os.getpid()]
        try:
            removed = _region.unlink(n)
        except PermissionError:
            print(f"guardian tables: table {n!r} belongs to another user; only its owner or root "
                  "can remove it", file=err)
            return 1
        if not removed:
            continue
        removed_any = True
        print(f"removed table {n!r}", file=out)
        if users:
            print(f"  still mapped by pid {', '.join(map(str, users))}: they keep the old table until they "
                  "restart; new processes create a fresh one", file=out)
    if not removed_any:
        print(f"guardian tables: no table named {name!r}", file=err)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    if args.unlink is not None:
        return unlink_table(args.unlink, sys.stdout, sys.stderr)
    return list_tables(sys.stdout)
