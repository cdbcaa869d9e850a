"""The façade: RateLimiter and AsyncRateLimiter.

They add the failure policy to a backend: when storage fails, a check is
allowed (``fail_open=True``, the default), denied (``fail_open=False``) or
decided by an in-process MemoryBackend with the same config
(``fail_open="local"``) until the backend is back; ``local_share`` (0 < f
<= 1) scales that in-process limit to a fraction of the limit (capacity and
refill rate), so N processes falling back together admit about f x N
times the limit, not N times, and ``local_shared="name"`` keeps that
fallback in a shared-memory table, so the processes of one host that name
it fall back to one limit between them (docs/reliability.md). A circuit breaker stops
calling a backend that failed ``breaker_threshold`` times in a row and
probes it again every ``breaker_cooldown`` seconds, so a dead Redis costs
no network time per check and recovery needs no restart. Failures are
logged at most once per ``log_interval`` seconds and counted (``errors``:
backend calls that failed; ``failures``: checks decided by the policy).
No backend exception escapes a check. Argument errors are the caller's
and are raised as they are, with or without the backend.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import threading
import time
from fractions import Fraction
from typing import Any, Awaitable, Callable, Generic, List, Optional, Sequence, TypeVar, Union

from ._breaker import CircuitBreaker
from ._errors import (ArgumentTypeError, BackendConfigError, BackendError, ConfigurationError, InvalidArgumentError,
                      MisuseError, RateLimitExceeded)
from ._args import check_cost, check_key, check_keys
from ._config import Limits, TokenBucketConfig
from ._result import LimitResult
from .backends.base import AsyncBackend, Backend
from .backends.memory import MemoryBackend

__all__ = ["RateLimiter", "AsyncRateLimiter"]

log = logging.getLogger("guardian")

FailOpen = Union[bool, str]
F = TypeVar("F", bound=Callable[..., Any])
#: A decorator's key or cost: a value, or a callable of the function's arguments.
KeyArg = Union[str, Callable[..., str]]
CostArg = Union[int, Callable[..., int]]

#: The shortest wait of ``acquire`` between two checks (a fail-closed denial
#: without a breaker says retry_after=0; do not spin on it).
MIN_WAIT = 0.001


def _arg(value: Any, args: Any, kwargs: Any) -> Any:
    return value(*args, **kwargs) if callable(value) else value


_OPERATIONS = ("take", "try_take", "take_many", "usage", "reset")


def _is_async(backend: Any) -> bool:
    return inspect.iscoroutinefunction(backend.take)


def check_backend(backend: Any, limiter: str) -> None:
    """Refuses, with the fix in the message, what is not a backend."""
    if isinstance(backend, TokenBucketConfig):
        raise MisuseError(
            f"{limiter} takes a backend, not a TokenBucketConfig: did you mean "
            f"{limiter}(MemoryBackend(config))? (or a Redis backend built with the config)")
    missing = [name for name in _OPERATIONS if not callable(getattr(backend, name, None))]
    if missing or not isinstance(getattr(backend, "config", None), (TokenBucketConfig, Limits)):
        raise MisuseError(
            f"{limiter} takes a backend (MemoryBackend, RedisBackend, ...), got {type(backend).__name__!r}"
            + (f" (no {', '.join(missing)})" if missing else " (no TokenBucketConfig in .config)"))


def check_timeout(timeout: Any) -> Optional[float]:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ArgumentTypeError(f"timeout must be None or seconds, got {type(timeout).__name__}")
    if not 0 <= timeout < float("inf"):
        raise InvalidArgumentError(f"timeout must be None or finite seconds >= 0, got {timeout!r}")
    return float(timeout)


#: The backends a limiter takes: a type checker refuses any other.
B = TypeVar("B", Backend, Union[AsyncBackend, MemoryBackend])


class _Policy(Generic[B]):
    """What both limiters share: the decision and its bookkeeping."""

    def __init__(
        self,
        backend: B,
        fail_open: FailOpen = True,
        log_interval: float = 10.0,
        breaker_threshold: Optional[int] = 3,
        breaker_cooldown: float = 1.0,
        local_share: float = 1.0,
        local_shared: Optional[str] = None,
    ) -> None:
        self._check(backend)
        if not isinstance(fail_open, bool) and fail_open != "local":
            raise MisuseError(
                f'fail_open must be True (allow), False (deny) or "local" (an in-process limit), '
                f"got {fail_open!r}")
        if isinstance(local_share, bool) or not isinstance(local_share, (int, float)) \
                or not 0 < local_share <= 1:
            raise ConfigurationError(
                f"local_share must be a fraction of the limit in (0, 1], got {local_share!r} "
                "(for N processes sharing one limit, 1/N keeps their fallbacks within it)")
        if local_share != 1 and fail_open != "local":
            raise MisuseError(
                f'local_share={local_share!r} scales the fallback of fail_open="local" only; '
                f"with fail_open={fail_open!r} it would change nothing")
        self.local_share = float(local_share)
        if local_shared is not None and fail_open != "local":
            raise MisuseError(
                f'local_shared={local_shared!r} names the shared table of fail_open="local"\'s fallback; '
                f"with fail_open={fail_open!r} there is none")
        self.backend: Any = backend
        self.fail_open = fail_open
        if isinstance(log_interval, bool) or not isinstance(log_interval, (int, float)) \
                or not 0 <= log_interval < float("inf"):
            # Checked now: a bad one would first be used during an outage.
            raise ConfigurationError(f"log_interval must be finite seconds >= 0, got {log_interval!r}")
        self.log_interval = log_interval
        #: Checks decided by policy because the backend failed or the breaker is open.
        self.failures = 0
        #: Backend calls that raised BackendError.
        self.errors = 0
        #: Of those, the ones where the backend refused guardian's
        #: credentials or permissions (a configuration error, not an outage).
        self.config_errors = 0
        #: None when disabled (every check then reaches the backend).
        self.breaker = (
            CircuitBreaker(breaker_threshold, breaker_cooldown) if breaker_threshold is not None else None
        )
        self._last_log = dict.fromkeys(("error", "config", "breaker", "recovered"), float("-inf"))
        self._limit: int = backend.config.capacity
        self._local: Optional[MemoryBackend] = None
        self._local_lock = threading.Lock()
        if local_shared is not None:
            # Made now, not at the first failure: a bad name, or a table of
            # that name made for another limit, is refused here, not mid-outage.
            self._local = MemoryBackend(local_config(backend.config, self.local_share), shared=local_shared)
        self._bind(backend)

    def _check(self, backend: Any) -> None:
        """Subclasses refuse, with the fix, a backend they cannot use."""

    def _bind(self, backend: Any) -> None:
        """Subclasses look at the backend once here."""

    def _check_fixed(self, key: Any, cost: Any) -> None:
        """A decorator's fixed key and cost are checked when it is applied,
        not at the first call: a cost no bucket can hold is a bug in the code."""
        if not callable(key):
            check_key(key)
        if not callable(cost):
            capacity = getattr(getattr(self.backend, "config", None), "capacity", None)
            check_cost(cost, capacity if isinstance(capacity, int) else 2**62)

    @property
    def config(self) -> TokenBucketConfig:
        """The limit every key of this limiter is checked against."""
        config: TokenBucketConfig = self.backend.config
        return config

    @property
    def can_fail(self) -> bool:
        """Whether a check may wait on I/O (a network backend) rather than
        only compute (the in-process memory core)."""
        return bool(getattr(self.backend, "can_fail", True))

    def _log(self, channel: str, level: int, msg: str, *args: Any) -> None:
        """Logs at most once per ``log_interval`` per channel."""
        now = time.monotonic()
        if now - self._last_log[channel] >= self.log_interval:
            self._last_log[channel] = now
            log.log(level, msg, *args)

    def _gate(self) -> bool:
        """False while the breaker keeps this call off the backend."""
        breaker = self.breaker
        return breaker is None or not breaker.failures or breaker.allow()

    def _ok(self) -> None:
        if self.breaker is not None and self.breaker.failures and self.breaker.success():
            self._log("recovered", logging.INFO, "guardian: backend %s is back; checks use it again",
                      type(self.backend).__name__)

    def _error(self, exc: BaseException) -> None:
        self.errors += 1
        name = type(self.backend).__name__
        if isinstance(exc, BackendConfigError):
            self.config_errors += 1
            self._log(
                "config", logging.ERROR,
                "guardian: backend %s is misconfigured (%s); %s checks until it is fixed "
                "(%d configuration errors so far)",
                name, exc, self._mode(), self.config_errors,
            )
        else:
            self._log(
            "error", logging.WARNING,
                "guardian: backend %s failed (%s: %s); %s checks until it recovers "
                "(%d failed backend calls, %d checks decided by policy so far)",
                name, type(exc).__name__, exc, self._mode(), self.errors, self.failures + 1,
            )
        if self.breaker is not None and self.breaker.failure():
            self._log("breaker", logging.WARNING,
                      "guardian: circuit breaker open after %d failures of %s in a row; "
                      "%s checks without calling it, probing every %gs",
                      self.breaker.threshold, name, self._mode(), self.breaker.cooldown)

    def _mode(self) -> str:
        if self.fail_open == "local":
            return "limiting in-process"
        return "allowing" if self.fail_open else "denying"

    def _fallback(self) -> MemoryBackend:
        if self._local is None:
            with self._local_lock:
                if self._local is None:
                    self._local = MemoryBackend(local_config(self.backend.config, self.local_share))
        return self._local

    def _decide(self, key: str, cost: int) -> LimitResult:
        """The policy's answer while the backend cannot give one."""
        self.failures += 1
        if self.fail_open == "local":
            local = self._fallback()
            if cost <= local.config.capacity or self.local_share == 1.0:
                return local.take(key, cost)
            # A cost the limit allows but the scaled local bucket never can.
            check_key(key)
            check_cost(cost, self._limit)
            return LimitResult(False, 0, 0.0, 0.0, local.config.capacity)
        check_key(key)
        check_cost(cost, self._limit)
        retry = 0.0 if self.fail_open or self.breaker is None else self.breaker.retry_after()
        return LimitResult(bool(self.fail_open), 0, retry, 0.0, self._limit)

    # Tests replace these two to drive acquire() with a manual clock.
    _now: Callable[[], float] = staticmethod(time.monotonic)

    def _deadline(self, timeout: Optional[float]) -> Optional[float]:
        timeout = check_timeout(timeout)
        return None if timeout is None else self._now() + timeout

    def _wait(self, result: LimitResult, deadline: Optional[float]) -> float:
        """How long acquire() sleeps after a denial; raises RateLimitExceeded
        at once when the wait would pass the deadline (no pointless sleep)."""
        wait = max(float(result.retry_after), MIN_WAIT)
        if deadline is not None and self._now() + wait > deadline:
            raise RateLimitExceeded(result)
        return wait

    def _decide_many(self, keys: Sequence[str], cost: int) -> List[LimitResult]:
        if self.fail_open == "local" and cost <= self._fallback().config.capacity:
            self.failures += len(keys)
            return self._fallback().take_many(keys, cost)
        for key in keys:
            check_key(key)
        return [self._decide(key, cost) for key in keys] if keys else []


def local_config(config: Any, share: float) -> Any:
    """The in-process fallback's limit: ``share`` of ``config``'s capacity
    (at least 1 token) and of its refill rate; of each limit's, for Limits."""
    if share == 1.0:
        return config
    if isinstance(config, Limits):
        return Limits(*(local_config(c, share) for c in config))
    # 1/3 as a float is 0.333...; the nearest simple fraction is what was meant.
    fraction = Fraction(share).limit_denominator(1_000_000)
    rate = config.refill_rate
    exact = Fraction(str(rate)) if isinstance(rate, float) else Fraction(rate)
    return TokenBucketConfig(max(1, math.floor(config.capacity * fraction)), exact * fraction,  # type: ignore[arg-type]
                             config.refill_interval)


class RateLimiter(_Policy[Backend]):
    """Checks keys against one limit held by ``backend``.

    >>> limiter = RateLimiter(MemoryBackend(TokenBucketConfig(100, 10)))
    >>> limiter.try_acquire("client-42")
    True
    """

    backend: Backend

    def _check(self, backend: Any) -> None:
        check_backend(backend, "RateLimiter")
        if _is_async(backend):
            raise MisuseError(
                f"{type(backend).__name__} is an asyncio backend: use AsyncRateLimiter, or its "
                f"synchronous twin ({type(backend).__name__.replace('Async', '', 1)}) with RateLimiter")

    def _bind(self, backend: Backend) -> None:
        if not backend.can_fail:
            # Nothing to guard: callers reach the backend (for MemoryBackend,
            # the C core's own method) with no Python frame in between.
            self.try_acquire = backend.try_take  # type: ignore[method-assign]
            self.check_limit = backend.take  # type: ignore[method-assign]
            self.get_usage = backend.usage  # type: ignore[method-assign]
            self.reset = backend.reset  # type: ignore[method-assign]
            return
        table = getattr(backend, "table", None)
        if isinstance(self.fail_open, bool) and table is not None and hasattr(table, "deciding") \
                and backend.try_take == table.try_acquire and backend.take == table.check_result:
            # A shared table fails only when a stripe lock stays stuck, and a
            # policy of True or False is a fixed answer: the core gives it
            # itself (nothing taken, retry_after 0 as _decide's while the
            # breaker is closed) and reports it to _stuck, so callers reach
            # the core with no Python frame in between here too.
            view = table.deciding(self.fail_open, self._stuck)
            self.try_acquire = view.try_acquire  # type: ignore[method-assign]
            self.check_limit = view.check_result  # type: ignore[method-assign]

    def _stuck(self, exc: BaseException) -> None:
        """A check the core decided by the policy (a stuck stripe lock):
        counted and logged as the wrapper below would."""
        self._error(exc)
        self.failures += 1

    def check_limit(self, key: str, cost: int = 1) -> LimitResult:
        """Take ``cost`` tokens for ``key`` if it has them; the full decision."""
        if self._gate():
            try:
                result: LimitResult = self.backend.take(key, cost)
            except BackendError as exc:
                self._error(exc)
            else:
                self._ok()
                return result
        return self._decide(key, cost)

    def try_acquire(self, key: str, cost: int = 1) -> bool:
        """Take ``cost`` tokens for ``key`` if it has them; True when taken."""
        if self._gate():
            try:
                allowed = bool(self.backend.try_take(key, cost))
            except BackendError as exc:
                self._error(exc)
            else:
                self._ok()
                return allowed
        return self._decide(key, cost).allowed

    def check_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        """One check per key in one backend call (one round trip for Redis)."""
        keys = check_keys(keys)
        if self._gate():
            try:
                results: List[LimitResult] = self.backend.take_many(keys, cost)
            except BackendError as exc:
                self._error(exc)
            else:
                self._ok()
                return results
        return self._decide_many(keys, cost)

    def get_usage(self, key: str) -> int:
        """Tokens of ``key``'s bucket in use now (0 when full or unknown).
        Raises BackendError when the backend cannot tell."""
        return int(self.backend.usage(key))

    def reset(self, key: str) -> None:
        """Refill ``key``'s bucket. Raises BackendError when storage fails."""
        self.backend.reset(key)

    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    def acquire(self, key: str, cost: int = 1, timeout: Optional[float] = None) -> LimitResult:
        """Wait until ``cost`` tokens for ``key`` are taken, sleeping each
        denial's ``retry_after``; returns the allowed result. With
        ``timeout`` (seconds), raises RateLimitExceeded (carrying the last
        denial) as soon as the next wait would end after it."""
        deadline = self._deadline(timeout)
        while True:
            result = self.check_limit(key, cost)
            if result.allowed:
                return result
            self._sleep(self._wait(result, deadline))

    def limit(self, key: KeyArg, cost: CostArg = 1) -> Callable[[F], F]:
        """Decorator: each call of the function (sync or async) first takes
        ``cost`` tokens for ``key`` and raises RateLimitExceeded when denied.
        ``key`` and ``cost`` may be callables of the function's arguments."""
        self._check_fixed(key, cost)

        def decorate(fn: F) -> F:
            if inspect.iscoroutinefunction(fn):
                @functools.wraps(fn)
                async def limited_async(*args: Any, **kwargs: Any) -> Any:
                    result = self.check_limit(_arg(key, args, kwargs), _arg(cost, args, kwargs))
                    if not result.allowed:
                        raise RateLimitExceeded(result)
                    return await fn(*args, **kwargs)
                return limited_async  # type: ignore[return-value]

            @functools.wraps(fn)
            def limited(*args: Any, **kwargs: Any) -> Any:
                result = self.check_limit(_arg(key, args, kwargs), _arg(cost, args, kwargs))
                if not result.allowed:
                    raise RateLimitExceeded(result)
                return fn(*args, **kwargs)
            return limited  # type: ignore[return-value]
        return decorate

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "RateLimiter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRateLimiter(_Policy[Union[AsyncBackend, MemoryBackend]]):
    """RateLimiter for asyncio code: the same four operations as coroutines.
    Works with asyncio backends, and with in-process backends (whose calls
    never block) directly."""

    backend: Any

    def _check(self, backend: Any) -> None:
        check_backend(backend, "AsyncRateLimiter")
        # In-process backends (MemoryBackend, local or shared: does_io False)
        # answer at once; any other synchronous backend would block the loop.
        does_io = getattr(backend, "does_io", backend.can_fail and not isinstance(backend, MemoryBackend))
        if not _is_async(backend) and does_io:
            raise MisuseError(
                f"{type(backend).__name__} is a blocking network backend: its calls would stall "
                f"the event loop. Use Async{type(backend).__name__} with AsyncRateLimiter, or "
                f"RateLimiter")

    def _bind(self, backend: Any) -> None:
        #: False for an in-process backend, whose calls return at once.
        self._native = _is_async(backend)

    async def check_limit(self, key: str, cost: int = 1) -> LimitResult:
        """Take ``cost`` tokens for ``key`` if it has them; the full decision."""
        if self._gate():
            try:
                result: LimitResult = (
                    await self.backend.take(key, cost) if self._native else self.backend.take(key, cost)
                )
            except BackendError as exc:
                self._error(exc)
            else:
                self._ok()
                return result
        return self._decide(key, cost)

    async def try_acquire(self, key: str, cost: int = 1) -> bool:
        """Take ``cost`` tokens for ``key`` if it has them; True when taken."""
        return (await self.check_limit(key, cost)).allowed

    async def check_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        """One check per key in one backend call."""
        keys = check_keys(keys)
        if self._gate():
            try:
                results: List[LimitResult] = (
                    await self.backend.take_many(keys, cost) if self._native else self.backend.take_many(keys, cost)
                )
            except BackendError as exc:
                self._error(exc)
            else:
                self._ok()
                return results
        return self._decide_many(keys, cost)

    async def get_usage(self, key: str) -> int:
        """Tokens of ``key``'s bucket in use now."""
        return int(await self.backend.usage(key) if self._native else self.backend.usage(key))

    async def reset(self, key: str) -> None:
        """Refill ``key``'s bucket."""
        if self._native:
            await self.backend.reset(key)
        else:
            self.backend.reset(key)

    _sleep: Callable[[float], Awaitable[None]] = staticmethod(asyncio.sleep)

    async def acquire(self, key: str, cost: int = 1, timeout: Optional[float] = None) -> LimitResult:
        """Await until ``cost`` tokens for ``key`` are taken (see
        RateLimiter.acquire); other tasks run while it waits."""
        deadline = self._deadline(timeout)
        while True:
            result = await self.check_limit(key, cost)
            if result.allowed:
                return result
            await self._sleep(self._wait(result, deadline))

    def limit(self, key: KeyArg, cost: CostArg = 1) -> Callable[[F], F]:
        """Decorator for coroutine functions: each call first takes ``cost``
        tokens for ``key`` and raises RateLimitExceeded when denied."""
        self._check_fixed(key, cost)

        def decorate(fn: F) -> F:
            if not inspect.iscoroutinefunction(fn):
                raise MisuseError("AsyncRateLimiter.limit decorates coroutine functions; "
                                "use RateLimiter.limit for plain functions")

            @functools.wraps(fn)
            async def limited(*args: Any, **kwargs: Any) -> Any:
                result = await self.check_limit(_arg(key, args, kwargs), _arg(cost, args, kwargs))
                if not result.allowed:
                    raise RateLimitExceeded(result)
                return await fn(*args, **kwargs)
            return limited  # type: ignore[return-value]
        return decorate

    async def aclose(self) -> None:
        close = getattr(self.backend, "aclose", None)
        if close is not None:
            await close()
        else:
            self.backend.close()

    async def __aenter__(self) -> "AsyncRateLimiter":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
