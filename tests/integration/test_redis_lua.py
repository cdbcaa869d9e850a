"""The Lua scripts against the shared GCRA cases, on a clock the test sets.

The scripts run exactly as shipped except for one line: the test copy takes
NOW off the end of its ARGV instead of redis.call('TIME'). On a nanosecond
clock (``clock_unit_ns=1``) every shared case replays to the nanosecond;
on the production microsecond clock, at today's and at far-future server
times, the cases whose times are whole microseconds do.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Tuple

import pytest
import redis
from gcra_cases import CASES, MULTI_CASES

from guardian import ConfigurationError, TokenBucketConfig
from guardian.backends._redis_scripts import MAX_TAU_TICKS, Layout, read_source

pytestmark = pytest.mark.redis

CLOCK_LINE = "local t = redis.call('TIME')\nlocal NOW = t[1] * 1000000 + t[2]\n"
TODAY_US = 1_790_000_000 * 10**6
YEAR_2250_US = 8_836_000_000 * 10**6


def clocked(name: str, clock_unit_ns: int) -> str:
    source = read_source(name)
    assert source.count(CLOCK_LINE) == 1
    # The clock is taken off the end of ARGV, so the script sees the others as shipped.
    source = source.replace(CLOCK_LINE, "local NOW = tonumber(table.remove(ARGV))\n")
    if clock_unit_ns == 1:
        source = source.replace("local US_PER_MS = 1000\n", "local US_PER_MS = 1000000\n")
    return source


class Driver:
    """Runs the test copies of the scripts for one config at chosen times."""

    def __init__(self, client: redis.Redis, prefix: str, config: TokenBucketConfig, unit: int) -> None:
        self.client, self.prefix = client, prefix
        self.layout = Layout(config, clock_unit_ns=unit)
        self.scripts = {n: client.register_script(clocked(n, unit))
                        for n in ("take", "peek", "usage", "reserve", "release")}
        self.now = 0

    def _run(self, name: str, key: str, *extra: int) -> Any:
        args = [*self.layout.argv, *extra, self.now]
        return self.scripts[name](keys=[f"{self.prefix}:{{{key}}}"], args=args)

    def take(self, key: str, cost: int) -> Tuple[bool, int, float, float]:
        r = self.layout.result(self._run("take", key, cost)[0], cost)
        return r.allowed, r.remaining, r.retry_after, r.reset_after

    def peek(self, key: str, cost: int) -> Tuple[bool, int, float, float]:
        allowed, remaining, retry, reset = self._run("peek", key, cost)
        assert allowed in (0, 1)
        tps = self.layout.ticks_per_second
        return bool(allowed), remaining, retry / tps, reset / tps

    def usage(self, key: str) -> int:
        return int(self._run("usage", key))

    def reserve(self, key: str, n: int, need: "int | None" = None) -> list:
        """The first four fields; the fifth, NOW, is checked separately."""
        reply = list(self._run("reserve", key, n, *([] if need is None else [need])))
        assert reply[4] == self.now
        self.last = reply
        return reply[:4]

    def release(self, key: str, n: int, reservation: "list | None" = None) -> list:
        """Gives back ``n`` tokens of ``reservation`` (the last by default)."""
        r = reservation or self.last
        return list(self._run("release", key, n, r[4], r[3]))


def whole_us(steps: list) -> bool:
    return all(Fraction(str(at)) * 10**6 == int(Fraction(str(at)) * 10**6) for at, *_ in steps)


def replay(driver: Driver, steps: list, start: int, unit_ns: int) -> None:
    for at, op, key, cost, expected in steps:
        driver.now = start + int(Fraction(str(at)) * 10**9 / unit_ns)
        if op == "usage":
            assert driver.usage(key) == expected, (at, op, key)
            continue
        got = driver.peek(key, cost) if op == "peek" else driver.take(key, cost)
        assert got[:2] == expected[:2], (at, op, key, cost, got)
        assert got[2] == pytest.approx(expected[2], abs=1e-12), (at, key, cost, got)
        assert got[3] == pytest.approx(expected[3], abs=1e-12), (at, key, cost, got)


@pytest.mark.parametrize("case", sorted(CASES))
def test_shared_cases_on_a_nanosecond_clock(raw: redis.Redis, prefix: str, case: str) -> None:
    (capacity, rate, interval), steps = CASES[case]
    driver = Driver(raw, prefix, TokenBucketConfig(capacity, rate, interval), unit=1)
    replay(driver, steps, 10**9, 1)


@pytest.mark.parametrize("start", [TODAY_US, YEAR_2250_US], ids=["today", "year2250"])
@pytest.mark.parametrize("case", sorted(c for c in CASES if whole_us(CASES[c][1])))
def test_shared_cases_on_the_server_clock_units(raw: redis.Redis, prefix: str, case: str, start: int) -> None:
    (capacity, rate, interval), steps = CASES[case]
    driver = Driver(raw, prefix, TokenBucketConfig(capacity, rate, interval), unit=1000)
    replay(driver, steps, start, 1000)


def test_fractional_interval_does_not_drift_over_an_hour(raw: redis.Redis, prefix: str) -> None:
    """3 per 7 s: T = 7e6/3 us, stored as a fraction. Asking exactly when
    told for an hour admits 3 + 3600*3//7, the k-th refill at ceil(k*T)."""
    driver = Driver(raw, prefix, TokenBucketConfig(3, 3, 7.0), unit=1000)
    assert (driver.layout.P, driver.layout.D) == (7_000_000, 3)
    driver.now = TODAY_US
    times = []
    while driver.now <= TODAY_US + 3600 * 10**6:
        allowed, _, retry, _ = driver.take("k", 1)
        if allowed:
            times.append(driver.now - TODAY_US)
        else:
            driver.now += -(-round(retry * 3_000_000) // 3)  # ceil(ticks / D) us
    assert len(times) == 3 + 3600 * 3 // 7
    for k, at in enumerate(times[3:], start=1):
        assert at == -(-k * 7_000_000 // 3), k


def test_a_million_per_second_at_capacity(raw: redis.Redis, prefix: str) -> None:
    driver = Driver(raw, prefix, TokenBucketConfig(1_000_000, 1_000_000), unit=1000)
    driver.now = YEAR_2250_US
    assert driver.take("k", 1_000_000)[:2] == (True, 0)
    assert driver.take("k", 1)[0] is False
    driver.now += 1
    assert driver.take("k", 1)[:2] == (True, 0)
    driver.now += 999_999
    assert driver.take("k", 999_999)[:2] == (True, 0)
    assert driver.reserve("k", 5) == [0, 0, 1, 1_000_000]


def test_one_per_day_cost_near_capacity(raw: redis.Redis, prefix: str) -> None:
    driver = Driver(raw, prefix, TokenBucketConfig(50_000, 1, 86_400), unit=1000)
    driver.now = YEAR_2250_US
    assert driver.take("k", 49_999)[:2] == (True, 1)
    assert driver.take("k", 2) == (False, 1, 86_400.0, 49_999 * 86_400.0)
    driver.now += 86_400 * 10**6 - 1
    assert driver.take("k", 2)[0] is False
    driver.now += 1
    assert driver.take("k", 2)[:2] == (True, 0)
    assert driver.usage("k") == 50_000
    # The TTL is the time until the bucket is full again.
    assert 0 <= 50_000 * 86_400_000 - raw.pttl(f"{prefix}:{{k}}") < 1000


def test_reserve_takes_what_the_bucket_holds(raw: redis.Redis, prefix: str) -> None:
    driver = Driver(raw, prefix, TokenBucketConfig(10, 5), unit=1000)
    driver.now = TODAY_US
    assert driver.reserve("k", 4) == [4, 6, 0, 800_000]
    assert driver.reserve("k", 100) == [6, 0, 0, 2_000_000]
    assert driver.reserve("k", 1) == [0, 0, 200_000, 2_000_000]
    driver.now += 600_000
    assert driver.reserve("k", 100) == [3, 0, 0, 2_000_000]


def test_reserve_grants_nothing_below_the_cost_asked(raw: redis.Redis, prefix: str) -> None:
    """With a needed count, reserve takes nothing unless that many fit, and
    its retry_after is the wait for all of them (the GCRA rule for cost)."""
    driver = Driver(raw, prefix, TokenBucketConfig(10, 5), unit=1000)  # T = 200 ms
    driver.now = TODAY_US
    assert driver.reserve("k", 7, need=3) == [7, 3, 0, 1_400_000]
    assert driver.reserve("k", 5, need=4) == [0, 3, 200_000, 1_400_000]  # 3 there, 1 more in 200 ms
    assert driver.usage("k") == 7  # the refusal took nothing
    assert driver.reserve("k", 1, need=3) == [3, 0, 0, 2_000_000]  # wanted is raised to needed
    assert driver.reserve("k", 10, need=10) == [0, 0, 2_000_000, 2_000_000]
    driver.now += 400_000
    assert driver.reserve("k", 10, need=2) == [2, 0, 0, 2_000_000]


def test_peek_at_the_edges_of_the_exact_range(raw: redis.Redis, prefix: str) -> None:
    driver = Driver(raw, prefix, TokenBucketConfig(50_000, 1, 86_400), unit=1000)
    driver.now = YEAR_2250_US
    assert driver.peek("k", 50_000) == (True, 0, 0.0, 50_000 * 86_400.0)
    assert driver.take("k", 49_999)[:2] == (True, 1)
    assert driver.peek("k", 2) == (False, 1, 86_400.0, 49_999 * 86_400.0)
    assert driver.peek("k", 0) == (True, 1, 0.0, 49_999 * 86_400.0)
    assert raw.pttl(f"{prefix}:{{k}}") > 0 and driver.usage("k") == 49_999  # untouched


def test_the_range_limit_is_enforced_at_construction() -> None:
    # One per day: 2^52 us is 142 years, so 52_124 days of burst fit...
    Layout(TokenBucketConfig(52_124, 1, 86_400))
    with pytest.raises(ConfigurationError, match="2\\^52"):
        Layout(TokenBucketConfig(52_125, 1, 86_400))
    # ...and with T = 17/16 ns, the worst denominator: 16000 ticks per us.
    fast = Layout(TokenBucketConfig(10**9, 16, 1.7e-8))
    assert (fast.P, fast.D) == (17, 16_000) and fast.tau <= MAX_TAU_TICKS


def test_release_undoes_a_reservation_exactly(raw: redis.Redis, prefix: str) -> None:
    """Reserve 10, give 4 back at once: the bucket is as after reserving 6."""
    driver = Driver(raw, prefix, TokenBucketConfig(10, 5), unit=1000)
    driver.now = TODAY_US
    assert driver.reserve("k", 10) == [10, 0, 0, 2_000_000]
    assert driver.release("k", 4) == [4, 4]
    assert driver.take("k", 4)[:2] == (True, 0)
    assert driver.take("k", 1)[0] is False
    # Everything back: the key is gone, a full bucket.
    driver.now += 10**6
    assert driver.reserve("k", 100) == [5, 0, 0, 2_000_000]  # 5 refilled in 1 s
    assert driver.release("k", 5) == [5, 5]
    assert driver.usage("k") == 5
    driver.now += 10**6
    assert driver.reserve("k", 3) == [3, 7, 0, 600_000]
    assert driver.release("k", 3) == [3, 10]
    assert raw.exists(f"{prefix}:{{k}}") == 0  # a full bucket is no key


def test_release_never_returns_tokens_that_refilled(raw: redis.Redis, prefix: str) -> None:
    """A token whose place in the timeline has passed has refilled already:
    giving it back would admit it twice."""
    driver = Driver(raw, prefix, TokenBucketConfig(10, 5), unit=1000)
    driver.now = TODAY_US
    reservation = driver.reserve("k", 10) and driver.last
    driver.now += 1_100_000  # 5.5 tokens refilled: 4 reserved ones still ahead
    assert driver.release("k", 10, reservation) == [4, 9]
    assert driver.take("k", 9)[:2] == (True, 0) and driver.take("k", 1)[0] is False
    driver.now += 10**6 * 60  # long after: nothing to give back, nothing changes
    assert driver.release("k", 10, reservation) == [0, 10]


def test_release_after_others_reserved_keeps_their_tokens(raw: redis.Redis, prefix: str) -> None:
    """Two nodes reserve; the first gives its tokens back: the second's stay
    taken, and no more than the bucket ever held is available."""
    driver = Driver(raw, prefix, TokenBucketConfig(10, 5), unit=1000)
    driver.now = TODAY_US
    first = driver.reserve("k", 6) and driver.last
    assert driver.reserve("k", 6) == [4, 0, 0, 2_000_000]
    assert driver.release("k", 6, first) == [6, 6]
    assert driver.reserve("k", 100) == [6, 0, 0, 2_000_000]
    assert driver.take("k", 1)[0] is False
    # (The script cannot tell a reservation given back twice: the client
    # gives back each reservation's tokens once, at most what it granted.)


def test_release_at_the_edges_of_the_exact_range(raw: redis.Redis, prefix: str) -> None:
    driver = Driver(raw, prefix, TokenBucketConfig(1_000_000, 1_000_000), unit=1000)
    driver.now = YEAR_2250_US
    assert driver.reserve("k", 1_000_000) == [1_000_000, 0, 0, 1_000_000]
    driver.now += 1
    assert driver.release("k", 1_000_000) == [999_999, 1_000_000]  # 1 refilled in 1 us
    driver = Driver(raw, prefix + "d", TokenBucketConfig(50_000, 1, 86_400), unit=1000)
    driver.now = YEAR_2250_US
    assert driver.reserve("k", 50_000)[0] == 50_000
    driver.now += 86_400 * 10**6 * 3 // 2  # 1.5 tokens refilled
    assert driver.release("k", 50_000) == [49_998, 49_999]


def test_many_keys_in_one_call_decide_as_one_call_each(raw: redis.Redis, prefix: str) -> None:
    """take reads every TAT with one MGET up front: a key listed again must
    still see its earlier admissions in the same call, at the same instant."""
    config = TokenBucketConfig(3, 1, 7.0)
    many, single = Driver(raw, prefix + "m", config, 1000), Driver(raw, prefix + "s", config, 1000)
    many.now = single.now = TODAY_US
    single.take("old", 2)
    many.take("old", 2)
    keys = ["a", "old", "b", "a", "old", "a", "a", "c", "old"]
    for now in (TODAY_US + 5, TODAY_US + 2_500_001):
        many.now = single.now = now
        expected = [single.take(k, 1) for k in keys]
        reply = many.scripts["take"](keys=[f"{many.prefix}:{{{k}}}" for k in keys],
                                     args=[*many.layout.argv, 1, now])
        got = [many.layout.result(v, 1) for v in reply]
        assert [(r.allowed, r.remaining, r.retry_after, r.reset_after) for r in got] == expected


def test_a_key_of_another_type_is_never_overwritten(raw: redis.Redis, prefix: str) -> None:
    """MGET reads a hash as nil, like an absent key: the write must not
    replace it (SET NX), and the call fails."""
    driver = Driver(raw, prefix, TokenBucketConfig(3, 1), 1000)
    driver.now = TODAY_US
    raw.hset(f"{prefix}:{{h}}", "a", 1)
    with pytest.raises(redis.ResponseError, match="guardian did not write"):
        driver.take("h", 1)
    assert raw.hgetall(f"{prefix}:{{h}}") == {b"a": b"1"}


# --- several limits on one key: take_all.lua ----------------------------------


class MultiDriver:
    """Runs the test copy of take_all.lua for several limits at chosen times."""

    def __init__(self, client: redis.Redis, prefix: str, configs: list, unit: int) -> None:
        self.prefix = prefix
        self.layouts = [Layout(c, clock_unit_ns=unit) for c in configs]
        self.script = client.register_script(clocked("take_all", unit))
        self.now = 0

    def keys(self, key: str) -> list:
        return [f"{self.prefix}:{{{key}}}:{i}" for i in range(len(self.layouts))]  # one hash slot

    def take(self, key: str, cost: int) -> Tuple[Any, list]:
        first, *rest = self.layouts
        args = [*first.argv, cost, *[a for layout in rest for a in layout.argv], self.now]
        reply = self.script(keys=self.keys(key), args=args)
        denied_by, answers = reply[0], []
        for i, layout in enumerate(self.layouts):
            remaining, retry, reset = reply[1 + 3 * i: 4 + 3 * i]
            tps = layout.ticks_per_second
            answers.append((retry == 0, remaining, retry / tps, reset / tps))  # allowed: no wait
        return (None if denied_by == 0 else denied_by - 1), answers


def replay_multi(driver: MultiDriver, steps: list, start: int, unit_ns: int) -> None:
    for at, key, cost, (denied_by, expected) in steps:
        driver.now = start + int(Fraction(str(at)) * 10**9 / unit_ns)
        got_by, got = driver.take(key, cost)
        assert got_by == denied_by, (at, key, cost, got)
        assert [g[:2] for g in got] == [e[:2] for e in expected], (at, key, cost, got)
        assert [g[2:] for g in got] == [pytest.approx(e[2:], abs=1e-9) for e in expected], (at, key, cost, got)


@pytest.mark.parametrize("case", sorted(MULTI_CASES))
@pytest.mark.parametrize("unit, start", [(1, 10**9), (1000, TODAY_US), (1000, YEAR_2250_US)],
                         ids=["ns", "us-today", "us-year2250"])
def test_shared_multi_limit_cases(raw: redis.Redis, prefix: str, case: str, unit: int, start: int) -> None:
    configs, steps = MULTI_CASES[case]
    driver = MultiDriver(raw, prefix, [TokenBucketConfig(*c) for c in configs], unit)
    replay_multi(driver, steps, start, unit)


def test_take_all_takes_from_every_bucket_or_none(raw: redis.Redis, prefix: str) -> None:
    driver = MultiDriver(raw, prefix, [TokenBucketConfig(2, 1, 1), TokenBucketConfig(3, 1, 60)], 1000)
    driver.now = TODAY_US
    keys = driver.keys("k")
    assert driver.take("k", 2)[0] is None
    ttl = [raw.pttl(k) for k in keys]
    assert 0 < ttl[0] <= 2000 and 0 < ttl[1] <= 120_000  # each bucket lives until it is full again
    values = raw.mget(keys)
    assert driver.take("k", 1)[0] == 0  # the first limit is empty...
    assert raw.mget(keys) == values  # ...so the second was not taken from
    driver.now += 2 * 10**6
    assert driver.take("k", 2)[0] == 1  # the second has one left: nothing is taken
    assert raw.mget(keys) == values
    assert driver.take("k", 1)[0] is None
    raw.hset(f"{prefix}:{{h}}:1", "a", 1)  # a foreign value in one bucket fails the call, changing nothing
    with pytest.raises(redis.ResponseError, match="guardian did not write"):
        driver.take("h", 1)
    assert raw.exists(f"{prefix}:{{h}}:0") == 0


@pytest.mark.parametrize("limits", ["200/hour and 300/hour", "300/hour and 200/hour"])
def test_take_all_from_two_clients_admits_exactly_the_binding_limit(redis_server: Any, prefix: str,
                                                                    limits: str) -> None:
    """The shipped script (server clock), hammered by two clients at once:
    exactly the tighter limit's tokens are admitted, and each bucket holds
    exactly the admitted takes (a denial takes from none)."""
    import threading

    from guardian import Limits

    layouts = [Layout(c) for c in Limits.parse(limits)]
    source = read_source("take_all")
    keys = [f"{prefix}:{{hot}}:{i}" for i in range(2)]
    args = [*layouts[0].argv, 1, *layouts[1].argv]
    admitted = [0, 0]
    checks = [0, 0]

    def hammer(i: int) -> None:
        client = redis.Redis(port=redis_server.port)
        script = client.register_script(source)
        for _ in range(600):
            admitted[i] += script(keys=keys, args=args)[0] == 0
            checks[i] += 1
        client.close()

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert checks == [600, 600] and sum(admitted) == 200
    raw = redis.Redis(port=redis_server.port)
    usage = read_source("usage")
    for key, layout in zip(keys, layouts):
        assert raw.eval(usage, 1, key, *layout.argv) == 200
    raw.close()
