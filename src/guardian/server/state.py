"""What every service of one worker shares: the policy in force, its
buckets, the counters and the health of the backend."""

from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple

from .buckets import Bucket, Buckets
from .config import ServeOptions
from .metrics import Stats
from .policy import Node, Policy, Rule, load_policy

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
        self.backend_up = True
        self.draining = False

    def install(self, policy: Policy) -> None:
        """Makes ``policy`` the one in force (buckets are built before the swap)."""
        limits = {}
        for name, rule in policy.limits.items():
            assert rule.config is not None
            limits[name] = (rule, self.buckets.get(f"v1:{name}", rule.config))
        rule_buckets: Dict[int, Bucket] = {}
        for domain in policy.domains.values():
            self._walk(domain.root, rule_buckets)
        self.policy, self.limits, self.rule_buckets = policy, limits, rule_buckets

    def _walk(self, node: Node, out: Dict[int, Bucket]) -> None:
        if node.rule is not None and node.rule.config is not None:
            out[id(node.rule)] = self.buckets.get("rls", node.rule.config)
        for child in node.children():
            self._walk(child, out)

    def load(self) -> None:
        """Loads the policy file (raises PolicyError and keeps the old one on error)."""
        self.install(load_policy(self.opts.config))

    @property
    def serving(self) -> bool:
        """What health checks report: not while draining, nor while the
        backend is down and the policy denies without it."""
        if self.draining:
            return False
        return self.backend_up or self.opts.fail_open is not False
