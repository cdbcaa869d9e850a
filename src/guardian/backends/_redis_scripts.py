"""What the sync and async Redis backends share and does no I/O: the Lua
scripts, the units they compute in, key building, command packing and
reply decoding. The backends only send bytes and read replies.
"""

from __future__ import annotations

import hashlib
from binascii import crc_hqx
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from operator import index
from typing import Any, Callable, Dict, List, NamedTuple, Sequence, Tuple

try:  # the redis extra brings hiredis; this module must import without it
    from hiredis import pack_command
except ImportError:  # pragma: no cover - packing falls back to bulk_keys
    pack_command = None  # type: ignore[assignment]

from .. import _impl
from .._config import TokenBucketConfig
from .._errors import ArgumentTypeError, BackendError, ConfigurationError, InvalidArgumentError
from .._args import check_cost, check_key
from .._region import MAX_KEY_BYTES
from .._result import LimitResult

__all__ = ["Script", "Layout", "Packer", "Reserved", "scripts", "malformed", "MAX_TAU_TICKS"]

#: Largest burst tolerance C*T in ticks: TAU + cost*P must stay below 2^53,
#: where Lua's doubles stop holding every integer.
MAX_TAU_TICKS = 2**52

#: Integers a Lua double holds exactly.
_EXACT = 2**53

SCRIPT_NAMES = ("take", "peek", "usage", "reset", "reserve", "release", "take_all")


class Reserved(NamedTuple):
    """reserve.lua's reply, in the scripts' units (see lua/reserve.lua)."""

    granted: int
    remaining: int
    retry_ticks: int
    ahead_ticks: int
    now_us: int


class Script:
    """One Lua script: its full source (prelude + body) and SHA1."""

    __slots__ = ("name", "source", "sha")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


def read_source(name: str) -> str:
    """A script's source as shipped: the shared prelude, then its body."""
    folder = resources.files("guardian.lua")
    return folder.joinpath("_gcra.lua").read_text() + folder.joinpath(f"{name}.lua").read_text()


@lru_cache(maxsize=None)
def scripts() -> Dict[str, Script]:
    """The scripts, read once per process."""
    return {name: Script(name, read_source(name)) for name in SCRIPT_NAMES}


class Layout:
    """A config in the scripts' units: ticks of 1/D of the clock unit.

    Redis' TIME is in microseconds (``clock_unit_ns=1000``); tests also run
    the scripts on a nanosecond clock to replay the shared GCRA cases.
    """

    __slots__ = ("capacity", "P", "D", "tau", "ticks_per_second", "argv", "tag", "since")

    def __init__(self, config: TokenBucketConfig, clock_unit_ns: int = 1000) -> None:
        interval = Fraction(config.emission_ticks, config.ticks_per_ns * clock_unit_ns)
        self.capacity = config.capacity
        self.P = interval.numerator
        self.D = interval.denominator
        self.tau = config.capacity * self.P
        if self.tau > MAX_TAU_TICKS:
            window = config.capacity * config.emission_interval
            raise ConfigurationError(
                f"the burst window capacity*T = {window:.6g}s is too long for the Redis "
                f"scripts at this rate: capacity*T*{self.D} must stay under 2^52 "
                f"{'us' if clock_unit_ns == 1000 else 'clock units'} (see docs/redis.md)"
            )
        self.ticks_per_second = self.D * (1_000_000_000 // clock_unit_ns)
        #: The limit in a bucket's key: capacity and T in ticks (P/D us).
        self.tag = b"c%d:t%d/%d" % (self.capacity, self.P, self.D)
        self.argv: Tuple[bytes, ...] = tuple(b"%d" % v for v in (self.P, self.D, self.tau))
        #: since(allowed, ahead, elapsed_ns, held, retry_after): a result for
        #: a bucket whose TAT lay ``ahead`` ticks ahead of the server's clock
        #: ``elapsed_ns`` ago, with ``held`` of its taken tokens given back:
        #: decoding, like ``result``, of a reserve reply seen later (the
        #: batched backends report the bucket, not the lease). The core's
        #: BucketReading, which the native data plane calls too.
        self.since: Callable[[bool, int, int, int, float], LimitResult] = _impl.BucketReading(
            self.P, self.tau, self.ticks_per_second, self.capacity).since

    def result(self, v: Any, cost: int = 1) -> LimitResult:
        """Decodes one key's take reply ``v`` (see take.lua) for ``cost``."""
        if type(v) is not int:
            raise malformed(v)
        tps = self.ticks_per_second
        if v > 0:
            return LimitResult(True, (self.tau - v) // self.P, 0.0, v / tps, self.capacity)
        return LimitResult(
            False, (self.tau + v) // self.P, (index(cost) * self.P - v - self.tau) / tps, -v / tps, self.capacity
        )

    def results(self, replies: Sequence[Any], cost: int, count: int) -> List[LimitResult]:
        """``result`` for each integer of take replies, ``count`` in all
        (take_many decodes hundreds at a time; with the C core,
        LimitResult's constructor is C)."""
        if any(type(r) is not list for r in replies) or sum(map(len, replies)) != count:
            raise malformed(replies)
        tau, P, tps, capacity = self.tau, self.P, self.ticks_per_second, self.capacity
        over = cost * P - tau
        make = LimitResult
        out = [
            make(True, (tau - v) // P, 0.0, v / tps, capacity) if v > 0
            else make(False, (tau + v) // P, (over - v) / tps, -v / tps, capacity)
            for r in replies for v in r
        ]
        if not all(type(v) is int for r in replies for v in r):
            raise malformed(replies)
        return out

    @staticmethod
    def one(reply: Any) -> Any:
        """The only value of a one-key take reply."""
        if type(reply) is not list or len(reply) != 1:
            raise malformed(reply)
        return reply[0]

    def peeked(self, reply: Any) -> LimitResult:
        """Decodes peek.lua's reply."""
        if type(reply) is not list or len(reply) != 4 or any(type(v) is not int for v in reply):
            raise malformed(reply)
        tps = self.ticks_per_second
        return LimitResult(reply[0] == 1, reply[1], reply[2] / tps, reply[3] / tps, self.capacity)

    @staticmethod
    def count(v: Any) -> int:
        """A count of tokens in a reply (usage, release)."""
        if type(v) is not int or v < 0:
            raise malformed(v)
        return v

    def reserved(self, reply: Any) -> Reserved:
        """reserve.lua's reply, checked."""
        # The TAT's lead is a Lua double: a genuine one is an integer within
        # 2^53 (what BucketReading reads).
        if type(reply) is not list or len(reply) != 5 or any(type(v) is not int for v in reply) \
                or not -_EXACT < reply[3] < _EXACT:
            raise malformed(reply)
        return Reserved(*reply)


def malformed(reply: Any) -> BackendError:
    """A reply that is not what the script returns: a proxy in between,
    another program answering on the port, a protocol error."""
    text = repr(reply)
    return BackendError(f"Redis sent a reply guardian cannot read: {text[:80]}{'...' if len(text) > 80 else ''}")


def check_prefix(prefix: Any) -> bytes:
    if not isinstance(prefix, str) or not prefix:
        raise ConfigurationError(f"prefix must be a non-empty str, got {prefix!r}")
    if "{" in prefix or "}" in prefix:
        raise ConfigurationError(
            f"prefix must not contain braces (the hash tag is the key), got {prefix!r}"
        )
    try:
        return prefix.encode()
    except UnicodeEncodeError as exc:
        raise ConfigurationError(f"prefix is not valid Unicode text: {exc}") from None


def resp_bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


class Packer:
    """Builds keys and commands for one (prefix, layout). Every method
    validates its arguments first: a bad key or cost raises before any
    byte is sent."""

    def __init__(self, prefix: str, layout: Layout, limit_in_key: bool = True) -> None:
        #: ``prefix:<limit>:{key}``: a bucket belongs to one limit, so two
        #: backends with different configs never share one by accident.
        #: Without the limit (``limit_in_key=False``): ``prefix:{key}``,
        #: shared on purpose by every config that uses the prefix.
        self.prefix = check_prefix(prefix) + (b":" + layout.tag if limit_in_key else b"") + b":{"
        self.layout = layout
        self.scripts = scripts()
        take = self.scripts["take"].sha.encode()
        # EVALSHA <sha> 1 <key> P D TAU <cost>, with cost 1 pre-encoded: the
        # hot path formats the key into this template and nothing else.
        head = b"*8\r\n$7\r\nEVALSHA\r\n" + resp_bulk(take) + resp_bulk(b"1")
        self._tail = b"".join(resp_bulk(a) for a in layout.argv)
        self._take1 = head + b"$%d\r\n" + self.prefix.replace(b"%", b"%%") + b"%b}\r\n" + (
            self._tail + resp_bulk(b"1")
        ).replace(b"%", b"%%")
        self._extra = len(self.prefix) + 1
        self._bulk = b"$%d\r\n" + self.prefix.replace(b"%", b"%%") + b"%b}\r\n"
        self._evalsha_take = b"$7\r\nEVALSHA\r\n" + resp_bulk(take)
        self._take_sha = take
        self._text_prefix = self.prefix.decode()

    def load_scripts(self) -> Tuple[bytes, int]:
        """SCRIPT LOAD of every script, packed, and how many replies it
        gets: sent on the backend's own connection after a NOSCRIPT."""
        parts = [b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n" + resp_bulk(s.source.encode())
                 for s in self.scripts.values()]
        return b"".join(parts), len(parts)

    def key(self, key: str) -> bytes:
        """The bucket's Redis key: ``prefix:<limit>:{key}`` (the hash tag is
        the key)."""
        return self.prefix + check_key(key) + b"}"

    def take1(self, key: str) -> bytes:
        """The packed EVALSHA of take for one key at cost 1."""
        data = check_key(key)
        return self._take1 % (len(data) + self._extra, data)

    def slot(self, key: str) -> int:
        """The Redis Cluster hash slot of ``key``'s bucket (for a key that
        passed ``take``): CRC16 of the hash tag, which is the key up to its
        first ``}`` (the prefix has no braces), or the whole bucket name
        when that tag is empty."""
        data = key.encode()
        end = data.find(b"}")
        if end == 0:
            data = self.prefix + data + b"}"
        elif end > 0:
            data = data[:end]
        return crc_hqx(data, 0) & 16383

    def take(self, key: str, cost: int) -> bytes:
        """The packed EVALSHA of take for one key at any cost."""
        if cost == 1 and type(cost) is int:
            return self.take1(key)
        return self.command("take", [self.key(key)], self.cost(cost))

    def bulk_keys(self, keys: Sequence[str]) -> List[bytes]:
        """Each key's bucket as a RESP bulk string, checked like ``key``."""
        bulk, extra = self._bulk, self._extra
        out: List[bytes] = []
        append = out.append
        for key in keys:
            try:
                data = key.encode() if type(key) is str else b""
            except UnicodeEncodeError:
                data = b""
            if not 0 < len(data) <= MAX_KEY_BYTES:
                data = check_key(key)  # raises, or accepts a str subclass
            append(bulk % (len(data) + extra, data))
        return out

    def take_keys(self, keys: Sequence[str], cost: bytes) -> bytes:
        """The packed EVALSHA of take for ``keys``, each checked like
        ``key``. Keys of 1 to 1024 characters (at most 4096 UTF-8 bytes)
        are packed by hiredis in C; anything else, including every bad
        key, goes through ``bulk_keys``, which raises the right error."""
        try:
            if pack_command is not None and 0 < min(map(len, keys)) and max(map(len, keys)) <= MAX_KEY_BYTES // 4:
                head, tail = self._text_prefix, "}"
                args: Any = (b"EVALSHA", self._take_sha, len(keys), *[head + k + tail for k in keys],
                             *self.layout.argv, cost)
                packed: bytes = pack_command(args)
                return packed
        except (TypeError, UnicodeEncodeError):
            pass
        return self.take_bulk(self.bulk_keys(keys), cost)

    def take_bulk(self, bulks: Sequence[bytes], cost: bytes) -> bytes:
        """The packed EVALSHA of take for keys from ``bulk_keys``."""
        n = len(bulks)
        return b"*%d\r\n%b$%d\r\n%d\r\n%b%b$%d\r\n%b\r\n" % (
            n + 7, self._evalsha_take, len(b"%d" % n), n, b"".join(bulks), self._tail, len(cost), cost)

    def cost(self, cost: Any) -> bytes:
        return b"%d" % check_cost(cost, self.layout.capacity)

    def peek_cost(self, cost: Any) -> bytes:
        """A peek's cost: 0 (the bucket as it is) up to the capacity."""
        return b"%d" % check_cost(cost, self.layout.capacity, 0)

    def wanted(self, tokens: Any) -> bytes:
        """Tokens asked of reserve: any whole number >= 1 (capped by the script)."""
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            raise ArgumentTypeError(f"tokens must be an int, got {type(tokens).__name__}")
        if tokens < 1:
            raise InvalidArgumentError(f"tokens must be at least 1, got {tokens}")
        return b"%d" % min(tokens, self.layout.capacity)

    def args(self, name: str, keys: Sequence[bytes], *extra: bytes) -> Tuple[Any, ...]:
        """EVALSHA arguments for a generic client call (cluster, pipelines)."""
        return (self.scripts[name].sha, len(keys), *keys, *self.layout.argv, *extra)

    def eval_args(self, name: str, keys: Sequence[bytes], *extra: bytes) -> Tuple[Any, ...]:
        """The same call as EVAL with the source, after a NOSCRIPT."""
        return (self.scripts[name].source, len(keys), *keys, *self.layout.argv, *extra)

    def command(self, name: str, keys: Sequence[bytes], *extra: bytes) -> bytes:
        """One packed EVALSHA."""
        parts = [b"EVALSHA", self.scripts[name].sha.encode(), b"%d" % len(keys), *keys, *self.layout.argv, *extra]
        return b"*%d\r\n" % len(parts) + b"".join(resp_bulk(p) for p in parts)

    def keys(self, keys: Sequence[str]) -> List[bytes]:
        return [self.key(k) for k in keys]

