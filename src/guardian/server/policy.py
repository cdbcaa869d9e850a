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
      search:  {rate: "100/minute"}             # or "100/minute; burst 20", or rate + burst: 20

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

_DESCRIPTOR_KEYS = {"key", "value", "rate_limit", "descriptors", "shadow_mode", "detailed_metric",
                    "quota_mode", "value_to_metric", "share_threshold", "metadata"}
#: The largest value of the uint32 fields Envoy reads (requests_per_unit, limit_remaining).
UINT32_MAX = 2**32 - 1
#: Bounds that keep one policy file from hanging or exhausting a worker:
#: YAML nesting (a descriptor level is two), file size, distinct bucket configs
#: (each is a table of --slots slots, or a Redis key prefix).
MAX_YAML_DEPTH = 100
MAX_POLICY_BYTES = 8 << 20
MAX_BUCKET_CONFIGS = 1024
_RATE_LIMIT_KEYS = {"unit", "requests_per_unit", "unlimited", "name", "replaces", "burst"}
_LIMIT_KEYS = {"unit", "requests_per_unit", "burst", "capacity", "refill_rate", "refill_interval", "rate"}


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
    #: An OVER_LIMIT of this rule alone does not make the request OVER_LIMIT (ratelimit's quota_mode).
    quota_mode: bool = False
    #: ratelimit's ``metadata``, returned in dynamic_metadata when the descriptor passes.
    metadata: Optional[Dict[str, Any]] = field(default=None, compare=False, hash=False)
    #: None when unlimited or when requests_per_unit is 0 (every request is over the limit).
    config: Optional[TokenBucketConfig] = field(default=None, compare=False)

    @property
    def window(self) -> int:
        return UNIT_SECONDS[self.unit]


def _glob_parts(pattern: str) -> Tuple[str, ...]:
    return tuple(pattern.split("*"))


def glob_match(parts: Tuple[str, ...], value: str) -> bool:
    """ratelimit's wildcard: each ``*`` of the pattern (split on it) matches any run of characters."""
    if len(parts) == 1:
        return parts[0] == value
    first, last = parts[0], parts[-1]
    if len(value) < sum(map(len, parts)) or not value.startswith(first) or not value.endswith(last):
        return False
    pos, end = len(first), len(value) - len(last)
    for part in parts[1:-1]:
        i = value.find(part, pos, end)
        if i < 0:
            return False
        pos = i + len(part)
    return True


@dataclass
class Node:
    """A level of a domain's descriptor tree."""

    exact: Dict[Tuple[str, str], "Node"] = field(default_factory=dict)
    #: (key, value pattern split on "*", node) for values with a "*", in file order.
    wildcards: List[Tuple[str, Tuple[str, ...], "Node"]] = field(default_factory=list)
    #: Entries with a key and no value: any value, each value its own bucket.
    any_value: Dict[str, "Node"] = field(default_factory=dict)
    rule: Optional[Rule] = None
    #: "domain.key_value" for metrics.
    path: str = ""
    detailed: bool = False
    #: The configured value ("" for a key alone; the pattern for a wildcard).
    value: str = ""
    #: Every value matching this wildcard shares one bucket (and one metric).
    share_threshold: bool = False
    value_to_metric: bool = False

    @property
    def has_children(self) -> bool:
        return bool(self.exact or self.wildcards or self.any_value)

    def children(self) -> List["Node"]:
        return [*self.exact.values(), *(n for _, _, n in self.wildcards), *self.any_value.values()]

    def child(self, key: str, value: str) -> Tuple[Optional["Node"], str]:
        """ratelimit's order: key and value, then a wildcard value (the first in
        file order), then the key alone. Returns the node and how it matched."""
        node = self.exact.get((key, value))
        if node is not None:
            return node, "exact"
        for k, parts, candidate in self.wildcards:
            if k == key and glob_match(parts, value):
                return candidate, "wildcard"
        return self.any_value.get(key), "key"


@dataclass
class Match:
    """A request descriptor's rule, the values its bucket is keyed by (a
    shared wildcard's pattern instead of the value), and its metric name."""

    rule: Rule
    values: Tuple[str, ...]
    metric: str


@dataclass
class Domain:
    name: str
    root: Node

    def match(self, entries: Sequence[Tuple[str, str]]) -> Optional[Rule]:
        found = self.find(entries)
        return found.rule if found is not None else None

    def find(self, entries: Sequence[Tuple[str, str]]) -> Optional[Match]:
        """The rule for a request descriptor, as ratelimit finds it: every entry
        must match one level, and the rule is the one at the last entry's level."""
        node = self.root
        last = len(entries) - 1
        shared = named = False  # whether a level keys by its pattern / names the metric by the value
        for i, (key, value) in enumerate(entries):
            nxt, how = node.child(key, value)
            if nxt is None:
                return None
            shared = shared or (nxt.share_threshold and how == "wildcard")
            named = named or nxt.value_to_metric
            if i == last:
                rule = nxt.rule
                if rule is None:
                    return None
                if not (shared or named or rule.detailed_metric):  # the common case: no per-value work
                    return Match(rule, tuple(v for _, v in entries), rule.name or rule.path)
                return self._slow_match(entries, rule)
            if not nxt.has_children:
                return None
            node = nxt
        return None

    def _slow_match(self, entries: Sequence[Tuple[str, str]], rule: Rule) -> Match:
        """share_threshold, value_to_metric or detailed_metric on the way: walks again, naming each level."""
        node = self.root
        values: List[str] = []
        parts: List[str] = [self.name]
        for key, value in entries:
            nxt, how = node.child(key, value)
            assert nxt is not None
            values.append(nxt.value if nxt.share_threshold and how == "wildcard" else value)
            parts.append(_metric_part(nxt, how, key, value))
            node = nxt
        return Match(rule, tuple(values), self._metric(rule, entries, values, parts))

    def _metric(self, rule: Rule, entries: Sequence[Tuple[str, str]], values: List[str],
                parts: List[str]) -> str:
        if rule.name:
            return rule.name
        if rule.detailed_metric:  # opted in to one series per value (a shared wildcard: its pattern)
            return ".".join([self.name, *(f"{k}_{v}" if v else k for (k, _), v in zip(entries, values))])
        return ".".join(parts)


def _metric_part(node: Node, how: str, key: str, value: str) -> str:
    """One level of ratelimit's metric name: the configured value, or the
    request's with value_to_metric (a shared wildcard keeps its pattern)."""
    if how == "exact":
        shown = value
    elif how == "wildcard":
        shown = node.value if node.share_threshold or not node.value_to_metric else value
    else:
        shown = value if node.value_to_metric else ""
    return f"{key}_{shown}" if shown else key


@dataclass
class Policy:
    domains: Dict[str, Domain] = field(default_factory=dict)
    limits: Dict[str, Rule] = field(default_factory=dict)
    source: str = "<built-in>"
    #: sha256 of the files read, to log which policy is in force.
    digest: str = ""

    def summary(self) -> str:
        """One line for the log: what is limited, and from where."""
        rules = sum(_count_rules(d.root) for d in self.domains.values())
        shown = [_describe(name, rule) for name, rule in list(self.limits.items())[:_SHOWN]]
        if len(self.limits) > _SHOWN:
            shown.append(f"... {len(self.limits) - _SHOWN} more")
        domains = ", ".join(list(self.domains)[:_SHOWN]) + (" ..." if len(self.domains) > _SHOWN else "")
        return (f"{len(self.limits)} named limit(s)" + (f" [{'; '.join(shown)}]" if shown else "")
                + f", {len(self.domains)} Envoy domain(s)" + (f" [{domains}]" if domains else "")
                + f" with {rules} descriptor rule(s), from {self.source}"
                + (f" (sha256 {self.digest[:12]})" if self.digest else ""))


#: Named limits and domains listed in the startup log, at most.
_SHOWN = 8


def _describe(name: str, rule: Rule) -> str:
    c = rule.config
    if c is None:
        return f"{name}: blocked"
    if rule.requests_per_unit:
        return f"{name}: burst {c.capacity}, {rule.requests_per_unit}/{rule.unit}"
    return f"{name}: burst {c.capacity}, {c.refill_rate:g} per {c.refill_interval:g}s"


def _count_rules(node: Node) -> int:
    return (node.rule is not None) + sum(_count_rules(c) for c in node.children())


# --- parsing -------------------------------------------------------------------


def _fail(where: str, msg: str) -> PolicyError:
    return PolicyError(f"{where}: {msg}")


def _mapping(obj: Any, where: str, allowed: Optional[Set[str]] = None) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise _fail(where, f"expected a mapping, got {type(obj).__name__}")
    if allowed is not None:
        unknown = sorted(str(k) for k in obj if k not in allowed)
        if unknown:
            # A few, shortened: the wrong file may be huge, or hold what should not reach a log.
            shown = ", ".join(k if len(k) <= 40 else k[:37] + "..." for k in unknown[:3])
            more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
            raise _fail(where, f"unknown key(s) {shown}{more} (allowed: {', '.join(sorted(allowed))})")
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


def _rate_limit(obj: Any, where: str, path: str, flags: Dict[str, Any]) -> Rule:
    rl = _mapping(obj, where, _RATE_LIMIT_KEYS)
    name = _str(rl.get("name", ""), where, "name", empty=True)
    replaces: List[str] = []
    for i, item in enumerate(rl.get("replaces") or []):
        here = f"{where}.replaces[{i}]"
        replaced = _mapping(item, here, {"name"}).get("name")
        if replaced is None or replaced == "":
            raise _fail(here, "should not have an empty replaces entry")
        replaces.append(_str(replaced, here, "name"))
        if name and replaces[-1] == name:
            raise _fail(here, f"replaces should not contain name of same descriptor ({name!r})")
    if rl.get("unlimited", False) and _bool(rl["unlimited"], where, "unlimited"):
        if "unit" in rl:  # ratelimit ignores a requests_per_unit beside unlimited, not a unit
            raise _fail(where, "should not specify rate limit unit when unlimited")
        return Rule(path, name, unlimited=True, replaces=tuple(replaces), **flags)
    if "unit" not in rl or "requests_per_unit" not in rl:
        raise _fail(where, "rate_limit needs unit and requests_per_unit (or unlimited: true)")
    unit = _unit(rl["unit"], where)
    rpu = _uint32(rl["requests_per_unit"], where, "requests_per_unit")
    burst = _uint32(rl["burst"], where, "burst", 1) if "burst" in rl else None
    return Rule(path, name, unit, rpu, burst, False, tuple(replaces), config=_bucket(rpu, unit, burst, where),
                **flags)


def _uint32(value: Any, where: str, what: str, minimum: int = 0) -> int:
    """An integer that fits the uint32 fields Envoy reads (and answers with)."""
    n = _int(value, where, what, minimum)
    if n > UINT32_MAX:
        raise _fail(where, f"{what} must be at most {UINT32_MAX} (Envoy reads it as a uint32), got {n}")
    return n


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
        _add_child(node, key, value, _descriptor_node(d, node, key, value, here), here)


def _descriptor_node(d: Mapping[str, Any], parent: Node, key: str, value: str, here: str) -> Node:
    flags = {
        "shadow_mode": _bool(d.get("shadow_mode", False), here, "shadow_mode"),
        "detailed_metric": _bool(d.get("detailed_metric", False), here, "detailed_metric"),
        "quota_mode": _bool(d.get("quota_mode", False), here, "quota_mode"),
    }
    share = _bool(d.get("share_threshold", False), here, "share_threshold")
    if share and "*" not in value:
        raise _fail(here, "share_threshold can only be used with wildcard values (containing '*'), "
                          f"but found key '{key}_{value}'")
    metadata = d.get("metadata")
    if metadata is not None:
        metadata = dict(_mapping(metadata, f"{here}.metadata"))
    path = f"{parent.path}.{key}_{value}" if value else f"{parent.path}.{key}"
    child = Node(path=path, detailed=flags["detailed_metric"], value=value, share_threshold=share,
                 value_to_metric=_bool(d.get("value_to_metric", False), here, "value_to_metric"))
    if d.get("rate_limit") is not None:
        child.rule = _rate_limit(d["rate_limit"], f"{here}.rate_limit", path, dict(flags, metadata=metadata))
    _descriptors(d.get("descriptors"), child, f"{here}.descriptors")
    return child


def _add_child(node: Node, key: str, value: str, child: Node, here: str) -> None:
    duplicate = _fail(here, f"duplicate descriptor composite key '{child.path}'")
    if not value:
        if key in node.any_value:
            raise duplicate
        node.any_value[key] = child
    elif "*" in value:
        if any(k == key and "*".join(p) == value for k, p, _ in node.wildcards):
            raise duplicate
        node.wildcards.append((key, _glob_parts(value), child))
    else:
        if (key, value) in node.exact:
            raise duplicate
        node.exact[(key, value)] = child


def _named_limit(name: Any, obj: Any, where: str) -> Rule:
    name = _str(name, where, "limit name")
    spec = _mapping(obj, where, _LIMIT_KEYS)
    if "rate" in spec:
        return _named_rate(name, spec, where)
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
    rpu = _uint32(spec["requests_per_unit"], where, "requests_per_unit", 1)
    burst = _uint32(spec["burst"], where, "burst", 1) if "burst" in spec else None
    return Rule(name, name, unit, rpu, burst, config=_bucket(rpu, unit, burst, where))


def _named_rate(name: str, spec: Mapping[str, Any], where: str) -> Rule:
    """``{rate: "100/minute"}`` (TokenBucketConfig.parse's notation), with
    an optional ``burst``."""
    other = sorted(set(spec) - {"rate", "burst"})
    if other:
        raise _fail(where, f"use either rate (and burst) or {'/'.join(other)}, not both")
    text = spec["rate"]
    if not isinstance(text, str):
        raise _fail(where, f"rate must be a string like \"100/minute\", got {text!r}")
    burst = _uint32(spec["burst"], where, "burst", 1) if "burst" in spec else None
    if "and" in text.lower().split() or "&" in text:
        raise _fail(where, f"rate {text!r} holds several limits: name each limit on its own")
    try:
        config = TokenBucketConfig.parse(text, burst=burst)
    except (ConfigurationError, TypeError) as exc:
        raise _fail(where, str(exc)) from exc
    return Rule(name, name, "second", 0, config.capacity, config=config)


def override_rule(requests_per_unit: int, unit: str) -> Rule:
    """The rule of an Envoy descriptor's ``limit`` override (raises PolicyError when out of range)."""
    return Rule(f"override.{requests_per_unit}_per_{unit}", "", unit, requests_per_unit,
                config=_bucket(requests_per_unit, unit, None, "descriptor limit override"))


def _refuse_duplicates(loader: Any, node: Any, deep: bool) -> None:
    seen: Dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.setdefault(key, key_node)
        except TypeError:
            continue  # an unhashable key: the base class reports it
        if first is not key_node:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {first.start_mark.line + 1})", key_node.start_mark)


def _alias_error(mark: Any) -> Any:
    return yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in a policy file", mark)


def _depth_error(mark: Any) -> Any:
    return yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)


class _PolicyLoader(yaml.SafeLoader):  # type: ignore[misc]
    """safe_load, minus what lets a small file build a huge or deep tree, or
    hide a second value of a key: aliases, deep nesting, duplicate keys.
    The pure-Python parser: used when PyYAML was built without libyaml."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _alias_error(self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _depth_error(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        _refuse_duplicates(self, node, deep)
        return super().construct_mapping(node, deep=deep)


_PolicyLoader.add_constructor("tag:yaml.org,2002:map", _PolicyLoader.construct_yaml_map)

_FAST = bool(getattr(yaml, "__with_libyaml__", False))
if _FAST:
    class _FastPolicyLoader(yaml.CSafeLoader):  # type: ignore[misc]
        """libyaml's parser and composer (ten times faster: a reload holds the
        GIL a tenth as long); aliases and depth are refused by a scan of its
        events first, duplicate keys by the (Python) constructor."""

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            _refuse_duplicates(self, node, deep)
            return super().construct_mapping(node, deep=deep)

    _FastPolicyLoader.add_constructor("tag:yaml.org,2002:map", _FastPolicyLoader.construct_yaml_map)


def _scan(text: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise _alias_error(event.start_mark)
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise _depth_error(event.start_mark)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _documents(text: str, source: str) -> List[Any]:
    if len(text) > MAX_POLICY_BYTES:
        raise PolicyError(f"{source}: larger than {MAX_POLICY_BYTES >> 20} MiB")
    try:
        if _FAST:
            _scan(text)
        loader = (_FastPolicyLoader if _FAST else _PolicyLoader)(text)
        try:
            docs = []
            while loader.check_data():
                doc = loader.get_data()
                if doc is not None:
                    docs.append(doc)
            return docs
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        # One line: the error goes to an operator's log and the CLI's exit line.
        raise PolicyError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from exc


def parse_policy(text: str, source: str = "<string>", into: Optional[Policy] = None,
                 merge_domains: bool = False) -> Policy:
    """Parses the YAML documents of one file into ``into`` (or a new Policy).
    ``merge_domains``: a domain defined again adds its descriptors to the
    first definition (ratelimit's MERGE_DOMAIN_CONFIG); else it is refused."""
    policy = into if into is not None else Policy(source=source)
    for n, doc in enumerate(_documents(text, source)):
        where = f"{source}[document {n}]"
        d = _mapping(doc, where, {"domain", "descriptors", "limits"})
        if "domain" in d:
            name = _str(d["domain"], where, "domain")
            if name in policy.domains and not merge_domains:
                raise _fail(where, f"duplicate domain '{name}' in config file")
            root = policy.domains[name].root if name in policy.domains else Node(path=name)
            _descriptors(d.get("descriptors"), root, f"{where}.descriptors")  # duplicates refused
            policy.domains[name] = Domain(name, root)
        elif "descriptors" in d:
            raise _fail(where, "config file cannot have empty domain (descriptors without a domain)")
        for lname, spec in _mapping(d.get("limits") or {}, f"{where}.limits").items():
            if lname in policy.limits:
                raise _fail(where, f"limit {lname!r} is defined twice")
            policy.limits[str(lname)] = _named_limit(lname, spec, f"{where}.limits.{lname}")
    _check_configs(policy, source)
    return policy


def _check_configs(policy: Policy, source: str) -> None:
    configs = {r.config for r in policy.limits.values()}
    stack = [d.root for d in policy.domains.values()]
    while stack:
        node = stack.pop()
        if node.rule is not None:
            configs.add(node.rule.config)
        stack.extend(node.children())
    if len(configs) > MAX_BUCKET_CONFIGS:
        raise PolicyError(f"{source}: {len(configs)} distinct rates/bursts; at most {MAX_BUCKET_CONFIGS} "
                          "(each is a table of its own)")


def load_policy(path: Optional[str], merge_domains: bool = False) -> Policy:
    """Reads ``path`` (a file or a directory of *.yaml); None gives the built-in policy."""
    if path is None:
        return Policy(limits={"default": _named_limit("default", DEFAULT_LIMIT, "<built-in>")})
    p = Path(path)
    try:
        files = sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml")) if p.is_dir() else [p]
        for f in files:
            if f.stat().st_size > MAX_POLICY_BYTES:
                raise PolicyError(f"{f}: larger than {MAX_POLICY_BYTES >> 20} MiB")
        texts = [(str(f), f.read_text(encoding="utf-8")) for f in files]
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy {path}: {exc}") from exc
    policy = Policy(source=str(path))
    digest = hashlib.sha256()
    for name, text in texts:
        digest.update(text.encode())
        parse_policy(text, name, policy, merge_domains)
    policy.digest = digest.hexdigest()
    return policy
