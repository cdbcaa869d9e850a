"""The scaling model of docs/scaling.md: Redis commands/s and admission for
N nodes, K keys, a Zipf skew and a per-node demand, for RedisBackend
("plain") and BatchedRedisBackend ("batched"); two parameters fitted to
the fleet simulator's runs (bench/fleet.py).

Per key k with Zipf share p_k, each node offers lam = d * p_k checks/s and
the fleet Lam = N * lam. One limit (C, r) per key.

- plain: one script call per check: Lam commands/s. Admits min(Lam, r).
- batched, key under its limit (Lam <= r): a node's lease is about
  ``refresh`` seconds of its own demand, lam * refresh, up to
  max_share * C; each reservation serves a lease: N * lam / L commands/s,
  L = min(1 + alpha * lam * refresh, Lmax). A node that sees a key much
  less than once per ``refresh`` gets leases of 1: a plain check.
- batched, key over its limit (Lam > r): every node keeps asking; a denial
  is cached for about gamma * T (T = 1 / r, the time to the next token),
  so a node makes lam / (1 + lam * gamma / r) calls per second (a renewal
  process: one call, then a cached window) and the fleet N times that:
  it grows with N, not with the admitted rate r.

Admission: both admit min(Lam, r) per key in the long run (the limit's
own allowance); the batched backend loses the tokens held in leases when
the window ends or a node dies on a key at its limit: at most
min(N * held, C) per key, held = 0.75 * (L - 1) (a lease is refilled at
half, and a lease of one token is spent by the check that took it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Sequence, Tuple

__all__ = ["Traffic", "Params", "predict", "fit", "masters_needed", "from_run", "zipf_shares"]


def zipf_shares(keys: int, s: float) -> List[float]:
    w = [1.0 / (i + 1) ** s for i in range(keys)]
    total = sum(w)
    return [x / total for x in w]


@dataclass(frozen=True)
class Traffic:
    nodes: int
    node_rate: float  # checks/s each node offers
    keys: int
    zipf: float
    capacity: int
    rate: float  # per key, tokens/s
    seconds: float = 20.0
    churn_per_s: float = 0.0  # nodes killed per second
    max_share: float = 0.2
    refresh: float = 0.1


@dataclass(frozen=True)
class Params:
    #: Tokens a reservation serves, per token of lam * refresh.
    alpha: float = 1.0
    #: A cached denial lasts gamma * T on average.
    gamma: float = 0.5


@dataclass(frozen=True)
class Prediction:
    commands_per_s: float
    checks_per_s: float
    admitted_per_s: float
    allowance_per_s: float  # sum over keys of min(demand, r): the most any limiter admits
    under_pct: float  # batched: tokens held in leases, lost, as % of the allowance
    hottest_key_commands_per_s: float

    @property
    def commands_per_admitted(self) -> float:
        return self.commands_per_s / max(self.admitted_per_s, 1e-9)


def _lease(lam: float, t: Traffic, p: Params) -> float:
    """Tokens one reservation serves on average: 1 for a key seen less
    than once a ``refresh`` (a plain check), growing with the demand a
    node sees, capped at max_share * C. The sizing follows the rate seen
    since the last reservation, which Poisson gaps make noisy: a short gap
    already doubles a lease of 1, hence 1 + alpha * lam * refresh rather
    than a step."""
    lmax = max(1, int(t.capacity * t.max_share))
    return min(1.0 + p.alpha * lam * t.refresh, float(lmax))


def predict(t: Traffic, backend: str, p: Params = Params()) -> Prediction:
    shares = zipf_shares(t.keys, t.zipf)
    d, n, r = t.node_rate, t.nodes, t.rate
    cmds = admitted = held_loss = hottest = 0.0
    allowance = 0.0
    for share in shares:
        lam = d * share
        fleet = n * lam
        allowed = min(fleet, r)
        allowance += allowed
        admitted += allowed
        if backend == "plain":
            c = fleet
        elif fleet <= r:
            c = fleet / _lease(lam, t, p)
        else:
            c = n * lam / (1.0 + lam * p.gamma / r)
            # What a node holds of a key at its limit: leases sized on the
            # tokens it gets (r / N), lost at the end of the window or a kill.
            lease = _lease(r / n, t, p)
            held = 0.75 * (lease - 1.0) if lease > 1.0 else 0.0
            events = 1.0 + t.churn_per_s * t.seconds / max(n, 1)
            held_loss += min(n * held * events, t.capacity)
        cmds += c
        hottest = max(hottest, c)
    total_allow = allowance * t.seconds
    under = 100.0 * held_loss / total_allow if total_allow else 0.0
    return Prediction(cmds, n * d, admitted * (1 - under / 100), allowance, under, hottest)


def masters_needed(commands_per_s: float, hottest_key_per_s: float, usec_per_call: float,
                   utilisation: float = 0.5, imbalance: float = 1.15) -> Tuple[int, bool]:
    """Masters so that the busiest stays under ``utilisation`` of its one
    core (Redis runs scripts on one thread), with the measured hash-slot
    imbalance; and whether the hottest key alone fits one master (a key
    lives in one slot: more masters do not split it)."""
    per_master = utilisation * 1e6 / usec_per_call
    need = max(1, math.ceil(commands_per_s * imbalance / per_master))
    return need, hottest_key_per_s < per_master


def from_run(row: Dict[str, Any]) -> Traffic:
    """The traffic a run offered: its checks over its schedule's seconds
    (a loaded machine offers a little less than the schedule asked)."""
    sc = row["scenario"]
    seconds = float(row.get("active_s", sc["seconds"]))
    churn = sc["churn"] * sc["nodes"] / sc["churn_every"] if sc["churn"] else 0.0
    return Traffic(sc["nodes"], row["checks"] / seconds / sc["nodes"], sc["keys"], sc["zipf"], sc["capacity"],
                   sc["rate"], seconds, churn, sc["max_share"], sc["refresh"])


def _error(rows: Iterable[Dict[str, Any]], p: Params) -> float:
    e = []
    for row in rows:
        pred = predict(from_run(row), row["scenario"]["backend"], p).commands_per_s
        e.append(math.log(max(pred, 1e-9) / max(row["commands_per_s"], 1e-9)) ** 2)
    return sum(e) / max(len(e), 1)


def fit(rows: Sequence[Dict[str, Any]]) -> Params:
    """alpha and gamma by least squares on log commands/s of the batched
    runs (a grid: two parameters, a few dozen runs)."""
    batched = [r for r in rows if r["scenario"]["backend"] == "batched"]
    best = (math.inf, Params())
    for a in [0.3 + 0.05 * i for i in range(31)]:
        for g in [0.1 + 0.05 * j for j in range(39)]:
            p = Params(round(a, 3), round(g, 3))
            err = _error(batched, p)
            if err < best[0]:
                best = (err, p)
    return best[1]
