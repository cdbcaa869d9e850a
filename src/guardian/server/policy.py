"""The policy file: envoyproxy/ratelimit's YAML format, plus guardian's
named limits.

A file holds one or more YAML documents. A document with ``domain`` is an
envoyproxy/ratelimit configuration, accepted as is::

    domain: messaging
    descriptors:
      - key: message_type
        value: marketing
        descriptors:
          - key: to_number
            rate_limit: {unit: day, requests_per_unit: 5}
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 100, burst: 20}   # burst: guardian's

A document with ``limits`` names the limits of guardian.v1's CheckLimit::

    limits:
      default: {requests_per_unit: 10, unit: second, burst: 100}
      login:   {capacity: 5, refill_rate: 1, refill_interval: 60}

A rule of ``requests_per_unit`` per ``unit`` is the token bucket
TokenBucketConfig(burst or requests_per_unit, requests_per_unit, unit): the
same long-run rate as ratelimit's fixed windows, without their double burst
at a window edge. ``--config`` may also name a directory: every ``*.yaml``
and ``*.yml`` in it, in name order. Errors name the file and the place.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import yaml

from .._config import TokenBucketConfig
from .._errors import ConfigurationError

__all__ = ["PolicyError", "Rule", "Node", "Domain", "Policy", "load_policy", "parse_policy",
           "UNIT_SECONDS", "DEFAULT_LIMIT", "override_rule"]

#: ratelimit's units in seconds (month = 30 days, year = 365 days, as ratelimit counts them).
UNIT_SECONDS: Dict[str, int] = {
    "second": 1, "minute": 60, "hour": 3600, "day": 86400,
    "week": 604800, "month": 2592000, "year": 31536000,
}

#: The limit guardian.v1 uses when no policy file is given.
DEFAULT_LIMIT = {"requests_per_unit": 10, "unit": "second", "burst": 100}

_DESCRIPTOR_KEYS = {"key", "value", "rate_limit", "descriptors", "shadow_mode", "detailed_metric"}
_RATE_LIMIT_KEYS = {"unit", "requests_per_unit", "unlimited", "name", "replaces", "burst"}
_LIMIT_KEYS = {"unit", "requests_per_unit", "burst", "capacity", "refill_rate", "refill_interval"}


class PolicyError(ConfigurationError):
    """A policy file that cannot be used; the message says where."""


@dataclass(frozen=True)
class Rule:
    """One rate limit: a bucket config, or unlimited, or a block (0 per unit)."""

    #: Where it came from, for metrics and logs: "domain.key_value.key" or the limit's name.
    path: str
    name: str = ""
    unit: str = "second"
    requests_per_unit: int = 0
    burst: Optional[int] = None
    unlimited: bool = False
    replaces: Tuple[str, ...] = ()
    shadow_mode: bool = False
    detailed_metric: bool = False
    #: None when unlimited or when requests_per_unit is 0 (every request is over the limit).
    config: Optional[TokenBucketConfig] = field(default=None, compare=False)

    @property
    def window(self) -> int:
        return UNIT_SECONDS[self.unit]


@dataclass
class Node:
    """A level of a domain's descriptor tree."""

    exact: Dict[Tuple[str, str], "Node"] = field(default_factory=dict)
    #: (key, value prefix, node) for values ending in "*", in file order.
    wildcards: List[Tuple[str, str, "Node"]] = field(default_factory=list)
    #: Entries with a key and no value: any value, each value its own bucket.
    any_value: Dict[str, "Node"] = field(default_factory=dict)
    rule: Optional[Rule] = None
    #: "domain.key_value" for metrics.
    path: str = ""
    detailed: bool = False

    @property
    def has_children(self) -> bool:
        return bool(self.exact or self.wildcards or self.any_value)

    def child(self, key: str, value: str) -> Optional["Node"]:
        """ratelimit's order: key and value, then a wildcard value, then the key alone."""
        node = self.exact.get((key, value))
        if node is None and self.wildcards:
            for k, prefix, candidate in self.wildcards:
                if k == key and value.startswith(prefix):
                    return candidate
        if node is None:
            node = self.any_value.get(key)
        return node


@dataclass
class Domain:
    name: str
    root: Node

    def match(self, entries: Sequence[Tuple[str, str]]) -> Optional[Rule]:
        """The rule for a request descriptor, as ratelimit finds it: every entry
        must match one level, and the rule is the one at the last entry's level."""
        node = self.root
        last = len(entries) - 1
        for i, (key, value) in enumerate(entries):
            nxt = node.child(key, value)
            if nxt is None:
                return None
            if i == last:
                return nxt.rule
            if not nxt.has_children:
                return None
            node = nxt
        return None


@dataclass
class Policy:
    domains: Dict[str, Domain] = field(default_factory=dict)
    limits: Dict[str, Rule] = field(default_factory=dict)
    source: str = "<built-in>"
    #: sha256 of the files read, to log which policy is in force.
    digest: str = ""

    def summary(self) -> str:
        rules = sum(_count_rules(d.root) for d in self.domains.values())
        return (f"{len(self.domains)} domain(s), {rules} descriptor rule(s), "
                f"{len(self.limits)} named limit(s) from {self.source}"
                + (f" (sha256 {self.digest[:12]})" if self.digest else ""))


def _count_rules(node: Node) -> int:
    children = list(node.exact.values()) + [n for _, _, n in node.wildcards] + list(node.any_value.values())
    return (node.rule is not None) + sum(_count_rules(c) for c in children)


# --- parsing -------------------------------------------------------------------


def _fail(where: str, msg: str) -> PolicyError:
    return PolicyError(f"{where}: {msg}")


def _mapping(obj: Any, where: str, allowed: Optional[Set[str]] = None) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise _fail(where, f"expected a mapping, got {type(obj).__name__}")
    if allowed is not None:
        unknown = sorted(str(k) for k in obj if k not in allowed)
        if unknown:
            raise _fail(where, f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    return obj


def _int(value: Any, where: str, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(where, f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _bool(value: Any, where: str, what: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"{what} must be true or false, got {value!r}")
    return value


def _str(value: Any, where: str, what: str, empty: bool = False) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # `value: 500` in YAML is meant as the string "500"
    if not isinstance(value, str) or (not value and not empty):
        raise _fail(where, f"{what} must be a non-empty string, got {value!r}")
    return value


def _bucket(rpu: int, unit: str, burst: Optional[int], where: str) -> Optional[TokenBucketConfig]:
    if rpu == 0:
        return None
    try:
        return TokenBucketConfig(burst if burst is not None else rpu, rpu, UNIT_SECONDS[unit])
    except ConfigurationError as exc:
        raise _fail(where, str(exc)) from exc


def _unit(value: Any, where: str) -> str:
    unit = _str(value, where, "unit").lower()
    if unit not in UNIT_SECONDS:
        raise _fail(where, f"unit must be one of {', '.join(UNIT_SECONDS)}, got {value!r}")
    return unit


def _rate_limit(obj: Any, where: str, path: str, shadow: bool, detailed: bool) -> Rule:
    rl = _mapping(obj, where, _RATE_LIMIT_KEYS)
    name = _str(rl.get("name", ""), where, "name", empty=True)
    replaces: List[str] = []
    for i, item in enumerate(rl.get("replaces") or []):
        replaces.append(_str(_mapping(item, f"{where}.replaces[{i}]", {"name"}).get("name"),
                             f"{where}.replaces[{i}]", "name"))
    if rl.get("unlimited", False) and _bool(rl["unlimited"], where, "unlimited"):
        if "unit" in rl or "requests_per_unit" in rl:
            raise _fail(where, "an unlimited rate_limit must not set unit or requests_per_unit")
        return Rule(path, name, unlimited=True, replaces=tuple(replaces), shadow_mode=shadow,
                    detailed_metric=detailed)
    if "unit" not in rl or "requests_per_unit" not in rl:
        raise _fail(where, "rate_limit needs unit and requests_per_unit (or unlimited: true)")
    unit = _unit(rl["unit"], where)
    rpu = _int(rl["requests_per_unit"], where, "requests_per_unit")
    burst = _int(rl["burst"], where, "burst", 1) if "burst" in rl else None
    return Rule(path, name, unit, rpu, burst, False, tuple(replaces), shadow, detailed,
                _bucket(rpu, unit, burst, where))


def _descriptors(items: Any, node: Node, where: str) -> None:
    if items is None:
        return
    if not isinstance(items, list):
        raise _fail(where, f"descriptors must be a list, got {type(items).__name__}")
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        d = _mapping(item, here, _DESCRIPTOR_KEYS)
        key = _str(d.get("key"), here, "key")
        value = _str(d["value"], here, "value", empty=True) if d.get("value") is not None else ""
        shadow = _bool(d.get("shadow_mode", False), here, "shadow_mode")
        detailed = _bool(d.get("detailed_metric", False), here, "detailed_metric")
        path = f"{node.path}.{key}_{value}" if value else f"{node.path}.{key}"
        child = Node(path=path, detailed=detailed)
        if d.get("rate_limit") is not None:
            child.rule = _rate_limit(d["rate_limit"], f"{here}.rate_limit", path, shadow, detailed)
        _descriptors(d.get("descriptors"), child, f"{here}.descriptors")
        if not value:
            table: Dict[Any, Node] = node.any_value
            slot: Any = key
        elif value.endswith("*"):
            if any(k == key and p == value[:-1] for k, p, _ in node.wildcards):
                raise _fail(here, f"duplicate descriptor {key}={value}")
            node.wildcards.append((key, value[:-1], child))
            continue
        else:
            table, slot = node.exact, (key, value)
        if slot in table:
            raise _fail(here, f"duplicate descriptor {key}" + (f"={value}" if value else ""))
        table[slot] = child


def _named_limit(name: Any, obj: Any, where: str) -> Rule:
    name = _str(name, where, "limit name")
    spec = _mapping(obj, where, _LIMIT_KEYS)
    if "capacity" in spec or "refill_rate" in spec:
        if "unit" in spec or "requests_per_unit" in spec or "burst" in spec:
            raise _fail(where, "use either capacity/refill_rate/refill_interval or "
                               "requests_per_unit/unit/burst, not both")
        try:
            config = TokenBucketConfig(spec.get("capacity"), spec.get("refill_rate"),  # type: ignore[arg-type]
                                       spec.get("refill_interval", 1.0))
        except (ConfigurationError, TypeError) as exc:
            raise _fail(where, str(exc)) from exc
        return Rule(name, name, "second", 0, config.capacity, config=config)
    if "unit" not in spec or "requests_per_unit" not in spec:
        raise _fail(where, "a limit needs requests_per_unit and unit (or capacity and refill_rate)")
    unit = _unit(spec["unit"], where)
    rpu = _int(spec["requests_per_unit"], where, "requests_per_unit", 1)
    burst = _int(spec["burst"], where, "burst", 1) if "burst" in spec else None
    return Rule(name, name, unit, rpu, burst, config=_bucket(rpu, unit, burst, where))


def override_rule(requests_per_unit: int, unit: str) -> Rule:
    """The rule of an Envoy descriptor's ``limit`` override (raises PolicyError when out of range)."""
    return Rule(f"override.{requests_per_unit}_per_{unit}", "", unit, requests_per_unit,
                config=_bucket(requests_per_unit, unit, None, "descriptor limit override"))


def parse_policy(text: str, source: str = "<string>", into: Optional[Policy] = None) -> Policy:
    """Parses the YAML documents of one file into ``into`` (or a new Policy)."""
    policy = into if into is not None else Policy(source=source)
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from exc
    for n, doc in enumerate(docs):
        where = f"{source}[document {n}]"
        d = _mapping(doc, where, {"domain", "descriptors", "limits"})
        if "domain" in d:
            name = _str(d["domain"], where, "domain")
            if name in policy.domains:
                raise _fail(where, f"domain {name!r} is defined twice")
            root = Node(path=name)
            _descriptors(d.get("descriptors"), root, f"{where}.descriptors")
            policy.domains[name] = Domain(name, root)
        elif "descriptors" in d:
            raise _fail(where, "descriptors without a domain")
        for lname, spec in _mapping(d.get("limits") or {}, f"{where}.limits").items():
            if lname in policy.limits:
                raise _fail(where, f"limit {lname!r} is defined twice")
            policy.limits[str(lname)] = _named_limit(lname, spec, f"{where}.limits.{lname}")
    return policy


def load_policy(path: Optional[str]) -> Policy:
    """Reads ``path`` (a file or a directory of *.yaml); None gives the built-in policy."""
    if path is None:
        return Policy(limits={"default": _named_limit("default", DEFAULT_LIMIT, "<built-in>")})
    p = Path(path)
    try:
        files = sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml")) if p.is_dir() else [p]
        texts = [(str(f), f.read_text(encoding="utf-8")) for f in files]
    except OSError as exc:
        raise PolicyError(f"cannot read policy {path}: {exc}") from exc
    policy = Policy(source=str(path))
    digest = hashlib.sha256()
    for name, text in texts:
        digest.update(text.encode())
        parse_policy(text, name, policy)
    policy.digest = digest.hexdigest()
    return policy
