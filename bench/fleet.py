"""Fleet simulator: N guardian nodes against a local 3-master Redis Cluster.

Each simulated node is its own backend instance (its own connections and,
for the batched backend, its own lease book), many per process on one
asyncio loop, spread over ``--procs`` processes. Nodes offer Poisson
traffic at a set rate over K keys drawn with a Zipf skew; churn kills
nodes mid-run (no leases given back, as after SIGKILL) and starts new ones.
The run is paced (open loop, far below what the CPU could push), so what
it measures is the protocol: how many Redis commands a check costs and
how close the fleet comes to the exact GCRA allowance.

Per configuration it reports admitted checks against the allowance
(capacity + elapsed x rate per key over the run window on Redis' clock:
over-admission must be 0), Redis commands per admitted check and per
second (INFO commandstats deltas of every master), per-master balance,
p50/p99 decision latency, and for the batched backend lease sizes and
the share of checks decided without a Redis round trip.

    python bench/fleet.py run --backend batched --nodes 100 --seconds 20
    python bench/fleet.py sweep --out bench/results/fleet.json     # the doc's runs
    python bench/fleet_report.py                                   # model, plots, tables

Only public APIs of guardian are used (guardian.backends.*), so internal
renames do not break it. Every load loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextvars
import gc
import json
import math
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
import types
import uuid
import weakref
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Generator, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

import redis  # noqa: E402
from redis.crc import key_slot  # noqa: E402

from guardian import BackendError, MemoryBackend, TokenBucketConfig  # noqa: E402
from guardian.backends import AsyncBatchedRedisBackend, AsyncRedisBackend  # noqa: E402

#: A check that falls this far behind its schedule is dropped from the
#: schedule (the loop is overloaded; the run reports how many).
MAX_LAG = 1.0
#: Per-node schedules stop after this many times their expected checks.
MAX_CHECKS_FACTOR = 3


@dataclass(frozen=True)
class Scenario:
    """One configuration of the fleet. ``node_rate`` is each node's offered
    checks/s; one limit (``capacity``, ``rate`` per second) applies to every
    key, as a TokenBucketConfig does."""

    backend: str  # "plain" (AsyncRedisBackend) or "batched" (AsyncBatchedRedisBackend)
    nodes: int
    node_rate: float
    keys: int = 1000
    zipf: float = 1.1
    capacity: int = 50
    rate: float = 100.0
    seconds: float = 20.0
    churn: float = 0.0  # share of the live nodes replaced every churn_every s
    churn_every: float = 2.0
    conc: int = 1  # concurrent requests per node
    max_share: float = 0.2
    refresh: float = 0.1
    lifetime: float = 5.0
    timeout: float = 1.0
    procs: int = 2
    seed: int = 1
    label: str = ""

    @property
    def config(self) -> TokenBucketConfig:
        return TokenBucketConfig(self.capacity, Fraction(self.rate).limit_denominator(10**6))


# --- the traffic model and the allowance (pure; tests/unit/test_fleet_model.py) ----


def zipf_cumulative(keys: int, s: float) -> List[float]:
    """Cumulative weights of key i (0-based) ~ 1 / (i + 1)^s."""
    if keys < 1:
        raise ValueError("keys must be >= 1")
    cum, total = [], 0.0
    for i in range(keys):
        total += 1.0 / (i + 1) ** s
        cum.append(total)
    return cum


def zipf_shares(keys: int, s: float) -> List[float]:
    cum = zipf_cumulative(keys, s)
    total = cum[-1]
    return [(c - (cum[i - 1] if i else 0.0)) / total for i, c in enumerate(cum)]


def draw(cum: Sequence[float], rng: random.Random) -> int:
    return min(bisect.bisect_left(cum, rng.random() * cum[-1]), len(cum) - 1)


def allowance(config: TokenBucketConfig, window_us: int) -> int:
    """The most a key may admit, all nodes together, in a window of
    ``window_us`` microseconds that starts with a full bucket: C at once,
    then one per emission interval T. Rounded up by a microsecond (TIME's
    resolution), so it is a bound, never short of the truth."""
    window_ticks = (window_us + 1) * 1000 * config.ticks_per_ns
    return config.capacity + window_ticks // config.emission_ticks


def ideal(config: TokenBucketConfig, arrivals: Dict[int, List[int]]) -> Dict[int, int]:
    """What one exact, central GCRA limiter admits given the same arrival
    times (monotonic ns): the fleet's arrivals replayed through a
    MemoryBackend on an injected clock."""
    now = [0]
    table = MemoryBackend(config, slots=max(64, 2 * len(arrivals)), clock=lambda: now[0])
    out: Dict[int, int] = {}
    events = sorted((t, k) for k, ts in arrivals.items() for t in ts)
    for t, k in events:
        now[0] = t
        out[k] = out.get(k, 0) + table.try_take(f"k{k}")
    table.close()
    return out


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(int(p / 100 * len(sorted_values)), len(sorted_values) - 1)]


# --- one process of nodes ---------------------------------------------------------

#: The node whose code is running; the loop's task factory files every task
#: created under it (the batched backend's refill worker too) to that node,
#: so killing a node stops its background work as SIGKILL would.
_NODE: "contextvars.ContextVar[Optional[Node]]" = contextvars.ContextVar("fleet_node", default=None)


@types.coroutine
def _finish(coro: Any, pending: Any) -> Generator[Any, Any, Any]:
    """Drives an awaitable that already yielded ``pending`` to its end, as
    ``await`` would (cancellation is thrown into it)."""
    while True:
        try:
            yield pending
        except BaseException as exc:  # noqa: B902 - cancellation goes to the check
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            pending = coro.send(None)
        except StopIteration as stop:
            return stop.value


class Node:
    def __init__(self, ident: int, sc: Scenario, url: str, prefix: str) -> None:
        self.ident = ident
        cls: Any = AsyncBatchedRedisBackend if sc.backend == "batched" else AsyncRedisBackend
        kwargs: Dict[str, Any] = dict(prefix=prefix, timeout=sc.timeout, connect_timeout=sc.timeout)
        if sc.backend == "batched":
            kwargs.update(max_share=sc.max_share, refresh_interval=sc.refresh, lease_lifetime=sc.lifetime)
        self.backend = cls(sc.config, url, **kwargs)
        self.rng = random.Random(sc.seed * 1_000_003 + ident)
        self.tasks: "weakref.WeakSet[asyncio.Task[Any]]" = weakref.WeakSet()
        self.dead = False
        self.born = self.died = 0.0
        self.hot = [0, 0]  # offered, admitted on key 0


class Recorder:
    def __init__(self, keys: int) -> None:
        self.offered = [0] * keys
        self.admitted = [0] * keys
        self.arrivals: Dict[int, List[int]] = {}
        self.latency_ns: List[int] = []
        self.local = 0  # decided without suspending: no Redis round trip in its path
        self.errors = 0
        self.lagged = 0


async def _warm(node: Node, keys: Sequence[str]) -> None:
    """Connects to every master (usage reads, takes nothing). Twice: the
    first call goes through redis-py's client, which maps the cluster."""
    for k in [*keys, *keys]:
        await node.backend.usage(k)


async def _traffic(node: Node, sc: Scenario, cum: Sequence[float], names: Sequence[str],
                   start: float, end: float, rec: Recorder) -> None:
    loop = asyncio.get_running_loop()
    rate = sc.node_rate / sc.conc
    rng = node.rng
    take = node.backend.try_take
    clock = time.monotonic_ns
    t = max(start, loop.time()) + rng.expovariate(rate)
    budget = MAX_CHECKS_FACTOR * math.ceil(rate * sc.seconds) + 10
    while t < end and budget > 0:
        budget -= 1
        delay = t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -MAX_LAG:
            rec.lagged += 1
            t = loop.time()
        k = draw(cum, rng)
        t0 = clock()
        try:
            coro = take(names[k])
            try:
                pending = coro.send(None)
            except StopIteration as stop:
                ok = stop.value
                rec.local += 1
            else:
                ok = await _finish(coro, pending)
        except BackendError:
            rec.errors += 1
            ok = False
        t1 = clock()
        rec.latency_ns.append(t1 - t0)
        rec.offered[k] += 1
        rec.arrivals.setdefault(k, []).append(t0)
        if ok:
            rec.admitted[k] += 1
        if k == 0:
            node.hot[0] += 1
            node.hot[1] += ok
        t += rng.expovariate(rate)


def _task_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> "asyncio.Task[Any]":
    task = asyncio.Task(coro, loop=loop, **kwargs)
    node = _NODE.get()
    if node is not None:
        node.tasks.add(task)
    return task


async def _run_nodes(conn: Any, sc: Scenario, url: str, prefix: str, idents: List[int], wid: int,
                     warm_keys: List[str]) -> None:
    loop = asyncio.get_running_loop()
    loop.set_task_factory(_task_factory)
    cum = zipf_cumulative(sc.keys, sc.zipf)
    names = [f"k{i}" for i in range(sc.keys)]
    rec = Recorder(sc.keys)
    nodes = [Node(i, sc, url, prefix) for i in idents]
    for node in nodes:
        await _warm(node, warm_keys)
    # The run's garbage is small (counters, lists of ints); a full collection
    # over hundreds of clients would stall the loop and show as latency.
    gc.freeze()
    gc.disable()
    conn.send(("ready",))
    _, start, end = await asyncio.to_thread(conn.recv)
    everyone = list(nodes)
    traffic: List["asyncio.Task[None]"] = []

    def launch(node: Node, at: float) -> None:
        node.born = at
        for _ in range(sc.conc):
            ctx = contextvars.copy_context()
            ctx.run(_NODE.set, node)
            task = loop.create_task(_traffic(node, sc, cum, names, at, end, rec), context=ctx)
            node.tasks.add(task)
            traffic.append(task)

    for node in nodes:
        launch(node, start)
    live = list(nodes)
    rng = random.Random(sc.seed * 7919 + wid)
    next_id = max(idents, default=0) + 1_000_000 * (wid + 1)
    churn_at = start + sc.churn_every
    while sc.churn > 0 and churn_at < end - sc.churn_every / 2:
        await asyncio.sleep(max(churn_at - loop.time(), 0))
        want = sc.churn * len(live)
        n = int(want) + (rng.random() < want - int(want))
        for node in rng.sample(live, min(n, len(live))):
            live.remove(node)
            node.dead, node.died = True, loop.time()
            for task in list(node.tasks):
                task.cancel()  # its checks and its background refills: a crash
        for _ in range(n):
            node = Node(next_id, sc, url, prefix)
            next_id += 1
            ctx = contextvars.copy_context()
            ctx.run(_NODE.set, node)
            await loop.create_task(_warm(node, warm_keys), context=ctx)  # joining costs commands too
            everyone.append(node)
            live.append(node)
            launch(node, loop.time())
        churn_at += sc.churn_every
    await asyncio.gather(*traffic, return_exceptions=True)
    gc.enable()
    stats: Dict[str, int] = {}
    leases: List[float] = []  # each node's mean tokens per granted reservation
    if sc.backend == "batched":
        for node in everyone:
            own = node.backend.stats()
            for k, v in own.items():
                stats[k] = stats.get(k, 0) + v
            granted = own.get("reservations", 0) - own.get("redis_denials", 0)
            if granted > 0:
                leases.append(own.get("reserved_tokens", 0) / granted)
    hot = [(n.hot[0], n.hot[1], (n.died or end) - n.born, n.dead) for n in everyone if n.hot[0]]
    conn.send(("done", dict(
        offered=rec.offered, admitted=rec.admitted, arrivals=rec.arrivals, latency_ns=rec.latency_ns,
        local=rec.local, errors=rec.errors, lagged=rec.lagged, stats=stats, hot=hot, leases=leases,
        nodes_started=len(everyone), nodes_killed=sum(n.dead for n in everyone))))
    await asyncio.to_thread(conn.recv)  # the coordinator has read the counters
    for node in everyone:
        try:
            await node.backend.aclose()  # a killed node's leases too: after the window
        except (Exception, asyncio.CancelledError):  # noqa: BLE001 - a killed node's worker was cancelled
            pass
    conn.close()


def _worker(conn: Any, sc_dict: Dict[str, Any], url: str, prefix: str, idents: List[int], wid: int,
            warm_keys: List[str]) -> None:
    asyncio.run(_run_nodes(conn, Scenario(**sc_dict), url, prefix, idents, wid, warm_keys))


# --- the coordinator ------------------------------------------------------------------

#: Script calls: one per check for RedisBackend, one per reservation or
#: release for the batched backend.
SCRIPTS = ("evalsha", "eval", "evalsha_ro", "eval_ro")
#: What the coordinator itself sends (not the fleet's): INFO, and TIME twice.
OURS = ("info",)


def commandstats(client: redis.Redis) -> Dict[str, int]:
    """Calls per command; ``usec:<command>`` the server's CPU time in it."""
    out: Dict[str, int] = {}
    for k, v in client.info("commandstats").items():
        name = k[len("cmdstat_"):]
        out[name] = int(v["calls"])
        if name in SCRIPTS:
            out["usec:" + name] = int(v["usec"])
    return out


def _delta(after: Dict[str, int], before: Dict[str, int]) -> Dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def server_time_us(client: redis.Redis) -> int:
    s, us = client.time()
    return int(s) * 1_000_000 + int(us)


class Fleet:
    """A local 3-master cluster (no replicas: the protocol, not failover, is
    measured here) started with the test suite's own starter, or an
    existing one of that starter (``cluster=``, left running)."""

    def __init__(self, masters: int = 3, cluster: Any = None) -> None:
        from redis_servers import Cluster

        self.tmp: Optional[tempfile.TemporaryDirectory[str]] = None
        if cluster is None:
            self.tmp = tempfile.TemporaryDirectory(prefix="fleet-")
            cluster = Cluster(Path(self.tmp.name), masters=masters, replicas=0).start()
        self.cluster = cluster
        self.clients = [redis.Redis(port=s.port) for s in cluster.masters()]

    @property
    def url(self) -> str:
        return self.cluster.url

    def warm_keys(self) -> List[str]:
        """One key per master (the hash tag is the key): a node's warm-up
        opens a connection to each."""
        ranges = [(int(r[0]), int(r[1])) for r in self.clients[0].execute_command("CLUSTER SLOTS")]
        out = []
        for lo, hi in ranges:
            out.append(next(f"warm{i}" for i in range(100_000) if lo <= key_slot(f"warm{i}".encode()) <= hi))
        return out

    def close(self) -> None:
        for c in self.clients:
            c.close()
        if self.tmp is not None:
            self.cluster.stop()
            self.tmp.cleanup()

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run(sc: Scenario, fleet: Fleet, verbose: bool = True) -> Dict[str, Any]:
    """One configuration, start to end; its figures as a dict."""
    prefix = f"fleet{uuid.uuid4().hex[:8]}"
    ctx = mp.get_context("spawn")
    procs = max(1, min(sc.procs, sc.nodes))
    parts = [list(range(sc.nodes))[w::procs] for w in range(procs)]
    workers = []
    for w, idents in enumerate(parts):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(child, asdict(sc), fleet.url, prefix, idents, w, fleet.warm_keys()),
                        daemon=True)
        p.start()
        workers.append((p, parent))
    try:
        for p, conn in workers:
            if not conn.poll(120 + sc.nodes * 0.2):
                raise TimeoutError("a worker did not get ready")
            conn.recv()
        load0 = os.getloadavg()
        before = [commandstats(c) for c in fleet.clients]
        t0 = server_time_us(fleet.clients[0])
        start = time.monotonic() + 0.3
        end = start + sc.seconds
        for _, conn in workers:
            conn.send(("go", start, end))
        results = []
        for p, conn in workers:
            if not conn.poll(sc.seconds + 120):
                raise TimeoutError("a worker did not finish")
            results.append(conn.recv()[1])
        t1 = server_time_us(fleet.clients[0])
        after = [commandstats(c) for c in fleet.clients]
        load1 = os.getloadavg()
        for _, conn in workers:
            conn.send(("close",))
        for p, _ in workers:
            p.join(60)
    finally:
        for p, _ in workers:
            if p.is_alive():
                p.kill()
                p.join(5)
    deltas = [_delta(a, b) for a, b in zip(after, before)]
    deltas[0]["time"] = deltas[0].get("time", 0) - 2  # our own two TIME calls
    out = summarize(sc, results, deltas, t1 - t0, round((end - start) * 1e6))
    out["load"] = [round(load0[0], 2), round(load1[0], 2)]
    if verbose:
        print(format_row(out), flush=True)
    return out


def summarize(sc: Scenario, results: List[Dict[str, Any]], deltas: List[Dict[str, int]],
              window_us: int, active_us: int) -> Dict[str, Any]:
    """The figures of one run. ``window_us``: from before the first check
    to after the last, on Redis' clock (over-admission is judged on it: a
    sound bound); ``active_us``: the schedule's length (under-admission is
    judged on it, so the slack around the schedule is not counted as loss)."""
    config = sc.config
    K = sc.keys
    offered = [sum(r["offered"][k] for r in results) for k in range(K)]
    admitted = [sum(r["admitted"][k] for r in results) for k in range(K)]
    arrivals: Dict[int, List[int]] = {}
    for r in results:
        for k, ts in r["arrivals"].items():
            arrivals.setdefault(int(k), []).extend(ts)
    bound = allowance(config, window_us)
    over = sum(max(0, a - bound) for a in admitted)
    cap = [min(o, allowance(config, active_us)) for o in offered]
    best = ideal(config, arrivals)
    checks = sum(offered)
    total_admitted = sum(admitted)
    latency = sorted(v for r in results for v in r["latency_ns"])
    usec = sum(d.get("usec:" + c, 0) for d in deltas for c in SCRIPTS)
    deltas = [{c: v for c, v in d.items() if not c.startswith("usec:")} for d in deltas]
    scripts = [sum(d.get(c, 0) for c in SCRIPTS) for d in deltas]
    client_cmds = [sum(v for c, v in d.items() if c not in OURS and not _in_script(c)) for d in deltas]
    all_cmds = [sum(v for c, v in d.items() if c not in OURS) for d in deltas]
    seconds = window_us / 1e6
    stats: Dict[str, int] = {}
    for r in results:
        for k, v in r["stats"].items():
            stats[k] = stats.get(k, 0) + v
    hot = [h for r in results for h in r["hot"]]
    # Per-node success on the hottest key, nodes that lived through the run.
    ratios = sorted(a / o for o, a, life, dead in hot if not dead and o >= 5)
    out: Dict[str, Any] = dict(
        scenario=asdict(sc),
        window_s=round(seconds, 3),
        active_s=round(active_us / 1e6, 3),
        checks=checks,
        checks_per_s=round(checks / seconds, 1),
        admitted=total_admitted,
        allowance_per_key=bound,
        allowed_max=sum(cap),
        ideal=sum(best.values()),
        over=over,
        over_keys=sum(1 for a in admitted if a > bound),
        under_pct=round(100 * (1 - total_admitted / max(sum(cap), 1)), 3),
        under_vs_ideal_pct=round(100 * (1 - total_admitted / max(sum(best.values()), 1)), 3),
        hot=dict(offered=offered[0], admitted=admitted[0], allowance=cap[0],
                 ideal=best.get(0, 0),
                 node_ratio_min=round(ratios[0], 3) if ratios else None,
                 node_ratio_p10=round(percentile(ratios, 10), 3) if ratios else None,
                 node_ratio_max=round(ratios[-1], 3) if ratios else None,
                 starved_nodes=sum(1 for x in ratios if x == 0), nodes=len(ratios)),
        script_calls=sum(scripts),
        commands=sum(client_cmds),
        server_commands=sum(all_cmds),
        commands_per_admitted=round(sum(client_cmds) / max(total_admitted, 1), 4),
        commands_per_check=round(sum(client_cmds) / max(checks, 1), 4),
        commands_per_s=round(sum(client_cmds) / seconds, 1),
        usec_per_script=round(usec / max(sum(scripts), 1), 2),
        per_master=scripts,
        master_imbalance=round(max(scripts) / max(sum(scripts) / len(scripts), 1e-9), 3),
        p50_us=round(percentile(latency, 50) / 1000, 1),
        p99_us=round(percentile(latency, 99) / 1000, 1),
        local_pct=round(100 * sum(r["local"] for r in results) / max(checks, 1), 2),
        errors=sum(r["errors"] for r in results),
        lagged=sum(r["lagged"] for r in results),
        nodes_started=sum(r["nodes_started"] for r in results),
        nodes_killed=sum(r["nodes_killed"] for r in results),
        command_mix={c: sum(d.get(c, 0) for d in deltas) for c in sorted({c for d in deltas for c in d})},
    )
    if stats:
        granted = stats.get("reservations", 0) - stats.get("redis_denials", 0)
        per_node = sorted(x for r in results for x in r.get("leases", []))
        out["batched"] = dict(stats, mean_lease=round(stats.get("reserved_tokens", 0) / max(granted, 1), 2),
                              node_lease_p10_p50_p90_max=[round(percentile(per_node, q), 2) for q in (10, 50, 90)]
                              + [round(per_node[-1], 2) if per_node else float("nan")])
    return out


#: Commands scripts run inside Redis (counted by commandstats too).
_SCRIPT_INNER = {"get", "set", "mget", "del", "time", "pexpire", "psetex", "exists"}


def _in_script(command: str) -> bool:
    return command in _SCRIPT_INNER


def format_row(r: Dict[str, Any]) -> str:
    sc = r["scenario"]
    text = (f"{sc['label'] or '-':14} {sc['backend']:7} N={sc['nodes']:<4} K={sc['keys']:<5} s={sc['zipf']:<4} "
            f"d={sc['node_rate']:<6g} churn={sc['churn']:<4g} | checks {r['checks']:>7} admitted {r['admitted']:>7} "
            f"over {r['over']} under {r['under_pct']:.2f}% (vs ideal {r['under_vs_ideal_pct']:.2f}%) | "
            f"cmd/adm {r['commands_per_admitted']:.3f} cmd/s {r['commands_per_s']:.0f} "
            f"imb {r['master_imbalance']:.2f} | p50 {r['p50_us']}us p99 {r['p99_us']}us "
            f"local {r['local_pct']}% err {r['errors']} lag {r['lagged']} load {r['load']}")
    if "batched" in r:
        b = r["batched"]
        text += f" | lease {b['mean_lease']} denials {b.get('redis_denials', 0)} dropped {b.get('dropped_tokens', 0)}"
    return text


# --- the doc's runs -------------------------------------------------------------------

#: Fleet-wide offered checks/s in the node-count series: the same traffic
#: spread over more nodes, so the node count is the only change.
FLEET_RATE = 2000.0


def sweep(quick: bool = False) -> List[Scenario]:
    sec = 6.0 if quick else 20.0
    hot = replace(Scenario(backend="plain", nodes=1, node_rate=1.0, seconds=sec), keys=1, capacity=100)
    base = Scenario(backend="plain", nodes=1, node_rate=FLEET_RATE, seconds=sec)
    out: List[Scenario] = []
    for n in (1, 10, 100, 300, 500):
        for b in ("plain", "batched"):
            out.append(replace(base, backend=b, nodes=n, node_rate=FLEET_RATE / n, label="nodes"))
    for s in (0.0, 0.8, 1.4):  # skew at 100 nodes
        for b in ("plain", "batched"):
            out.append(replace(base, backend=b, nodes=100, node_rate=FLEET_RATE / 100, zipf=s, label="skew"))
    for k in (10, 10_000):  # key count at 100 nodes
        for b in ("plain", "batched"):
            out.append(replace(base, backend=b, nodes=100, node_rate=FLEET_RATE / 100, keys=k, label="keys"))
    for n, total in ((100, 500.0), (100, 5000.0), (10, 5000.0)):  # demand
        for b in ("plain", "batched"):
            out.append(replace(base, backend=b, nodes=n, node_rate=total / n, label="demand"))
    # One key over its limit (1,500/s offered, 200/s allowed) across N nodes.
    for n in (1, 10, 50, 300):
        for b in ("plain", "batched"):
            out.append(replace(hot, backend=b, nodes=n, node_rate=1500.0 / n, rate=200.0, label="hotkey"))
    # The 300-node row again: on a loaded machine one run is not enough.
    for b in ("plain", "batched"):
        out.append(replace(hot, backend=b, nodes=300, node_rate=5.0, rate=200.0, label="hotrepeat"))
    # The same key with every node asking often: denied checks at fleet scale.
    for b in ("plain", "batched"):
        out.append(replace(hot, backend=b, nodes=100, node_rate=40.0, rate=200.0, label="storm"))
    # One key under its limit (2,400/s offered, 3,000/s allowed, burst 100)
    # across more nodes than its leases (at most 20 tokens) can be split into.
    for n in (20, 60, 300):
        for b in ("plain", "batched"):
            out.append(replace(hot, backend=b, nodes=n, node_rate=2400.0 / n, rate=3000.0, label="hotsplit"))
    # Churn: a share of the nodes killed (leases not given back) and replaced every 2 s.
    for n, share in ((100, 0.1), (10, 0.2)):
        for b in ("plain", "batched"):
            out.append(replace(base, backend=b, nodes=n, node_rate=FLEET_RATE / n, churn=share, label="churn"))
    return out


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    one = sub.add_parser("run", help="one configuration")
    for f in Scenario.__dataclass_fields__.values():
        if f.name == "backend":
            one.add_argument("--backend", choices=("plain", "batched", "both"), default="both")
        else:
            default = f.default if f.name not in ("nodes", "node_rate") else {"nodes": 10, "node_rate": 100.0}[f.name]
            one.add_argument("--" + f.name.replace("_", "-"), type=type(default), default=default)
    one.add_argument("--json")
    sw = sub.add_parser("sweep", help="the runs docs/scaling.md is fitted to")
    sw.add_argument("--out", default=str(ROOT / "bench" / "results" / "fleet.json"))
    sw.add_argument("--quick", action="store_true", help="6 s per configuration")
    sw.add_argument("--only", help="labels to run, comma separated")
    args = parser.parse_args(argv)
    with Fleet() as fleet:
        if args.cmd == "run":
            kw = {f: getattr(args, f) for f in Scenario.__dataclass_fields__ if f != "backend"}
            backends = ("plain", "batched") if args.backend == "both" else (args.backend,)
            rows = [run(Scenario(backend=b, **kw), fleet) for b in backends]
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
            return
        scenarios = sweep(args.quick)
        if args.only:
            scenarios = [s for s in scenarios if s.label in args.only.split(",")]
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = json.loads(out.read_text()) if out.exists() and args.only else []
        rows = [r for r in rows if r["scenario"]["label"] not in {s.label for s in scenarios}]
        for sc in scenarios:
            rows.append(run(sc, fleet))
            out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
