"""The Redis backends' pure parts: units, keys, packing, decoding, URLs,
error translation. No server."""

from __future__ import annotations

import socket
from importlib import resources
import sys
from pathlib import Path

import pytest
import redis
import redis.exceptions as rex

from guardian import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    TokenBucketConfig,
)
from guardian.backends._redis_common import translate
from guardian.backends.redis_url import client_for_url
from guardian.backends._redis_scripts import Layout, Packer, read_source, scripts

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


@pytest.mark.parametrize(
    "capacity, rate, interval, P, D",
    [
        (100, 100, 1.0, 10_000, 1),           # T = 10 ms
        (3, 3, 7.0, 7_000_000, 3),            # T = 7/3 s
        (10**6, 10**6, 1.0, 1, 1),            # T = 1 us
        (5, 3, 1e-6, 1, 3),                   # T = 1/3 us
        (10**9, 16, 1.7e-8, 17, 16_000),      # T = 17/16 ns: the largest D
        (2, 1, 86_400, 86_400 * 10**6, 1),    # one per day
    ],
)
def test_layout_units(capacity: int, rate: float, interval: float, P: int, D: int) -> None:
    layout = Layout(TokenBucketConfig(capacity, rate, interval))
    assert (layout.P, layout.D, layout.tau) == (P, D, capacity * P)
    assert layout.ticks_per_second == D * 10**6
    assert layout.argv == (b"%d" % P, b"%d" % D, b"%d" % (capacity * P))


def test_nanosecond_layout_for_tests() -> None:
    layout = Layout(TokenBucketConfig(1, 3, 7.0), clock_unit_ns=1)
    assert (layout.P, layout.D, layout.ticks_per_second) == (7 * 10**9, 3, 3 * 10**9)


def test_decoding() -> None:
    layout = Layout(TokenBucketConfig(10, 5))  # T = 200_000 us
    reply = [800_000, -1_800_000, -2_000_000]  # allowed; denied at cost 2; denied (empty)
    first = layout.result(reply[0], 2)
    second = layout.result(reply[1], 2)
    assert (first.allowed, first.remaining, first.retry_after, first.reset_after, first.limit) == (
        True, 6, 0.0, 0.8, 10)
    assert (second.allowed, second.remaining, second.retry_after, second.reset_after) == (
        False, 1, 0.2, 1.8)
    assert layout.results([reply], 2, 3) == [first, second, layout.result(reply[2], 2)]
    assert layout.results([[-2_000_000]], 1, 1)[0].retry_after == pytest.approx(0.2)


@pytest.mark.parametrize("n", [1, 3, 300])
def test_bulk_packing_matches_the_generic_packer(n: int) -> None:
    packer = Packer("50%", Layout(TokenBucketConfig(10, 1)))
    keys = [f"k{i}%d}}{{ключ" for i in range(n)]
    bulks = packer.bulk_keys(keys)
    expected = packer.command("take", packer.keys(keys), b"2")
    assert packer.take_bulk(bulks, b"2") == packer.take_keys(keys, b"2") == expected
    long = ["é" * 2048, "x" * 4096, "k"]  # past hiredis' fast path, still valid
    assert packer.take_keys(long, b"1") == packer.command("take", packer.keys(long), b"1")


@pytest.mark.parametrize("bad", ["", "x" * 4097, "é" * 2049, "\ud800", b"k", None, 3])
def test_bulk_packing_checks_every_key(bad: object) -> None:
    packer = Packer("g", Layout(TokenBucketConfig(10, 1)))
    for pack in (packer.bulk_keys, lambda keys: packer.take_keys(keys, b"1")):
        with pytest.raises(ValueError if isinstance(bad, str) else TypeError):
            pack(["ok", bad])  # type: ignore[list-item]


@pytest.mark.parametrize("key", ["k", "a}b{", "100%", "%d%b", "ключ", "x" * 4096])
@pytest.mark.parametrize("prefix", ["guardian", "a:b", "50%"])
def test_the_hot_path_template_packs_what_the_generic_packer_does(key: str, prefix: str) -> None:
    packer = Packer(prefix, Layout(TokenBucketConfig(10, 1)))
    bkey = packer.key(key)
    assert bkey == f"{prefix}:c10:t1000000/1:{{{key}}}".encode()  # T = 1 s = 10^6 us
    assert Packer(prefix, packer.layout, limit_in_key=False).key(key) == f"{prefix}:{{{key}}}".encode()
    assert packer.take1(key) == packer.take(key, 1) == packer.command("take", [bkey], b"1")
    assert packer.take(key, 3) == packer.command("take", [bkey], b"3")
    expected = redis.Redis().connection_pool.make_connection().pack_command(
        "EVALSHA", scripts()["take"].sha, 1, bkey, *packer.layout.argv, 1)
    assert packer.take1(key) == b"".join(expected)


@pytest.mark.parametrize("prefix", ["", "a{b", "b}", None, 3])
def test_bad_prefix(prefix: object) -> None:
    with pytest.raises(ConfigurationError):
        Packer(prefix, Layout(TokenBucketConfig(10, 1)))  # type: ignore[arg-type]


def test_reserve_wants_a_positive_int_capped_at_capacity() -> None:
    packer = Packer("p", Layout(TokenBucketConfig(10, 1)))
    assert packer.wanted(3) == b"3" and packer.wanted(10**6) == b"10"
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError if isinstance(bad, int) and not isinstance(bad, bool) else TypeError):
            packer.wanted(bad)


def test_scripts_read_the_server_clock_and_carry_headers() -> None:
    for name, script in scripts().items():
        assert script.source == read_source(name)
        assert script.source.count("local t = redis.call('TIME')\n") == 1
        assert "ARGV[#ARGV]" not in script.source
        header = resources.files("guardian.lua").joinpath(f"{name}.lua").read_text().split("\n\n")[0]
        assert all(word in header for word in ("KEYS[", "ARGV[", "Reply:")), name


@pytest.mark.parametrize(
    "url, kind",
    [
        ("redis://127.0.0.1:1/0", "Connection"),
        ("rediss://127.0.0.1:1/0", "SSLConnection"),
        ("unix:///tmp/nothing.sock", "UnixDomainSocketConnection"),
        ("redis+sentinel://127.0.0.1:1,127.0.0.2:2/mymaster/2", "SentinelManagedConnection"),
    ],
)
def test_urls_pick_the_client_without_connecting(url: str, kind: str) -> None:
    client = client_for_url(redis, url, 0.1, 0.2)
    pool = client.connection_pool
    assert pool.connection_class.__name__ == kind
    assert pool.connection_kwargs["socket_timeout"] == 0.2
    assert pool.connection_kwargs["socket_connect_timeout"] == 0.1
    if "sentinel" in url:
        assert pool.connection_kwargs["db"] == 2
        assert [s.connection_pool.connection_kwargs["port"] for s in pool.sentinel_manager.sentinels] == [1, 2]
    client.close()


@pytest.mark.parametrize("url", ["http://x", "localhost:6379", "redis+sentinel://h:1/", 42])
def test_bad_urls(url: object) -> None:
    with pytest.raises(ConfigurationError):
        client_for_url(redis, url, 0.1, 0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), "1", True])
def test_bad_timeouts(timeout: object) -> None:
    with pytest.raises(ConfigurationError):
        client_for_url(redis, "redis://h", timeout, 0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "exc, expected",
    [
        (rex.TimeoutError("slow"), BackendTimeoutError),
        (socket.timeout("slow"), BackendTimeoutError),
        (rex.ConnectionError("refused"), BackendUnavailableError),
        (rex.BusyLoadingError("loading"), BackendUnavailableError),
        (rex.ClusterDownError("CLUSTERDOWN"), BackendUnavailableError),
        (ConnectionResetError(), BackendUnavailableError),
        (rex.ResponseError("WRONGTYPE Operation against a key"), BackendError),
        (rex.ResponseError("OOM command not allowed"), BackendError),
    ],
)
def test_translation(exc: BaseException, expected: type) -> None:
    got = translate(exc)
    assert type(got) is expected
    if "WRONGTYPE" in str(exc):
        assert "guardian did not write" in str(got)


def test_every_package_is_listed_for_the_wheel() -> None:
    root = Path(__file__).parent.parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    src = root / "src"
    found = {".".join(p.parent.relative_to(src).parts) for p in src.rglob("__init__.py")}
    assert found | {"guardian.lua"} == listed


@pytest.mark.parametrize("key", ["k", "k}1", "}k", "}", "a{b}c", "{x}", "ключ}", "x" * 4096, "{}", "a}}b"])
@pytest.mark.parametrize("prefix", ["guardian", "g:x"])
def test_the_slot_is_redis_pys(key: str, prefix: str) -> None:
    from redis.crc import key_slot

    packer = Packer(prefix, Layout(TokenBucketConfig(10, 1)))
    assert packer.slot(key) == key_slot(packer.key(key))


def test_two_limits_never_share_a_key_unless_told_to() -> None:
    a, b = Layout(TokenBucketConfig(5, 1)), Layout(TokenBucketConfig(100, 1))
    c = Layout(TokenBucketConfig(5, 2))  # same capacity, another rate
    keys = {Packer("g", layout).key("k") for layout in (a, b, c)}
    assert len(keys) == 3
    assert Packer("g", a, limit_in_key=False).key("k") == Packer("g", b, limit_in_key=False).key("k")
