"""What the worker's Redis probe found: up, unreachable, or refusing us.

A Redis that answers but refuses our credentials (AUTH) or our ACL (the
commands or keys guardian needs) is a configuration error, not an outage:
waiting will not fix it. The probe runs what every check needs (a script
on a key under guardian's prefix), so a user allowed PING but not EVALSHA,
or not ``guardian:*`` keys, is found too.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional, Tuple

__all__ = ["probe", "UP", "UNREACHABLE", "REFUSED"]

UP, UNREACHABLE, REFUSED = "up", "unreachable", "refused"

#: Reply prefixes of a Redis that refuses who we are or what we may do.
_REFUSALS = ("NOAUTH", "WRONGPASS", "NOPERM", "invalid username-password pair", "invalid password",
             "Authentication required", "must be called with the client already authenticated",
             "Client sent AUTH, but no password is set", "AUTH <password> called without any password")
_PROBE_KEY = "guardian:probe"


def refusal(exc: BaseException) -> Optional[str]:
    """The reason when ``exc`` is Redis refusing our credentials or ACL, else None."""
    name = type(exc).__name__
    text = str(exc)
    if name in ("AuthenticationError", "AuthenticationWrongNumberOfArgsError", "NoPermissionError") \
            or any(text.startswith(p) or p in text for p in _REFUSALS):
        return f"{name}: {text}"
    return None


async def probe(client: Any, timeout: float) -> Tuple[str, str]:
    """(UP, "") or (UNREACHABLE | REFUSED, why)."""
    try:
        await asyncio.wait_for(client.eval("return 1", 1, _PROBE_KEY), timeout)
    except Exception as exc:  # noqa: BLE001 - every failure is classified
        why = refusal(exc)
        return (REFUSED, why) if why else (UNREACHABLE, f"{type(exc).__name__}: {exc}")
    return UP, ""
