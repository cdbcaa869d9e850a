"""Envoy's RateLimitService v3 against the examples of envoyproxy/ratelimit's
README, spoken to with Envoy's own stubs from xds-protos."""

from __future__ import annotations

from typing import Any, Iterator, List

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from rls import OK, OVER, Entries, codes, descriptor, rls_caller
from sidecar import Sidecar, write

pytestmark = pytest.mark.grpc

# The README's examples 1-9, verbatim apart from example 1's 500/s (2 here,
# so a test can reach it), example 3's generic 10/s (3/minute here) and
# example 6's units (minute, not second: on a loaded machine 12 calls can
# take more than the 0.1 s that refills a token at 10/s).
POLICY = """
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit:
      unit: second
      requests_per_unit: 2
  - key: database
    value: default
    rate_limit:
      unit: second
      requests_per_unit: 2
---
domain: messaging
descriptors:
  # Only allow 5 marketing messages a day
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit:
          unit: day
          requests_per_unit: 5
  # Only allow 100 messages a day to any unique phone number
  - key: to_number
    rate_limit:
      unit: day
      requests_per_unit: 100
---
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit:
      unit: minute
      requests_per_unit: 3
  # Black list IP
  - key: remote_address
    value: 50.0.0.5
    rate_limit:
      unit: second
      requests_per_unit: 0
---
domain: example4
descriptors:
  - key: key
    value: value
    rate_limit:
      requests_per_unit: 300
      unit: second
---
domain: internal
descriptors:
  - key: ldap
    rate_limit:
      unlimited: true
  - key: azure
    rate_limit:
      unit: minute
      requests_per_unit: 100
---
domain: example6
descriptors:
  - key: service
    descriptors:
      - key: user
        value: user-a
        rate_limit:
          requests_per_unit: 10
          unit: minute
        shadow_mode: true
      - key: user
        value: user-b
        rate_limit:
          requests_per_unit: 20
          unit: minute
---
domain: example7
descriptors:
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          name: specific_limit
          requests_per_unit: 5
          unit: second
  - key: key_2
    value: value_2
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          replaces:
            - name: specific_limit
          requests_per_unit: 10
          unit: second
---
domain: example8
descriptors:
  - key: key1
    detailed_metric: true
    rate_limit:
      unit: minute
      requests_per_unit: 10
  - key: key1
    value: value1
    rate_limit:
      unit: minute
      requests_per_unit: 20
---
domain: example9
descriptors:
  - key: key1
    value: value*
    rate_limit:
      unit: minute
      requests_per_unit: 20
---
domain: guardian_burst
descriptors:
  - key: api
    rate_limit: {unit: hour, requests_per_unit: 1, burst: 3}
"""



@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    tmp = tmp_path_factory.mktemp("rls")
    s = Sidecar(tmp, "--config", write(tmp / "ratelimit.yaml", POLICY), "--response-headers").start()
    yield s
    s.kill()


@pytest.fixture
def ask(server: Sidecar) -> Iterator[Any]:
    with rls_caller(server.target) as call:
        yield call



def test_example1_exact_values(ask: Any) -> None:
    r = [ask("mongo_cps", [("database", "users")]) for _ in range(3)]
    assert [x.overall_code for x in r] == [OK, OK, OVER]
    assert r[0].statuses[0].current_limit.requests_per_unit == 2
    assert r[0].statuses[0].current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.SECOND
    assert [x.statuses[0].limit_remaining for x in r] == [1, 0, 0]
    assert ask("mongo_cps", [("database", "default")]).overall_code == OK  # its own bucket
    # a value with no rule is not limited
    unmatched = ask("mongo_cps", [("database", "other")])
    assert unmatched.overall_code == OK and not unmatched.statuses[0].HasField("current_limit")


def test_example2_nested_and_any_value(ask: Any) -> None:
    both = ([("message_type", "marketing"), ("to_number", "2061111111")], [("to_number", "2061111111")])
    results = [ask("messaging", *both) for _ in range(6)]
    assert [x.overall_code for x in results] == [OK] * 5 + [OVER]  # the 5 a day marketing rule
    last = results[-1]
    assert codes(last) == [OVER, OK]  # statuses line up with descriptors
    assert last.statuses[1].limit_remaining == 94  # every request also counted against the 100
    assert last.statuses[0].current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.DAY
    assert 86000 < last.statuses[0].duration_until_reset.seconds <= 86400
    # another number has its own buckets
    assert ask("messaging", [("message_type", "marketing"), ("to_number", "2062222222")]).overall_code == OK


def test_example3_most_specific_match_and_block(ask: Any) -> None:
    assert [ask("edge_proxy_per_ip", [("remote_address", "50.0.0.1")]).overall_code for _ in range(4)] == \
        [OK, OK, OK, OVER]
    assert ask("edge_proxy_per_ip", [("remote_address", "50.0.0.2")]).overall_code == OK
    blocked = ask("edge_proxy_per_ip", [("remote_address", "50.0.0.5")])
    assert blocked.overall_code == OVER and blocked.statuses[0].current_limit.requests_per_unit == 0


def test_example4_levels_must_match(ask: Any) -> None:
    r = ask("example4", [("key", "value"), ("subkey", "subvalue")])
    assert r.overall_code == OK and not r.statuses[0].HasField("current_limit")
    assert ask("example4", [("key", "value")]).statuses[0].current_limit.requests_per_unit == 300


def test_example5_unlimited(ask: Any) -> None:
    r = ask("internal", [("ldap", "x")], [("azure", "y")])
    assert codes(r) == [OK, OK]
    assert r.statuses[0].limit_remaining == 2**32 - 1
    assert r.statuses[1].limit_remaining == 99


def test_example6_shadow_mode(ask: Any) -> None:
    a = [ask("example6", [("service", "auth-service"), ("user", "user-a")]) for _ in range(12)]
    assert all(x.overall_code == OK for x in a)  # over 10/minute, but in shadow mode
    assert a[-1].statuses[0].limit_remaining == 0
    b = [ask("example6", [("service", "auth-service"), ("user", "user-b")]) for _ in range(21)]
    assert [x.overall_code for x in b] == [OK] * 20 + [OVER]


def test_example7_replaces(ask: Any) -> None:
    first = [("key_1", "value_1"), ("user", "bkthomps")]
    second = [("key_2", "value_2"), ("user", "bkthomps")]
    # both match: only the replacing 10/s limit applies, the 5/s one is untouched
    for _ in range(7):
        r = ask("example7", first, second)
        assert codes(r) == [OK, OK]
        assert not r.statuses[0].HasField("current_limit")
        assert r.statuses[1].current_limit.requests_per_unit == 10
    alone = ask("example7", first)
    assert alone.statuses[0].current_limit.name == "specific_limit"
    assert alone.statuses[0].limit_remaining == 4  # its bucket was not touched above


def test_example9_wildcard_each_value_its_own_bucket(ask: Any) -> None:
    r1 = ask("example9", [("key1", "value_1")])
    r2 = ask("example9", [("key1", "value_2")])
    assert r1.statuses[0].current_limit.requests_per_unit == 20
    assert r1.statuses[0].limit_remaining == r2.statuses[0].limit_remaining == 19
    assert not ask("example9", [("key1", "other")]).statuses[0].HasField("current_limit")


def test_hits_addend(ask: Any) -> None:
    api = [("api", "h1")]
    assert ask("guardian_burst", api, hits=2).statuses[0].limit_remaining == 1  # burst 3, request-level 2
    # a descriptor's own hits_addend wins over the request's; 0 only reads
    r = ask("guardian_burst", descriptor(api, hits=0), hits=3)
    assert r.overall_code == OK and r.statuses[0].limit_remaining == 1
    r = ask("guardian_burst", descriptor(api, hits=1), hits=3)
    assert r.overall_code == OK and r.statuses[0].limit_remaining == 0
    assert ask("guardian_burst", api).overall_code == OVER  # unset counts as 1
    assert ask("guardian_burst", [("api", "h2")], hits=4).overall_code == OVER  # above the burst


def test_descriptor_limit_override(ask: Any) -> None:
    minute = rls_pb2.RateLimitResponse.RateLimit.MINUTE
    d = descriptor([("database", "users-override")], limit=(2, minute))
    r = [ask("mongo_cps", d) for _ in range(3)]
    assert [x.overall_code for x in r] == [OK, OK, OVER]
    assert r[0].statuses[0].current_limit.requests_per_unit == 2
    assert r[0].statuses[0].current_limit.unit == minute


def test_response_headers(ask: Any) -> None:
    r = ask("internal", [("azure", "headers")])
    headers = {h.key: h.value for h in r.response_headers_to_add}
    assert headers == {"RateLimit-Limit": "100", "RateLimit-Remaining": "99", "RateLimit-Reset": "1"}  # ratelimit's format


def test_unknown_domain_is_not_limited(ask: Any) -> None:
    r = ask("no-such-domain", [("a", "b")], [("c", "d")])
    assert r.overall_code == OK and codes(r) == [OK, OK]


@pytest.mark.parametrize("domain, descriptors, message", [
    ("", [[("a", "b")]], "domain must not be empty"),
    ("messaging", [], "descriptor list must not be empty"),
    ("messaging", [[]], "descriptors[0] has no entries"),
    ("messaging", [[("to_number", "1")], [("", "x")]], "descriptors[1].entries[0]: key must not be empty"),
])
def test_invalid_requests(ask: Any, domain: str, descriptors: List[Entries], message: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        ask(domain, *descriptors)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
