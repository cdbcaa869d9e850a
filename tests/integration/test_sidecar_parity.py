"""envoyproxy/ratelimit parity beyond the README examples: behaviours its
service tests (test/service/ratelimit_test.go) and server (health, /json)
pin down, against a real `guardian serve`. The table in docs/sidecar.md
maps each peer test to the test here."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2
from rls import OK, OVER, Entries, codes, descriptor, rls_caller
from sidecar import Sidecar, counter, write

pytestmark = pytest.mark.grpc

POLICY = """
domain: quota
descriptors:
  - key: q1
    quota_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: q2
    quota_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: plain
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: big
    rate_limit: {unit: hour, requests_per_unit: 100}
---
domain: replace
descriptors:
  - key: a
    rate_limit: {name: strict, unit: hour, requests_per_unit: 1}
  - key: vip
    rate_limit:
      unlimited: true
      replaces: [{name: strict}]
---
domain: shared
descriptors:
  - key: path
    value: /api/*/v1
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 2}
  - key: each
    value: x*y*z
    rate_limit: {unit: hour, requests_per_unit: 2}
  - key: anything
    value: "*"
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: route
    value_to_metric: true
    rate_limit: {unit: hour, requests_per_unit: 50}
---
domain: meta
descriptors:
  - key: svc
    rate_limit: {unit: hour, requests_per_unit: 1}
    metadata: {name: service_1, nested: {a: 1}}
  - key: other
    rate_limit: {unit: hour, requests_per_unit: 5}
    metadata: {name: service_2, nested: {b: 2}}
---
domain: reset
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 60}
  - key: h
    rate_limit: {unit: hour, requests_per_unit: 60}
"""



@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    tmp = tmp_path_factory.mktemp("parity")
    s = Sidecar(tmp, "--config", write(tmp / "ratelimit.yaml", POLICY), "--response-headers",
                "--response-dynamic-metadata").start()
    yield s
    s.kill()


@pytest.fixture
def ask(server: Sidecar) -> Iterator[Any]:
    with rls_caller(server.target) as call:
        yield call



def test_quota_mode_alone_over_is_over_some_over_is_ok(ask: Any) -> None:
    # TestServiceQuotaModeOnlySomeOverTheLimit / ...AllOverTheLimit / TestServicePerDescriptorQuotaMode
    assert ask("quota", [("q1", "a")]).overall_code == OK
    r = ask("quota", [("q1", "a")], [("q2", "a")])          # q1 over, q2 not
    assert codes(r) == [OVER, OK] and r.overall_code == OK
    r = ask("quota", [("q1", "a")], [("q2", "a")])          # both over
    assert codes(r) == [OVER, OVER] and r.overall_code == OVER
    # TestServiceMixedPerDescriptorModes: a plain rule over the limit decides
    ask("quota", [("plain", "a")])
    r = ask("quota", [("q1", "b")], [("plain", "a")])
    assert codes(r) == [OK, OVER] and r.overall_code == OVER
    # every quota descriptor over (one here) is OVER_LIMIT even beside a plain rule under its limit
    r = ask("quota", [("q1", "a")], [("big", "a")])
    assert codes(r) == [OVER, OK] and r.overall_code == OVER


def test_unlimited_rule_replaces_still_drop_the_named_rule(ask: Any) -> None:
    # constructLimitsToCheck: replaces are collected before an unlimited limit is dropped
    assert ask("replace", [("a", "1")]).overall_code == OK
    assert ask("replace", [("a", "1")]).overall_code == OVER
    r = ask("replace", [("a", "1")], [("vip", "yes")])
    assert r.overall_code == OK and codes(r) == [OK, OK]
    assert not r.statuses[0].HasField("current_limit") and r.statuses[1].limit_remaining == 2**32 - 1


def test_share_threshold_one_bucket_for_every_match(ask: Any, server: Sidecar) -> None:
    r = [ask("shared", [("path", p)]) for p in ("/api/a/v1", "/api/b/v1", "/api/c/v1")]
    assert [x.overall_code for x in r] == [OK, OK, OVER]     # 2/hour across all three values
    # without share_threshold a wildcard match keeps a bucket per value (x*y*z: several *)
    r = [ask("shared", [("each", v)]) for v in ("x1y1z", "x2y2z", "x3y3z")]
    assert [x.overall_code for x in r] == [OK, OK, OK]
    assert not ask("shared", [("each", "x-z")]).statuses[0].HasField("current_limit")  # no "y": no rule
    ask("shared", [("route", "checkout")])
    m = server.metrics()
    assert counter(m, "guardian_requests_total", limit="shared.path_/api/*/v1", result="allowed") == 2
    assert counter(m, "guardian_requests_total", limit="shared.each_x*y*z", result="allowed") == 3
    assert counter(m, "guardian_requests_total", limit="shared.route_checkout", result="allowed") == 1


def test_a_lone_star_matches_an_entry_without_a_value(ask: Any) -> None:
    # ratelimit's prefix "" matches "": the empty value has a bucket of its own (on --engine native,
    # policy.c's glob_match gets the absent value as NULL: fuzz/corpus/server/rls_empty_value)
    r = ask("shared", [("anything", "")])
    assert r.overall_code == OK and r.statuses[0].current_limit.requests_per_unit == 1
    assert ask("shared", [("anything", "")]).overall_code == OVER
    assert ask("shared", [("anything", "x")]).overall_code == OK


def test_dynamic_metadata_of_passed_descriptors(ask: Any) -> None:
    # TestMetadataReturnedForPassedDescriptors / ...AllPassed / TestOverlappingMetadataReturnsTheFirstValue
    r = ask("meta", [("svc", "1")], [("other", "1")])
    meta = MessageToDict(r.dynamic_metadata)
    assert meta["domain"] == "meta"
    assert meta["descriptors"] == [{"entries": ["svc=1"]}, {"entries": ["other=1"]}]
    assert meta["metadata"] == {"name": "service_1", "nested": {"a": 1, "b": 2}}
    r = ask("meta", [("svc", "1")], [("other", "1")])        # svc is over now: only other's metadata
    assert MessageToDict(r.dynamic_metadata)["metadata"] == {"name": "service_2", "nested": {"b": 2}}


def test_headers_pick_the_over_limit_descriptor(ask: Any) -> None:
    # TestServiceWithDefaultRatelimitHeaders: RateLimit-Limit is requests_per_unit alone
    ask("quota", [("plain", "h")])
    r = ask("quota", [("big", "h")], [("plain", "h")])
    headers = {h.key: h.value for h in r.response_headers_to_add}
    assert headers["RateLimit-Limit"] == "1" and headers["RateLimit-Remaining"] == "0"


def test_grpc_health_answers_the_peers_name(server: Sidecar) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    assert server.health("ratelimit") == serving
    assert server.health("") == serving
    assert server.health("envoy.service.ratelimit.v3.RateLimitService") == serving


def _post(server: Sidecar, path: str, body: bytes) -> Tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_http_healthcheck_and_json(server: Sidecar) -> None:
    assert server.http("/healthcheck") == (200, "OK")
    body = json.dumps({"domain": "replace", "descriptors": [{"entries": [{"key": "a", "value": "json"}]}]})
    status, text = _post(server, "/json", body.encode())
    assert status == 200 and json.loads(text)["overallCode"] == "OK"
    status, text = _post(server, "/json", body.encode())
    assert status == 429 and json.loads(text)["overallCode"] == "OVER_LIMIT"
    assert _post(server, "/json", b"{not json")[0] == 400
    assert _post(server, "/json", b'{"domain": "", "descriptors": []}') == (400, "rate limit domain must not be empty\n")
    assert _post(server, "/json", b"x" * (65 << 10))[0] == 413


def test_override_out_of_range_is_invalid_argument(ask: Any) -> None:
    second = rls_pb2.RateLimitResponse.RateLimit.SECOND
    with pytest.raises(grpc.RpcError) as info:
        ask("reset", descriptor([("k", "o")], limit=(4_000_000_000, second)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "descriptors[0].limit" in info.value.details() and "nanosecond" in info.value.details()


def test_huge_hits_addend_is_over_the_limit_not_an_error(ask: Any) -> None:
    r = ask("reset", descriptor([("k", "huge")], hits=2**64 - 1))
    assert r.overall_code == OVER and r.statuses[0].limit_remaining == 60


def test_zero_hit_check_counts_down_with_time(ask: Any) -> None:
    # hits_addend 0 reads the bucket (the cores' peek): its duration_until_reset moves with time
    from sidecar import wait_until

    ask("reset", descriptor([("h", "zero")], hits=3))     # 60/hour: 3 minutes until full again

    def read() -> Tuple[int, float]:
        s = ask("reset", descriptor([("h", "zero")], hits=0)).statuses[0]
        return s.limit_remaining, s.duration_until_reset.ToNanoseconds() / 1e9

    remaining, first = read()
    assert remaining == 57 and 120.0 < first < 180.0  # not whole tokens x interval: the time since the take counts
    later: List[float] = []
    wait_until(lambda: later.append(read()[1]) or later[-1] < first, 5, "the reset to move", step=0.02)
    assert read()[0] >= 57  # reading took nothing


@pytest.mark.parametrize("flag", ["--shadow-mode", "--quota-mode"])
def test_global_shadow_and_quota_modes(tmp_path: Path, flag: str) -> None:
    # TestServiceGlobalShadowMode (SHADOW_MODE) / TestServiceGlobalQuotaMode (QUOTA_MODE)
    s = Sidecar(tmp_path, "--config", write(tmp_path / "p.yaml", POLICY), flag).start()
    try:
        with grpc.insecure_channel(s.target) as ch:
            stub = rls_pb2_grpc.RateLimitServiceStub(ch)

            def ask(*ds: Entries) -> Any:
                return stub.ShouldRateLimit(rls_pb2.RateLimitRequest(
                    domain="quota", descriptors=[descriptor(d) for d in ds]), timeout=5)

            ask([("plain", "g")])
            r = ask([("plain", "g")], [("big", "g")])  # plain over, big under
            assert codes(r) == [OVER, OK]
            assert r.overall_code == OK  # shadow: OK overall; quota: not every rule is over
            if flag == "--quota-mode":
                assert ask([("plain", "g")]).overall_code == OVER  # its only rule is over
            else:
                assert counter(s.metrics(), "guardian_requests_total", limit="global_shadow_mode",
                               result="shadow_denied") == 1
    finally:
        assert s.stop()[0] == 0


PEER_INTEGRATION = Path(__file__).resolve().parent.parent / "fixtures" / "envoy_ratelimit" / "integration"


def test_peer_integration_configs_and_basic_sequence(tmp_path: Path) -> None:
    # envoyproxy/ratelimit test/integration: its runtime configs served as one directory, and
    # testBasicBaseConfig's requests (its fixed windows aside: no request here crosses a refill)
    s = Sidecar(tmp_path, "--config", str(PEER_INTEGRATION)).start()
    try:
        assert "4 Envoy domain(s) [another, basic, reload, share-threshold-test]" in s.log()
        with grpc.insecure_channel(s.target) as ch:
            stub = rls_pb2_grpc.RateLimitServiceStub(ch)

            def ask(domain: str, *ds: Entries) -> Any:
                return stub.ShouldRateLimit(rls_pb2.RateLimitRequest(
                    domain=domain, descriptors=[descriptor(d) for d in ds]), timeout=5)

            r = ask("foo", [("hello", "world")])
            assert r.overall_code == OK and not r.statuses[0].HasField("current_limit")
            st = ask("basic", [("key1", "foo")]).statuses[0]
            assert (st.code, st.current_limit.requests_per_unit, st.limit_remaining) == (OK, 50, 49)
            assert st.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.SECOND
            for i in range(25):  # key2: 20 per minute
                st = ask("another", [("key2", "v-a")]).statuses[0]
                assert (st.code, st.limit_remaining) == ((OK, 19 - i) if i < 20 else (OVER, 0)), i
            for i in range(15):  # key2 (a fresh value) and key3: 10 per hour
                r = ask("another", [("key2", "v-b")], [("key3", "v-c")])
                assert (r.statuses[0].code, r.statuses[0].limit_remaining) == (OK, 19 - i)
                assert (r.statuses[1].code, r.statuses[1].limit_remaining) == ((OK, 9 - i) if i < 10 else (OVER, 0))
                assert r.overall_code == (OK if i < 10 else OVER)
            # the integration share_threshold config: files/* share one bucket, files_no_share/* do not
            shared = [ask("share-threshold-test", [("files", f"files/{i}")]).overall_code for i in range(11)]
            assert shared == [OK] * 10 + [OVER]
            own = [ask("share-threshold-test", [("files_no_share", f"files_no_share/{i}")]).overall_code
                   for i in range(11)]
            assert own == [OK] * 11
    finally:
        assert s.stop()[0] == 0
