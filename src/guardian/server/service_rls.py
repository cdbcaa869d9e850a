"""envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit, with the
stubs of the xds-protos package.

Semantics as envoyproxy/ratelimit defines them: each descriptor is matched
against the domain's tree (see policy.Domain.match); its cost is its own
``hits_addend`` when set (0 then only reads the bucket), else the request's
(0 counts as 1); a descriptor's ``limit`` override replaces the policy's
rule; ``replaces`` drops the replaced rules of the same request; unlimited
rules answer OK with ``limit_remaining`` = 2^32-1; ``shadow_mode`` rules
count but answer OK; ``requests_per_unit: 0`` blocks. Statuses line up with
descriptors, and the request is OVER_LIMIT if any of them is. An unknown
domain or a descriptor with no rule is not limited.

Each bucket is keyed by the domain and every key and value of the request's
descriptor, so each distinct value gets its own bucket, as in ratelimit.
"""

from __future__ import annotations

import hashlib
from time import perf_counter
from typing import Any, Dict, List, Optional, Set, Tuple

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import json_format

from .._errors import RateLimitError
from .._region import MAX_KEY_BYTES
from .buckets import Bucket
from .policy import UNIT_SECONDS, Domain, Match, PolicyError, Rule, override_rule
from .state import State

__all__ = ["RateLimitService"]

Response = rls_pb2.RateLimitResponse
Status = Response.DescriptorStatus
OK = Response.OK
OVER_LIMIT = Response.OVER_LIMIT
_UNIT = {name: Response.RateLimit.Unit.Value(name.upper()) for name in UNIT_SECONDS}
_UNIT_NAME = {v: k for k, v in _UNIT.items()}
UNLIMITED_REMAINING = 2**32 - 1
_SEP = "\x1f"
#: The metric of requests --shadow-mode answered OK although over a limit.
GLOBAL_SHADOW = "global_shadow_mode"
#: Distinct descriptor ``limit`` overrides, at most: each is a small table
#: (OVERRIDE_SLOTS slots of 16 bytes), so together at most 128 x 256 KiB.
MAX_OVERRIDES = 128
OVERRIDE_NAMESPACE = "rls-override"
#: Descriptors, and entries over all descriptors, in one request, at most
#: (Envoy sends a handful): bounds the work and the answer of one request.
MAX_DESCRIPTORS = 1024
MAX_ENTRIES = 4096
#: What a descriptor gets once MAX_OVERRIDES rates are in use: blocked, and named so.
_OVERRIDES_FULL = Rule("override.refused", "guardian: too many distinct limit overrides", "second", 0)


class InvalidRequest(ValueError):
    """A request ratelimit answers with INVALID_ARGUMENT (HTTP 400 on /json)."""


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    def __init__(self, state: State) -> None:
        self.state = state
        self.stats = state.stats
        self._overrides: Dict[Tuple[int, int], Rule] = {}

    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
        try:
            return await self.decide(request)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable") from exc  # abort raises

    async def answer_json(self, body: bytes) -> Tuple[int, bytes, str]:
        """ratelimit's POST /json: a RateLimitRequest as JSON in, the response as
        JSON out; 429 when OVER_LIMIT, 400 for a request it cannot answer."""
        try:
            request = json_format.Parse(body, rls_pb2.RateLimitRequest())
            response = await self.decide(request)
        except (json_format.ParseError, InvalidRequest, UnicodeDecodeError) as exc:
            return 400, f"{exc}\n".encode(), "text/plain; charset=utf-8"
        status = 429 if response.overall_code == OVER_LIMIT else 200
        return status, json_format.MessageToJson(response, indent=None).encode(), "application/json"

    async def decide(self, request: Any) -> Any:
        """The response to one RateLimitRequest (raises InvalidRequest)."""
        t0 = perf_counter()
        _validate(request)
        domain = self.state.policy.domains.get(request.domain)
        matches = self._matches(domain, request.descriptors)
        replaced = _replaced(matches)
        response = Response(overall_code=OK)
        default_hits = request.hits_addend or 1
        outcomes: List[Tuple[Any, Optional[Rule]]] = []
        for d, found in zip(request.descriptors, matches):
            rule = found.rule if found is not None else None
            if rule is None or (rule.name and rule.name in replaced):
                outcomes.append((response.statuses.add(code=OK), None))
            elif rule.unlimited:
                outcomes.append((response.statuses.add(code=OK, limit_remaining=UNLIMITED_REMAINING), None))
                self.stats.count(found.metric, "unlimited")  # type: ignore[union-attr]
            else:
                status = await self._decide(response, request.domain, d, found, default_hits)  # type: ignore[arg-type]
                outcomes.append((status, rule))
        opts = self.state.opts
        response.overall_code = _overall(outcomes, opts.quota_mode)
        if response.overall_code == OVER_LIMIT and opts.shadow_mode:  # statuses keep saying OVER_LIMIT
            response.overall_code = OK
            self.stats.count(GLOBAL_SHADOW, "shadow_denied")
        if opts.response_headers:
            _add_headers(response, outcomes, opts.quota_mode)
        if opts.response_dynamic_metadata:
            _dynamic_metadata(response, request, outcomes)
        self.stats.observe("should_rate_limit", perf_counter() - t0)
        return response

    def _matches(self, domain: Optional[Domain], descriptors: Any) -> List[Optional[Match]]:
        """Each descriptor's rule, found before any bucket is touched, as ratelimit does."""
        if domain is None:
            return [None] * len(descriptors)
        out: List[Optional[Match]] = []
        for i, d in enumerate(descriptors):
            if d.HasField("limit"):
                rule = self._override(d.limit, i)
                values = tuple(e.value for e in d.entries)
                out.append(None if rule is None else Match(rule, values, rule.path))
            else:
                out.append(domain.find([(e.key, e.value) for e in d.entries]))
        return out

    async def _decide(self, response: Any, domain: str, d: Any, found: Match, default_hits: int) -> Any:
        """Takes the descriptor's hits and adds its status."""
        rule = found.rule
        hits = d.hits_addend.value if d.HasField("hits_addend") else default_hits
        if rule.config is None:  # requests_per_unit: 0 blocks everything
            over, remaining, reset = True, 0, float(rule.window)
        else:
            bucket = self.state.rule_buckets.get(id(rule))
            if bucket is None:  # a descriptor-level override
                bucket = self.state.buckets.get(OVERRIDE_NAMESPACE, rule.config, small=True)
            over, remaining, reset = await self._take(bucket, _key(domain, d, found.values), hits)
        if over and rule.shadow_mode:
            self.stats.count(found.metric, "shadow_denied")
            over = False
        else:
            self.stats.count(found.metric, "denied" if over else "allowed")
        current = Response.RateLimit(name=rule.name, requests_per_unit=rule.requests_per_unit,
                                     unit=_UNIT[rule.unit])
        status = response.statuses.add(code=OVER_LIMIT if over else OK, current_limit=current,
                                       limit_remaining=min(remaining, UNLIMITED_REMAINING))
        status.duration_until_reset.FromNanoseconds(int(reset * 1e9))
        return status

    async def _take(self, bucket: Bucket, key: str, hits: int) -> Tuple[bool, int, float]:
        """(over the limit, remaining, seconds until full) for ``hits`` tokens."""
        capacity = bucket.capacity
        if hits == 0 or hits > capacity:
            # 0 reads without taking; more than the capacity can never be allowed.
            self.stats.remote += bucket.fast is None
            self.stats.local += bucket.fast is not None
            try:
                remaining, reset = await bucket.peek(key)
            except RateLimitError:
                remaining, reset = capacity, 0.0
            return hits > capacity, remaining, reset
        if bucket.fast is not None:
            r = bucket.fast(key, hits)
            self.stats.local += 1
        else:
            r = await bucket.take(key, hits)
            self.stats.remote += 1
        return not r.allowed, r.remaining, r.reset_after

    def _override(self, limit: Any, index: int) -> Optional[Rule]:
        unit = _UNIT_NAME.get(limit.unit)
        if unit is None:
            return None  # ratelimit ignores an override with an unknown unit
        ident = (limit.requests_per_unit, limit.unit)
        rule = self._overrides.get(ident)
        if rule is None:
            try:
                rule = override_rule(int(limit.requests_per_unit), unit)
            except PolicyError as exc:
                raise InvalidRequest(f"descriptors[{index}].limit: {exc}") from exc
            if len(self._overrides) >= MAX_OVERRIDES:
                # Not unlimited (that would let a client lift its own limit):
                # a fixed block the caller is told about in the rule's name.
                self.stats.count("override_refused", "denied")
                return _OVERRIDES_FULL
            self._overrides[ident] = rule
        return rule


def _validate(request: Any) -> None:
    if not request.domain:
        raise InvalidRequest("rate limit domain must not be empty")
    if not request.descriptors:
        raise InvalidRequest("rate limit descriptor list must not be empty")
    if len(request.descriptors) > MAX_DESCRIPTORS:
        raise InvalidRequest(f"at most {MAX_DESCRIPTORS} descriptors per request, got {len(request.descriptors)}")
    entries = sum(len(d.entries) for d in request.descriptors)
    if entries > MAX_ENTRIES:
        raise InvalidRequest(f"at most {MAX_ENTRIES} descriptor entries per request, got {entries}")
    for i, d in enumerate(request.descriptors):
        if not d.entries:
            raise InvalidRequest(f"descriptors[{i}] has no entries")
        for j, e in enumerate(d.entries):
            if not e.key:
                raise InvalidRequest(f"descriptors[{i}].entries[{j}]: key must not be empty")


def _key(domain: str, d: Any, values: Tuple[str, ...]) -> str:
    """The bucket: the domain and every key and value (a shared wildcard's pattern for its value)."""
    parts = [domain]
    for e, value in zip(d.entries, values):
        parts.append(e.key)
        parts.append(value)
    key = _SEP.join(parts)
    if len(key) * 4 > MAX_KEY_BYTES and len(key.encode()) > MAX_KEY_BYTES:
        key = domain[:64] + _SEP + "sha256" + _SEP + hashlib.sha256(key.encode()).hexdigest()
    return key


def _replaced(matches: List[Optional[Match]]) -> Set[str]:
    """The names the request's matched rules replace (an unlimited rule's too, as in ratelimit)."""
    out: Set[str] = set()
    for found in matches:
        if found is not None and found.rule.replaces:
            out.update(found.rule.replaces)
    return out


def _overall(outcomes: List[Tuple[Any, Optional[Rule]]], all_quota: bool = False) -> int:
    """OVER_LIMIT when a rule is over its limit, or when every quota_mode rule is."""
    quota = quota_over = 0
    for status, rule in outcomes:
        if rule is None:
            continue
        if rule.quota_mode or all_quota:
            quota += 1
            quota_over += status.code == OVER_LIMIT
        elif status.code == OVER_LIMIT:
            return int(OVER_LIMIT)
    return int(OVER_LIMIT if quota and quota == quota_over else OK)


def _add_headers(response: Any, outcomes: List[Tuple[Any, Optional[Rule]]], all_quota: bool = False) -> None:
    """ratelimit's choice: the status closest to its limit (an over-limit one
    of a rule not in quota mode wins); ratelimit's values, except Reset: the
    seconds until the bucket is full again, not until a fixed window ends."""
    chosen: Optional[Any] = None
    for status, rule in outcomes:
        if rule is None:
            continue
        if status.code == OVER_LIMIT and not (rule.quota_mode or all_quota):
            chosen = status
        elif chosen is None or status.limit_remaining < chosen.limit_remaining:
            chosen = status
    if chosen is None:
        return
    add = response.response_headers_to_add.add
    add(key="RateLimit-Limit", value=str(chosen.current_limit.requests_per_unit))
    add(key="RateLimit-Remaining", value=str(chosen.limit_remaining))
    reset = chosen.duration_until_reset
    add(key="RateLimit-Reset", value=str(reset.seconds + (reset.nanos > 0)))


def _dynamic_metadata(response: Any, request: Any, outcomes: List[Tuple[Any, Optional[Rule]]]) -> None:
    """ratelimit's RESPONSE_DYNAMIC_METADATA: the request, and the metadata of
    the rules whose descriptors passed (the first value wins on overlap)."""
    fields: Dict[str, Any] = {"domain": request.domain, "descriptors": [
        _descriptor_dict(d) for d in request.descriptors]}
    if request.hits_addend:
        fields["hitsAddend"] = request.hits_addend
    passed: Dict[str, Any] = {}
    for status, rule in outcomes:
        if rule is not None and rule.metadata and status.code != OVER_LIMIT:
            _merge(passed, rule.metadata)
    if passed:
        fields["metadata"] = passed
    response.dynamic_metadata.update(fields)


def _descriptor_dict(d: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {"entries": [f"{e.key}={e.value}" for e in d.entries]}
    if d.HasField("limit"):
        out["limit"] = str(d.limit)
    if d.HasField("hits_addend"):
        out["hitsAddend"] = d.hits_addend.value
    return out


def _merge(dest: Dict[str, Any], src: Dict[str, Any]) -> None:
    for k, v in src.items():
        if k not in dest:
            dest[k] = v
        elif isinstance(dest[k], dict) and isinstance(v, dict):
            merged = dict(dest[k])
            _merge(merged, v)
            dest[k] = merged
