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
from typing import Any, Dict, List, NoReturn, Optional, Set, Tuple

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from .._errors import RateLimitError
from .._region import MAX_KEY_BYTES
from .buckets import Bucket
from .policy import UNIT_SECONDS, Domain, Rule, override_rule
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
#: Override configs built from requests, at most (each is a backend).
MAX_OVERRIDES = 1024


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    def __init__(self, state: State) -> None:
        self.state = state
        self.stats = state.stats
        self._overrides: Dict[Tuple[int, int], Rule] = {}

    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
        t0 = perf_counter()
        await self._validate(request, context)
        domain = self.state.policy.domains.get(request.domain)
        rules = self._rules(domain, request.descriptors)
        response = Response(overall_code=OK)
        closest: Optional[Tuple[int, Rule, float]] = None
        default_hits = request.hits_addend or 1
        replaced = _replaced(rules)
        for d, rule in zip(request.descriptors, rules):
            if rule is None or (rule.name and rule.name in replaced):
                response.statuses.add(code=OK)
                continue
            remaining, reset = await self._decide(response, request.domain, d, rule, default_hits)
            if reset is not None and (closest is None or remaining < closest[0]):
                closest = (remaining, rule, reset)
        if closest is not None and self.state.opts.response_headers:
            _add_headers(response, *closest)
        self.stats.observe("should_rate_limit", perf_counter() - t0)
        return response

    @staticmethod
    async def _validate(request: Any, context: Any) -> None:
        if not request.domain:
            await _abort(context, "rate limit domain must not be empty")
        if not request.descriptors:
            await _abort(context, "rate limit descriptor list must not be empty")
        for i, d in enumerate(request.descriptors):
            if not d.entries:
                await _abort(context, f"descriptors[{i}] has no entries")
            for j, e in enumerate(d.entries):
                if not e.key:
                    await _abort(context, f"descriptors[{i}].entries[{j}]: key must not be empty")

    def _rules(self, domain: Optional[Domain], descriptors: Any) -> List[Optional[Rule]]:
        """Each descriptor's rule, found before any bucket is touched, as ratelimit does."""
        if domain is None:
            return [None] * len(descriptors)
        return [self._override(d.limit) if d.HasField("limit")
                else domain.match([(e.key, e.value) for e in d.entries])
                for d in descriptors]

    async def _decide(self, response: Any, domain: str, d: Any, rule: Rule,
                      default_hits: int) -> Tuple[int, Optional[float]]:
        """Adds the descriptor's status; returns (remaining, reset) for the headers."""
        if rule.unlimited:
            response.statuses.add(code=OK, limit_remaining=UNLIMITED_REMAINING)
            self.stats.count(rule.path, "unlimited")
            return UNLIMITED_REMAINING, None
        hits = d.hits_addend.value if d.HasField("hits_addend") else default_hits
        metric = self._metric(rule, d)
        if rule.config is None:  # requests_per_unit: 0 blocks everything
            over, remaining, reset = True, 0, float(rule.window)
        else:
            bucket = self.state.rule_buckets.get(id(rule))
            if bucket is None:  # a descriptor-level override
                bucket = self.state.buckets.get("rls", rule.config)
            over, remaining, reset = await self._take(bucket, self._key(domain, d), hits)
        if over and rule.shadow_mode:
            self.stats.count(metric, "shadow_denied")
            over = False
        else:
            self.stats.count(metric, "denied" if over else "allowed")
        current = Response.RateLimit(name=rule.name, requests_per_unit=rule.requests_per_unit,
                                     unit=_UNIT[rule.unit])
        st = response.statuses.add(code=OVER_LIMIT if over else OK, current_limit=current,
                                   limit_remaining=remaining)
        st.duration_until_reset.FromNanoseconds(int(reset * 1e9))
        if over:
            response.overall_code = OVER_LIMIT
        return remaining, reset

    async def _take(self, bucket: Bucket, key: str, hits: int) -> Tuple[bool, int, float]:
        """(over the limit, remaining, seconds until full) for ``hits`` tokens."""
        capacity = bucket.capacity
        if hits == 0 or hits > capacity:
            # 0 reads without taking; more than the capacity can never be allowed.
            try:
                used = await bucket.usage(key)
            except RateLimitError:
                used = 0
            self.stats.remote += bucket.fast is None
            self.stats.local += bucket.fast is not None
            return hits > capacity, capacity - used, used * bucket.config.emission_interval
        if bucket.fast is not None:
            r = bucket.fast(key, hits)
            self.stats.local += 1
        else:
            r = await bucket.take(key, hits)
            self.stats.remote += 1
        return not r.allowed, r.remaining, r.reset_after

    @staticmethod
    def _key(domain: str, d: Any) -> str:
        parts = [domain]
        for e in d.entries:
            parts.append(e.key)
            parts.append(e.value)
        key = _SEP.join(parts)
        if len(key) * 4 > MAX_KEY_BYTES and len(key.encode()) > MAX_KEY_BYTES:
            key = domain[:64] + _SEP + "sha256" + _SEP + hashlib.sha256(key.encode()).hexdigest()
        return key

    @staticmethod
    def _metric(rule: Rule, d: Any) -> str:
        if rule.name:
            return rule.name
        if rule.detailed_metric:  # opted in to one series per value
            return rule.path.split(".", 1)[0] + "." + ".".join(f"{e.key}_{e.value}" for e in d.entries)
        return rule.path

    def _override(self, limit: Any) -> Optional[Rule]:
        unit = _UNIT_NAME.get(limit.unit)
        if unit is None:
            return None  # ratelimit ignores an override with an unknown unit
        ident = (limit.requests_per_unit, limit.unit)
        rule = self._overrides.get(ident)
        if rule is None:
            if len(self._overrides) >= MAX_OVERRIDES:
                return None
            rule = self._overrides[ident] = override_rule(int(limit.requests_per_unit), unit)
        return rule


def _replaced(rules: List[Optional[Rule]]) -> Set[str]:
    """The names the request's matched rules replace."""
    out: Set[str] = set()
    for rule in rules:
        if rule is not None and rule.replaces and not rule.unlimited:
            out.update(rule.replaces)
    return out


def _add_headers(response: Any, remaining: int, rule: Rule, reset: float) -> None:
    add = response.response_headers_to_add.add
    add(key="RateLimit-Limit", value=f"{rule.requests_per_unit}, {rule.requests_per_unit};w={rule.window}")
    add(key="RateLimit-Remaining", value=str(remaining))
    add(key="RateLimit-Reset", value=str(int(-(-reset // 1))))


async def _abort(context: Any, message: str) -> NoReturn:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
    raise AssertionError("unreachable")

