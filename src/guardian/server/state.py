"""What every service of one worker shares: the policy in force, its
buckets, the counters and the health of the backend."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .buckets import Bucket, Buckets, Ident
from .config import ServeOptions
from .metrics import Stats
from .policy import Node, Policy, PolicyError, Rule, load_policy

__all__ = ["State"]

log = logging.getLogger("guardian.server")


class State:
    def __init__(self, opts: ServeOptions, run_id: Optional[str]) -> None:
        self.opts = opts
        self.buckets = Buckets(opts, run_id)
        self.stats = Stats()
        self.policy = Policy()
        #: guardian.v1 limit name -> (rule, bucket)
        self.limits: Dict[str, Tuple[Rule, Bucket]] = {}
        #: id(rule) -> bucket, for the Envoy service's rules with a config.
        self.rule_buckets: Dict[int, Bucket] = {}
        #: backend_probe.UP, UNREACHABLE or REFUSED (credentials or ACL), and why.
        self.backend_state = "up"
        self.backend_why = ""
        self.draining = False

    def install(self, policy: Policy) -> None:
        """Makes ``policy`` the one in force (raises PolicyError when its
        tables would exceed --max-table-memory; the old policy stays)."""
        self.commit(self.prepare(policy))

    def prepare(self, policy: Policy) -> "Prepared":
        """Builds the buckets of ``policy`` without touching what is in force:
        may run off the event loop (building tables takes time)."""
        needed = self._needed(policy)
        self._check_memory(needed, policy)
        built: Dict[Ident, Bucket] = {}

        def bucket(namespace: str, config: Any) -> Bucket:
            ident = self.buckets.ident(namespace, config)
            if ident not in built:
                built[ident] = self.buckets.build(namespace, config)
            return built[ident]

        limits = {name: (rule, bucket(f"v1:{name}", rule.config)) for name, rule in policy.limits.items()}
        rule_buckets = {id(rule): bucket("rls", rule.config) for rule in _rls_rules(policy)}
        return Prepared(policy, limits, rule_buckets, built)

    def commit(self, prepared: "Prepared") -> None:
        """On the event loop: the swap, then the tables only the old policy used are closed."""
        self.buckets.adopt(prepared.built)
        # the registered bucket of each ident (another build of it was closed by adopt)
        by_ident = {id(b): self.buckets.get(i[0], b.config) for i, b in prepared.built.items()}
        self.limits = {n: (r, by_ident[id(b)]) for n, (r, b) in prepared.limits.items()}
        self.rule_buckets = {k: by_ident[id(b)] for k, b in prepared.rule_buckets.items()}
        self.policy = prepared.policy
        for ident, old in self.buckets.prune(set(prepared.built)):
            self.retire(ident, old)

    def retire(self, ident: Ident, old: Bucket) -> None:
        """A bucket no policy in force uses any more: its core counters go on
        in Stats, and it is closed. (The native engine defers this until
        its data plane thread can no longer reach the bucket.)"""
        if ident[0].startswith("v1:"):
            counts = old.backend.stats()
            self.stats.count(ident[0][3:], "allowed", counts["allowed"])
            self.stats.count(ident[0][3:], "denied", counts["denied"])
        old.backend.close()

    def _needed(self, policy: Policy) -> List[Ident]:
        idents = {self.buckets.ident(f"v1:{name}", rule.config)  # type: ignore[arg-type]
                  for name, rule in policy.limits.items()}
        idents.update(self.buckets.ident("rls", rule.config) for rule in _rls_rules(policy))  # type: ignore[arg-type]
        return sorted(idents)

    def _check_memory(self, needed: List[Ident], policy: Policy) -> None:
        if not self.buckets.in_memory:
            return
        size = self.buckets.table_bytes()
        budget = self.opts.max_table_memory << 20
        if len(needed) * size > budget:
            raise PolicyError(f"{policy.source}: {len(needed)} distinct limits need {len(needed)} tables of "
                              f"{size >> 10} KiB ({len(needed) * size >> 20} MiB), more than --max-table-memory "
                              f"{self.opts.max_table_memory} MiB; raise it, or lower --slots")

    def load(self) -> None:
        """Loads the policy file (raises PolicyError and keeps the old one on error)."""
        self.install(load_policy(self.opts.config, self.opts.merge_domains))

    @property
    def serving(self) -> bool:
        """What health checks report: not while draining, nor while the
        backend is down and the policy denies without it."""
        if self.draining:
            return False
        return self.backend_up or self.opts.fail_open is not False

    @property
    def backend_up(self) -> bool:
        return self.backend_state == "up"


@dataclass
class Prepared:
    policy: Policy
    limits: Dict[str, Tuple[Rule, Bucket]]
    rule_buckets: Dict[int, Bucket]
    built: Dict[Ident, Bucket]


def _rls_rules(policy: Policy) -> Iterator[Rule]:
    """Every Envoy rule with a bucket (not unlimited, not a block)."""
    stack: List[Node] = [d.root for d in policy.domains.values()]
    while stack:
        node = stack.pop()
        if node.rule is not None and node.rule.config is not None:
            yield node.rule
        stack.extend(node.children())
