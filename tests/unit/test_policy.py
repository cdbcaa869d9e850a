"""The policy file: envoyproxy/ratelimit's YAML plus guardian's named limits."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("yaml")

from guardian import TokenBucketConfig  # noqa: E402
from guardian.server.policy import PolicyError, load_policy, parse_policy  # noqa: E402

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
    ("domain: d\ndescriptors: [{key: a, rate_limit: {unlimited: true, unit: second}}]", "unlimited"),
    ("domain: d\ndescriptors: [{key: a, colour: red}]", "unknown key(s) colour"),
    ("domain: d\ndescriptors: [{key: a, value: v}, {key: a, value: v}]", "duplicate descriptor a=v"),
    ("domain: d\n---\ndomain: d\n", "defined twice"),
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
