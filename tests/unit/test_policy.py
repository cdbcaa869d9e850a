"""The policy file: envoyproxy/ratelimit's YAML plus guardian's named limits."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

pytest.importorskip("yaml")

from guardian import TokenBucketConfig  # noqa: E402
from guardian.server.policy import Match, PolicyError, load_policy, parse_policy  # noqa: E402

TREE = """
domain: d
descriptors:
  - key: a
    value: x
    descriptors:
      - key: b
        rate_limit: {unit: minute, requests_per_unit: 6, burst: 2}
  - key: a
    value: pre*
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: a
    rate_limit: {unit: hour, requests_per_unit: 7}
"""


def test_matching_order_and_levels() -> None:
    d = parse_policy(TREE).domains["d"]
    assert d.match([("a", "x")]) is None                       # placeholder level, no rule
    nested = d.match([("a", "x"), ("b", "anything")])
    assert nested is not None and nested.config == TokenBucketConfig(2, 6, 60)
    assert nested.path == "d.a_x.b"
    assert d.match([("a", "prefix-1")]).unit == "second"       # type: ignore[union-attr]
    assert d.match([("a", "other")]).unit == "hour"            # type: ignore[union-attr]
    assert d.match([("a", "other"), ("b", "y")]) is None       # deeper than the rule's level
    assert d.match([("z", "x")]) is None


def test_named_limits_both_spellings() -> None:
    p = parse_policy("limits:\n  a: {requests_per_unit: 5, unit: minute}\n"
                     "  b: {capacity: 3, refill_rate: 1, refill_interval: 2}\n")
    assert p.limits["a"].config == TokenBucketConfig(5, 5, 60)
    assert p.limits["b"].config == TokenBucketConfig(3, 1, 2)


def test_built_in_default() -> None:
    assert load_policy(None).limits["default"].config == TokenBucketConfig(100, 10, 1)


def test_directory_of_files(tmp_path: Path) -> None:
    (tmp_path / "1.yaml").write_text("domain: one\n")
    (tmp_path / "2.yml").write_text("limits: {x: {capacity: 1, refill_rate: 1}}\n")
    (tmp_path / "notes.txt").write_text("ignored")
    p = load_policy(str(tmp_path))
    assert set(p.domains) == {"one"} and set(p.limits) == {"x"} and p.digest


@pytest.mark.parametrize("text, message", [
    ("domain: d\ndescriptors: [{key: a, rate_limit: {unit: fortnight, requests_per_unit: 1}}]", "unit must be one of"),
    ("domain: d\ndescriptors: [{key: a, rate_limit: {unit: second}}]", "needs unit and requests_per_unit"),
    ("domain: d\ndescriptors: [{key: a, rate_limit: {unlimited: true, unit: second}}]", "unit when unlimited"),
    ("domain: d\ndescriptors: [{key: a, colour: red}]", "unknown key(s) colour"),
    ("domain: d\ndescriptors: [{key: a, value: v}, {key: a, value: v}]", "duplicate descriptor composite key 'd.a_v'"),
    ("domain: d\n---\ndomain: d\n", "duplicate domain 'd'"),
    ("descriptors: []", "descriptors without a domain"),
    ("domain: d\ndescriptors: [{value: v}]", "key must be a non-empty string"),
    ("domain: [", "not valid YAML"),
    ("limits: {a: {requests_per_unit: 0, unit: second}}", "requests_per_unit must be an integer >= 1"),
    ("limits: {a: {capacity: 0, refill_rate: 1}}", "capacity must be at least 1"),
])
def test_bad_files_say_where(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=None) as info:
        parse_policy(text, "f.yaml")
    assert message in str(info.value) and str(info.value).startswith("f.yaml")


# --- envoyproxy/ratelimit's own test configs (tests/fixtures/envoy_ratelimit) ------

PEER = Path(__file__).resolve().parent.parent / "fixtures" / "envoy_ratelimit"

#: file -> None (loads) or the words of ratelimit's refusal that guardian's message contains.
PEER_CONFIGS = {
    "basic_config.yaml": None,
    "merge_domain_key1.yaml": None,
    "merge_domain_key2.yaml": None,
    "metadata.yaml": None,
    "shadowmode_config.yaml": None,
    "share_threshold.yaml": None,
    "wildcard.yaml": None,
    "bad_limit_unit.yaml": "unit must be one of",
    "bad_yaml.yaml": "not valid YAML",
    "duplicate_domain.yaml": None,          # alone it loads; beside basic_config it is refused below
    "duplicate_key.yaml": "duplicate descriptor composite key 'test-domain.key1_value1'",
    "empty_domain.yaml": "config file cannot have empty domain",
    "empty_key.yaml": "key must be a non-empty string",
    "misspelled_key.yaml": "unknown key(s) ratelimit",
    "misspelled_key2.yaml": "unknown key(s) requestsperunit",
    "non_map_list.yaml": "expected a mapping, got str",
    "non_string_key.yaml": "unknown key(s) 0.25",
    "replaces_empty.yaml": "should not have an empty replaces entry",
    "replaces_self.yaml": "replaces should not contain name of same descriptor",
    "unlimited_with_unit.yaml": "should not specify rate limit unit when unlimited",
}


def test_every_peer_config_is_in_the_table() -> None:
    assert {p.name for p in PEER.glob("*.yaml")} == set(PEER_CONFIGS)


@pytest.mark.parametrize("name", sorted(PEER_CONFIGS))
def test_peer_config_loads_or_is_refused_as_the_peer_refuses_it(name: str) -> None:
    refusal = PEER_CONFIGS[name]
    if refusal is None:
        assert load_policy(str(PEER / name)).domains
    else:
        with pytest.raises(PolicyError) as info:
            load_policy(str(PEER / name))
        assert refusal in str(info.value) and name in str(info.value)


def test_peer_duplicate_domain_across_files(tmp_path: Path) -> None:
    for i, name in enumerate(("basic_config.yaml", "duplicate_domain.yaml")):
        (tmp_path / f"{i}.yaml").write_text((PEER / name).read_text())
    with pytest.raises(PolicyError, match="duplicate domain 'test-domain'"):
        load_policy(str(tmp_path))


def test_peer_domain_merge(tmp_path: Path) -> None:
    # TestDomainMerge / TestDuplicateKeyDomainMerge, with ratelimit's MERGE_DOMAIN_CONFIG = --merge-domains
    for name in ("merge_domain_key1.yaml", "merge_domain_key2.yaml"):
        (tmp_path / name).write_text((PEER / name).read_text())
    with pytest.raises(PolicyError, match="duplicate domain 'test-domain'"):
        load_policy(str(tmp_path))
    d = load_policy(str(tmp_path), merge_domains=True).domains["test-domain"]
    assert d.match([("key1", "value1")]).requests_per_unit == 10  # type: ignore[union-attr]
    assert d.match([("key2", "value2")]).requests_per_unit == 20  # type: ignore[union-attr]
    assert d.match([]) is None
    (tmp_path / "merge_domain_key2.yaml").write_text((PEER / "merge_domain_key1.yaml").read_text())
    with pytest.raises(PolicyError, match="duplicate descriptor composite key 'test-domain.key1_value1'") as info:
        load_policy(str(tmp_path), merge_domains=True)
    assert "merge_domain_key2.yaml" in str(info.value)


def _find(name: str, *entries: Tuple[str, str]) -> Optional[Match]:
    return load_policy(str(PEER / name)).domains["test-domain"].find(list(entries))


def test_peer_basic_config_matches() -> None:
    def rpu(*entries: Tuple[str, str]) -> Optional[Tuple[int, str]]:
        m = _find("basic_config.yaml", *entries)
        return None if m is None else (m.rule.requests_per_unit, m.rule.unit)

    assert rpu(("key1", "something")) is None
    assert rpu(("key1", "value1")) is None
    assert rpu(("key2", "value2"), ("subkey", "subvalue")) is None
    assert rpu(("key5", "value5"), ("subkey5", "subvalue")) is None
    assert rpu(("key1", "value1"), ("subkey1", "something")) == (5, "second")
    assert rpu(("key1", "value1"), ("subkey1", "subvalue1")) == (10, "second")
    assert rpu(("key2", "something")) == (20, "minute")
    assert rpu(("key2", "value2")) == (30, "minute")
    assert rpu(("key2", "value3")) is None
    assert rpu(("key3", "foo")) == (1, "hour")
    assert _find("basic_config.yaml", ("key4", "foo")).rule.name == "key4_rate_limit"  # type: ignore[union-attr]
    assert _find("basic_config.yaml", ("key6", "foo")).rule.unlimited  # type: ignore[union-attr]
    assert rpu(("key7", "unspecified_value")) == (70, "minute")


def test_peer_wildcards_in_the_middle_and_several() -> None:
    def metric(key: str, value: str) -> Optional[str]:
        m = _find("wildcard.yaml", (key, value))
        return None if m is None else m.metric

    assert metric("wild", "foo1") == metric("wild", "foo2") == "test-domain.wild_foo*"
    assert metric("wild", "bar") is None and metric("noWild", "foo1") is None
    assert metric("noVal", "foo1") == "test-domain.noVal"
    for v in ("barab", "bar123b", "barb"):
        assert metric("midWild", v) == "test-domain.midWild_bar*b"
    assert metric("midWild", "bara") is None and metric("midWild", "xbarb") is None
    for v in ("foo123bar456baz", "foobarbaz"):
        assert metric("multiWild", v) == "test-domain.multiWild_foo*bar*baz"
    assert metric("multiWild", "foo123baz") is None and metric("multiWild", "bar456baz") is None
    nested = _find("wildcard.yaml", ("nestedWild", "val1"), ("wild", "goo2"))
    assert nested is not None and nested.metric == "test-domain.nestedWild_val1.wild_goo*"
    # without share_threshold each value keeps its own bucket
    assert _find("wildcard.yaml", ("wild", "foo1")).values == ("foo1",)  # type: ignore[union-attr]


@pytest.mark.parametrize("entries, values, rpu", [
    ([("files", "files/a")], ("files/*",), 100),
    ([("nested", "parent"), ("files", "nested/x")], ("parent", "nested/*"), 200),
    ([("files", "top/1"), ("files", "nested/2")], ("top/*", "nested/*"), 300),
    ([("path", "path/a"), ("file", "file/b"), ("type", "t")], ("path/*", "file/b", "t"), 120),
    ([("file", "test1")], ("test1",), 50),        # an exact value wins over the wildcard
    ([("file", "test2")], ("test*",), 100),
    ([("midpath", "/api/x/v1")], ("/api*v1",), 100),
    ([("multiroute", "svcAepBrpc")], ("svc*ep*rpc",), 50),
    ([("tenant", "t1prod"), ("resource", "resXv2")], ("t*prod", "res*v2"), 60),
])
def test_peer_share_threshold_shares_one_bucket(entries: List[Tuple[str, str]], values: Tuple[str, ...],
                                               rpu: int) -> None:
    m = _find("share_threshold.yaml", *entries)
    assert m is not None and m.values == values and m.rule.requests_per_unit == rpu


def test_peer_value_to_metric_and_share_threshold_metric_names() -> None:
    m = _find("share_threshold.yaml", ("route", "api/v1"), ("method", "GET"))
    assert m is not None and m.metric == "test-domain.route_api/*.method"   # share_threshold keeps the pattern
    m = _find("share_threshold.yaml", ("service", "svc/a"), ("endpoint", "e1"))
    assert m is not None and m.metric == "test-domain.service_svc/*.endpoint_e1"  # detailed_metric
    p = parse_policy("domain: d\ndescriptors:\n  - key: route\n    value_to_metric: true\n"
                     "    descriptors: [{key: m, rate_limit: {unit: second, requests_per_unit: 1}}]\n")
    assert p.domains["d"].find([("route", "r1"), ("m", "x")]).metric == "d.route_r1.m"  # type: ignore[union-attr]


def test_peer_metadata_and_quota_mode_load() -> None:
    m = _find("metadata.yaml", ("key2", "x"))
    assert m is not None and m.rule.metadata == {"service_with_quota": {"name": "service_2"}}
    p = parse_policy("domain: d\ndescriptors: [{key: q, quota_mode: true, rate_limit: {unit: second, "
                     "requests_per_unit: 1}}]\n")
    assert p.domains["d"].match([("q", "1")]).quota_mode  # type: ignore[union-attr]


def test_share_threshold_needs_a_wildcard() -> None:
    with pytest.raises(PolicyError, match="share_threshold can only be used with wildcard values"):
        parse_policy("domain: d\ndescriptors: [{key: a, value: b, share_threshold: true}]\n")


# --- hostile policy files ----------------------------------------------------------

def _billion_laughs(levels: int) -> str:
    lines = ["domain: d", "x0: &a0 {key: k, value: v, rate_limit: {unit: second, requests_per_unit: 1}}"]
    for i in range(1, levels):
        lines.append(f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append(f"descriptors: *a{levels - 1}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, message", [
    (_billion_laughs(10), "YAML aliases (*name) are not allowed"),
    ("domain: d\ndescriptors: " + "[" * 600 + "]" * 600 + "\n", "nested deeper than 100 levels"),
    ("limits:\n  login: {capacity: 5, refill_rate: 1}\n  login: {capacity: 500, refill_rate: 100}\n",
     "duplicate key 'login' (first at line 2)"),
    ("domain: d\ndescriptors: [{key: a, rate_limit: {unit: second, requests_per_unit: 4294967296}}]",
     "requests_per_unit must be at most 4294967295"),
    ("domain: d\ndescriptors: [{key: a, rate_limit: {unit: second, requests_per_unit: 5, burst: 4294967296}}]",
     "burst must be at most 4294967295"),
    ("limits: {a: {requests_per_unit: 4294967296, unit: second}}", "must be at most 4294967295"),
])
@pytest.mark.parametrize("libyaml", [True, False], ids=["libyaml", "pure"])
def test_hostile_policy_refused_at_once(text: str, message: str, libyaml: bool,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import guardian.server.policy as policy_module

    if libyaml and not policy_module._FAST:
        pytest.skip("PyYAML without libyaml")
    monkeypatch.setattr(policy_module, "_FAST", libyaml)
    t0 = time.perf_counter()
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "f.yaml")
    assert message in str(info.value), str(info.value)
    assert time.perf_counter() - t0 < 5.0  # seconds, not the minutes (or the OOM) of an expansion


def test_distinct_configs_are_bounded() -> None:
    rules = ", ".join(f"{{key: k{i}, rate_limit: {{unit: second, requests_per_unit: {i + 1}}}}}" for i in range(1100))
    with pytest.raises(PolicyError, match="1100 distinct rates/bursts; at most 1024"):
        parse_policy(f"domain: d\ndescriptors: [{rules}]\n", "f.yaml")


def test_unlimited_may_carry_requests_per_unit_as_in_the_peer() -> None:
    p = parse_policy("domain: d\ndescriptors: [{key: a, rate_limit: {unlimited: true, requests_per_unit: 3}}]\n")
    assert p.domains["d"].match([("a", "x")]).unlimited  # type: ignore[union-attr]
