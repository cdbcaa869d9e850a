"""The native engine answers the issue-13 sidecar semantics itself, in C,
and as the grpcio engine does.

A policy with each feature (a wildcard inside a value, share_threshold, an
unlimited rule's ``replaces``, hits_addend 0 reading the bucket, RateLimit-*
headers from ``requests_per_unit`` and the over-limit descriptor, a rule's
quota_mode) is served by a grpcio and a native ``guardian serve`` side by
side, once per set of global flags (none, ``--shadow-mode``,
``--quota-mode``, ``--response-headers``). The same request sequence goes to
both; for every request:

(a) the native engine's answer equals the grpcio engine's
    (test_answers_as_the_grpcio_engine);
(b) the native engine answered it in C: its count of calls handed to the
    Python services (guardian_native_calls_total{answered_by="python"})
    did not grow, and its count of calls answered in C grew by one
    (test_answered_in_c).

(b) fails while the CHECKED_AGAINST guard of guardian.server.native hands
every CheckLimit, CheckLimits and ShouldRateLimit to Python (the Python
services changed after _dataplane/policy.c was written); it passes once C
implements these semantics and the guard is updated. A descriptor ``limit``
override, which C hands to Python by design, shows that the counter does
grow (test_a_limit_override_is_handed_to_python).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import json_format
from native_engine import answered_by, native_module
from rls import call_any
from sidecar import Sidecar, write

from guardian.v1 import guardian_pb2 as pb
from guardian.v1 import guardian_pb2_grpc as pb_grpc

native_module()

pytestmark = pytest.mark.grpc

POLICY = """
# Slow refills (a token a day or slower): the two engines see each request a
# millisecond apart, and a refill must not fall between them.
domain: web
descriptors:
  - key: path                 # a wildcard inside the value
    value: /a*b*c
    rate_limit: {unit: week, requests_per_unit: 3}
  - key: tenant               # every matching value shares one bucket
    value: acme-*
    share_threshold: true
    rate_limit: {unit: week, requests_per_unit: 4}
  - key: user
    rate_limit: {unit: week, requests_per_unit: 2, name: per_user}
    descriptors:
      - key: vip              # unlimited, and drops per_user from the request
        rate_limit: {unlimited: true, replaces: [{name: per_user}]}
  - key: quota                # over alone: the request is not (unless all its rules are)
    quota_mode: true
    rate_limit: {unit: week, requests_per_unit: 1}
  - key: plain
    rate_limit: {unit: week, requests_per_unit: 2}
  - key: burst                # RateLimit-Limit says 5 (requests_per_unit), not the burst
    rate_limit: {unit: week, requests_per_unit: 5, burst: 8}
---
limits:
  default: {capacity: 5, refill_rate: 1, refill_interval: 86400}
  small: {capacity: 2, refill_rate: 1, refill_interval: 86400}
"""

#: The global flags of each pair of servers.
FLAGS = {
    "default": [],
    "shadow-mode": ["--shadow-mode"],
    "quota-mode": ["--quota-mode"],
    "response-headers": ["--response-headers"],
}

Entries = List[Tuple[str, str]]


def rls(*descriptors: Any, hits: int = 0) -> rls_pb2.RateLimitRequest:
    """A ShouldRateLimit request of domain web; a descriptor is a list of
    (key, value) entries, or (entries, hits_addend)."""
    out = []
    for d in descriptors:
        entries, addend = d if isinstance(d, tuple) else (d, None)
        message: Dict[str, Any] = {"entries": [{"key": k, "value": v} for k, v in entries]}
        if addend is not None:
            message["hits_addend"] = {"value": addend}
        out.append(message)
    return rls_pb2.RateLimitRequest(domain="web", hits_addend=hits, descriptors=out)


def v1(limit: str, key: str, cost: int = 1) -> pb.CheckLimitRequest:
    return pb.CheckLimitRequest(limit=limit, key=key, cost=cost)


def v1_many(*checks: pb.CheckLimitRequest) -> pb.CheckLimitsRequest:
    return pb.CheckLimitsRequest(checks=list(checks))


A_B_C = [("path", "/aXbYc")]
#: (feature, request), sent in this order to both engines (the buckets carry over).
SEQUENCE: List[Tuple[str, Any]] = [
    *[("wildcard inside a value", rls(A_B_C)) for _ in range(4)],  # 3 allowed, then over
    ("wildcard inside a value", rls([("path", "/abc")])),
    ("wildcard inside a value", rls([("path", "/ab")])),  # matches no rule
    ("wildcard inside a value", rls([("path", "/aXbYcd")])),  # nor this one
    *[("share_threshold", rls([("tenant", f"acme-{i}")])) for i in range(5)],  # one bucket of 4
    ("share_threshold", rls([("tenant", "other")])),
    *[("unlimited replaces", rls([("user", "ann")], [("user", "ann"), ("vip", "y")])) for _ in range(3)],
    *[("named rule", rls([("user", "bob")])) for _ in range(3)],
    ("hits_addend 0", rls((A_B_C, 0))),  # reads the empty bucket, takes nothing
    ("hits_addend 0", rls(([("path", "/aQbQc")], 0))),  # a fresh bucket
    ("hits_addend 0", rls(([("tenant", "acme-9")], 0))),  # the shared bucket
    ("hits_addend 0", rls(([("burst", "x")], 1))),
    ("hits_addend 0", rls(([("burst", "x")], 0))),  # its countdown
    ("hits_addend 0", rls([("burst", "x")], hits=2)),  # the request's hits_addend
    *[("quota_mode rule", rls([("quota", "q")])) for _ in range(2)],
    ("quota_mode rule", rls([("quota", "q")], [("plain", "p")])),
    ("quota_mode rule", rls([("quota", "q")], [("quota", "r")])),
    ("quota_mode rule", rls([("quota", "q")], [("quota", "r")])),
    *[("over limit", rls([("plain", "h")])) for _ in range(3)],
    # first a status at 0 remaining (its last 3 tokens taken), then plain's over-limit one: the latter is chosen
    ("headers: the over-limit descriptor", rls(([("path", "/aZbZc")], 3), [("plain", "h")], [("burst", "h")])),
    ("headers: requests_per_unit", rls([("burst", "h2")])),
    ("v1 CheckLimit", v1("default", "k", 1)),
    ("v1 CheckLimit", v1("default", "k", 3)),
    ("v1 CheckLimit", v1("default", "k", 2)),  # over
    ("v1 CheckLimit", v1("", "k", 0)),  # "" is default, cost 0 is 1
    *[("v1 CheckLimit", v1("small", "z")) for _ in range(3)],
    ("v1 CheckLimits", v1_many(*[v1("default", f"m{i % 3}", 2) for i in range(8)], v1("small", "z"))),
]
OPERATION = {rls_pb2.RateLimitRequest: "should_rate_limit", pb.CheckLimitRequest: "check_limit",
             pb.CheckLimitsRequest: "check_limits"}


@dataclass
class Step:
    feature: str
    request: Any
    grpcio: Any
    native: Any
    #: growth of the native server's counts of this operation: handed to Python, answered in C
    handed: float = 0.0
    in_c: float = 0.0


@dataclass
class Run:
    flags: str
    steps: List[Step] = field(default_factory=list)
    guard_log: List[str] = field(default_factory=list)
    #: guardian_native_calls_total as the grpcio server's /metrics shows it (it has none)
    grpcio_counts: Dict[Tuple[str, str], float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write(tmp_path_factory.mktemp("answers") / "policy.yaml", POLICY)


@pytest.fixture(scope="module", params=list(FLAGS))
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, policy: str) -> Iterator[Run]:
    """SEQUENCE sent to a grpcio and a native server with the same flags,
    each answer and the native server's counts after each request."""
    flags = request.param
    tmp = tmp_path_factory.mktemp(flags)
    a = Sidecar(tmp, "--config", policy, *FLAGS[flags], "--engine", "grpcio").start()
    b = Sidecar(tmp, "--config", policy, *FLAGS[flags], "--engine", "native").start()
    out = Run(flags)
    try:
        with grpc.insecure_channel(a.target) as ca, grpc.insecure_channel(b.target) as cb:
            for feature, req in SEQUENCE:
                op = OPERATION[type(req)]
                before = answered_by(b)
                step = Step(feature, req, call_any(ca, req), call_any(cb, req))
                after = answered_by(b)
                step.handed = after.get((op, "python"), 0) - before.get((op, "python"), 0)
                step.in_c = after.get((op, "native"), 0) - before.get((op, "native"), 0)
                out.steps.append(step)
        out.guard_log = [line for line in b.log().splitlines() if "CHECKED_AGAINST" in line]
        out.grpcio_counts = answered_by(a)
        yield out
    finally:
        a.stop()
        b.stop()


def _rls_dict(response: Any) -> Tuple[Dict[str, Any], List[Optional[float]], Dict[str, str]]:
    """(the response without its time-dependent parts, each status's seconds
    until reset, the headers)."""
    out = json_format.MessageToDict(response)
    resets = [float(s.pop("durationUntilReset").rstrip("s")) if "durationUntilReset" in s else None
              for s in out.get("statuses", [])]
    headers = {h["key"]: h["value"] for h in out.pop("responseHeadersToAdd", [])}
    return out, resets, headers


def _same_rls(x: Any, y: Any, where: str) -> None:
    dx, rx, hx = _rls_dict(x)
    dy, ry, hy = _rls_dict(y)
    assert dx == dy, where
    for p, q in zip(rx, ry):  # the two servers read the clock a moment apart
        assert (p is None) == (q is None) and (p is None or abs(p - q) < 0.5), (where, rx, ry)
    assert hx.keys() == hy.keys(), (where, hx, hy)
    for k in hx:
        if k == "RateLimit-Reset":
            assert abs(int(hx[k]) - int(hy[k])) <= 1, (where, hx, hy)
        else:
            assert hx[k] == hy[k], (where, k, hx, hy)


def _same_v1(x: Any, y: Any, where: str) -> None:
    assert (x.allowed, x.remaining, x.limit) == (y.allowed, y.remaining, y.limit), where
    assert abs(x.reset_after - y.reset_after) < 0.5 and abs(x.retry_after - y.retry_after) < 0.5, where


def test_answers_as_the_grpcio_engine(run: Run) -> None:
    for i, step in enumerate(run.steps):
        where = f"--{run.flags}, request {i} ({step.feature}): {step.request}"
        if isinstance(step.grpcio, pb.CheckLimitsResponse):
            assert len(step.grpcio.results) == len(step.native.results), where
            for x, y in zip(step.grpcio.results, step.native.results):
                _same_v1(x, y, where)
        elif isinstance(step.grpcio, pb.CheckLimitResponse):
            _same_v1(step.grpcio, step.native, where)
        else:
            _same_rls(step.grpcio, step.native, where)


def test_the_sequence_exercises_each_feature(run: Run) -> None:
    """The answers the features are about did happen (on the grpcio engine)."""
    by = {}
    for step in run.steps:
        by.setdefault(step.feature, []).append(step.grpcio)
    codes = [r.overall_code for r in by["wildcard inside a value"]]
    assert codes[:4] == [rls_pb2.RateLimitResponse.OK] * 3 + [
        rls_pb2.RateLimitResponse.OK if run.flags == "shadow-mode" else rls_pb2.RateLimitResponse.OVER_LIMIT]
    assert [r.statuses[0].code for r in by["share_threshold"]][:5] == [1, 1, 1, 1, 2]  # OK x4, OVER_LIMIT
    replaced = by["unlimited replaces"][-1].statuses
    assert replaced[0].code == 1 and not replaced[0].HasField("current_limit")  # per_user dropped
    assert replaced[1].limit_remaining == 2**32 - 1
    zero = by["hits_addend 0"]
    assert [s.statuses[0].limit_remaining for s in zero[:5]] == [0, 3, 0, 7, 7]
    if run.flags == "response-headers":
        chosen = {h.key: h.value for h in by["headers: the over-limit descriptor"][0].response_headers_to_add}
        assert chosen["RateLimit-Limit"] == "2" and chosen["RateLimit-Remaining"] == "0"  # plain's, not /aZbZc's
        limit = {h.key: h.value for h in by["headers: requests_per_unit"][0].response_headers_to_add}
        assert limit["RateLimit-Limit"] == "5" and limit["RateLimit-Remaining"] == "7"
    quota = [r.overall_code for r in by["quota_mode rule"]]
    assert quota[-1] == rls_pb2.RateLimitResponse.OVER_LIMIT or run.flags == "shadow-mode"  # all its quota rules over


def test_answered_in_c(run: Run) -> None:
    assert run.grpcio_counts == {}  # only the native engine has the series
    missed: Dict[str, List[int]] = {}  # feature -> the indexes of its calls C did not answer
    for i, s in enumerate(run.steps):
        if s.handed or s.in_c != 1:
            missed.setdefault(s.feature, []).append(i)
    total = {f: sum(s.feature == f for s in run.steps) for f in missed}
    assert not missed, (
        f"--{run.flags}: {sum(map(len, missed.values()))} of {len(run.steps)} calls not answered in C "
        f"(handed to Python: {sum(s.handed for s in run.steps):.0f}, answered in C: "
        f"{sum(s.in_c for s in run.steps):.0f}); by feature, requests not answered in C: "
        + "; ".join(f"{f}: {len(v)} of {total[f]} {v}" for f, v in missed.items())
        + f". The native server logged: {run.guard_log}")


def test_a_limit_override_is_handed_to_python(tmp_path: Path, policy: str) -> None:
    """The positive control of test_answered_in_c: a descriptor ``limit``
    override is Python's by design, and the count of handed calls shows it;
    a health Check is C's, and the count of calls answered in C shows it."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    s = Sidecar(tmp_path, "--config", policy, "--engine", "native").start()
    try:
        override = rls([("plain", "o")])
        override.descriptors[0].limit.requests_per_unit = 7
        override.descriptors[0].limit.unit = rls_pb2.RateLimitResponse.RateLimit.DAY
        with grpc.insecure_channel(s.target) as ch:
            before = answered_by(s)
            r = rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(override, timeout=5)
            middle = answered_by(s)
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            after = answered_by(s)
        assert r.statuses[0].current_limit.requests_per_unit == 7 and r.statuses[0].limit_remaining == 6
        grew = {k: middle.get(k, 0) - before.get(k, 0) for k in middle.keys() | before.keys()}
        assert grew[("should_rate_limit", "python")] == 1 and grew[("should_rate_limit", "native")] == 0
        assert after[("health_check", "native")] - middle[("health_check", "native")] == 1
        assert after.get(("health_check", "python"), 0) == middle.get(("health_check", "python"), 0)
        # other methods are Python's, and one series however many paths clients make up
        with grpc.insecure_channel(s.target) as ch:
            pb_grpc.RateLimiterStub(ch).GetUsage(pb.GetUsageRequest(key="o"), timeout=5)
            for i in range(3):
                with pytest.raises(grpc.RpcError):
                    ch.unary_unary(f"/made.up.Service{i}/Method")(b"", timeout=5)
        last = answered_by(s)
        assert last[("other", "python")] - after.get(("other", "python"), 0) == 4
        assert {op for op, _ in last} == {"check_limit", "check_limits", "should_rate_limit", "health_check", "other"}
    finally:
        s.stop()
