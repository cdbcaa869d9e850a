"""docs/scaling.md's figures from the fleet simulator's runs: fits the
model (bench/fleet_model.py), prints the tables as Markdown and draws the
plots (docs/img/scaling-*.png).

    python bench/fleet.py sweep                 # bench/results/fleet.json (~25 min)
    python bench/fleet_report.py                # tables on stdout, plots in docs/img/

Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_model import Params, Traffic, fit, from_run, masters_needed, predict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
Row = Dict[str, Any]


def active_s(row: Row) -> float:
    return float(row.get("active_s", row["scenario"]["seconds"]))


def measured_cmds(row: Row) -> float:
    """Commands/s over the traffic's own seconds (the window around it
    adds a little idle time)."""
    return row["commands"] / active_s(row)


def model_of(row: Row, p: Params) -> Any:
    return predict(replace(from_run(row), seconds=active_s(row)), row["scenario"]["backend"], p)


def pct_err(pred: float, meas: float) -> float:
    return 100.0 * (pred - meas) / meas if meas else float("nan")


def where(rows: List[Row], label: str) -> List[Row]:
    return [r for r in rows if r["scenario"]["label"] == label]


def _series(rows: List[Row], backend: str, x: str) -> List[Row]:
    return sorted((r for r in rows if r["scenario"]["backend"] == backend), key=lambda r: r["scenario"][x])


def tables(rows: List[Row], p: Params) -> str:
    out = [f"Fitted: alpha = {p.alpha}, gamma = {p.gamma}.", ""]
    out += ["| N | backend | checks/s | over-admitted | under vs allowance | under vs ideal | "
            "Redis cmds / admitted check | Redis cmds/s | p50 / p99 latency | load (1 min) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(where(rows, "nodes"), key=lambda r: (r["scenario"]["nodes"], r["scenario"]["backend"] != "plain")):
        sc = r["scenario"]
        out.append(f"| {sc['nodes']} | {sc['backend']} | {r['checks'] / active_s(r):,.0f} | {r['over']} | "
                   f"{r['under_pct']:.2f}% | {r['under_vs_ideal_pct']:.2f}% | {r['commands_per_admitted']:.3f} | "
                   f"{measured_cmds(r):,.0f} | {r['p50_us']:.0f} / {r['p99_us']:,.0f} us | "
                   f"{r['load'][0]:.1f}-{r['load'][1]:.1f} |")
    out += ["", "Every run, measured and predicted:", "",
            "| label | backend | N | K | s | d/node | limit C, r | churn | cmds/s measured | predicted | error | "
            "admitted / allowance | predicted | over | lease | local | master split |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    errs: Dict[str, List[float]] = {"plain": [], "batched": []}
    for r in rows:
        sc = r["scenario"]
        m = model_of(r, p)
        e = pct_err(m.commands_per_s, measured_cmds(r))
        errs[sc["backend"]].append(abs(e))
        share = r["admitted"] / max(r["allowed_max"], 1)
        b = r.get("batched", {})
        split = "/".join(f"{100 * x / max(sum(r['per_master']), 1):.0f}" for x in r["per_master"])
        out.append(f"| {sc['label']} | {sc['backend']} | {sc['nodes']} | {sc['keys']} | {sc['zipf']} | "
                   f"{sc['node_rate']:g} | {sc['capacity']}, {sc['rate']:g}/s | {sc['churn']:g} | "
                   f"{measured_cmds(r):,.0f} | {m.commands_per_s:,.0f} | {e:+.1f}% | {100 * share:.2f}% | "
                   f"{100 - m.under_pct:.2f}% | {r['over']} | {b.get('mean_lease', '')} | {r['local_pct']:.0f}% | {split} |")
    out += ["", "Mean absolute error of predicted commands/s: " + ", ".join(
        f"{k} {statistics.mean(v):.1f}% (max {max(v):.1f}%, {len(v)} runs)" for k, v in errs.items() if v)]
    usec = [r["usec_per_script"] for r in rows if r.get("usec_per_script")]
    if usec:
        out.append(f"Redis CPU per script call (commandstats usec/calls): median {statistics.median(usec):.1f} us.")
    return "\n".join(out)


#: Fleets beyond this machine, for the page's examples: (nodes, checks/s
#: per node, keys, Zipf s, capacity, rate per second).
EXAMPLES = [
    (300, 100.0, 10_000, 1.1, 50, 100.0),
    (300, 1000.0, 10_000, 1.1, 50, 100.0),
    (500, 200.0, 100_000, 1.0, 100, 10.0),
    (300, 1000.0, 100, 1.1, 1000, 1000.0),
    (500, 40.0, 1, 1.0, 100, 200.0),
]


def examples(p: Params, usec_per_call: float) -> str:
    out = [f"Model predictions (masters at 50% of a core, {usec_per_call:.0f} us per script call, imbalance 1.15):", "",
           "| nodes × checks/s | keys, Zipf s | limit | plain cmds/s | batched cmds/s | admitted | "
           "hottest key cmds/s plain / batched | masters plain / batched |",
           "|---|---|---|---|---|---|---|---|"]
    for n, d, k, s, c, r in EXAMPLES:
        t = Traffic(n, d, k, s, c, r)
        a, b = predict(t, "plain", p), predict(t, "batched", p)
        ma, fit_a = masters_needed(a.commands_per_s, a.hottest_key_commands_per_s, usec_per_call)
        mb, fit_b = masters_needed(b.commands_per_s, b.hottest_key_commands_per_s, usec_per_call)
        out.append(f"| {n} × {d:,.0f} | {k:,}, {s} | {c} + {r:g}/s | {a.commands_per_s:,.0f} | "
                   f"{b.commands_per_s:,.0f} | {100 * a.admitted_per_s / a.checks_per_s:.0f}% | "
                   f"{a.hottest_key_commands_per_s:,.0f} / {b.hottest_key_commands_per_s:,.0f} | "
                   f"{ma}{'' if fit_a else ' (hot key > 1 master)'} / {mb}{'' if fit_b else ' (hot key > 1 master)'} |")
    return "\n".join(out)


def plots(rows: List[Row], p: Params, outdir: Path) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    made = []
    colors = {"plain": "tab:blue", "batched": "tab:orange"}

    # 1. Node count: commands/s and commands per admitted check.
    nodes = where(rows, "nodes")
    if nodes:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for b in ("plain", "batched"):
            s = _series(nodes, b, "nodes")
            xs = [r["scenario"]["nodes"] for r in s]
            a1.plot(xs, [measured_cmds(r) for r in s], "o", color=colors[b], label=f"{b} measured")
            a2.plot(xs, [r["commands_per_admitted"] for r in s], "o", color=colors[b], label=f"{b} measured")
            if s:
                grid = sorted({1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 700, 1000} | set(xs))
                base = s[0]
                total = base["scenario"]["nodes"] * base["scenario"]["node_rate"]
                preds = [predict(replace(from_run(base), nodes=n, node_rate=total / n, seconds=active_s(base)), b, p)
                         for n in grid]
                a1.plot(grid, [m.commands_per_s for m in preds], "-", color=colors[b], label=f"{b} model")
                a2.plot(grid, [m.commands_per_admitted for m in preds], "-", color=colors[b], label=f"{b} model")
        for a in (a1, a2):
            a.set_xscale("log")
            a.set_xlabel("nodes (fleet demand fixed)")
            a.grid(True, alpha=0.3)
            a.legend(fontsize=8)
        a1.set_ylabel("Redis commands/s")
        a2.set_ylabel("Redis commands per admitted check")
        sc = nodes[0]["scenario"]
        fig.suptitle(f"Same traffic over more nodes: {sc['nodes'] * sc['node_rate']:,.0f} checks/s, K={sc['keys']}, "
                     f"Zipf s={sc['zipf']}, limit {sc['capacity']} + {sc['rate']:g}/s per key")
        fig.tight_layout()
        made.append(_save(fig, outdir / "scaling-nodes.png"))

    # 2. A hot key over its limit, and one under it split across many nodes.
    hot, split = where(rows, "hotkey"), where(rows, "hotsplit")
    if hot or split:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for a, group, title in ((axes[0], hot, "one key over its limit"), (axes[1], split, "one key under its limit")):
            for b in ("plain", "batched"):
                s = _series(group, b, "nodes")
                if not s:
                    continue
                xs = [r["scenario"]["nodes"] for r in s]
                a.plot(xs, [measured_cmds(r) for r in s], "o", color=colors[b], label=f"{b} measured")
                a.plot(xs, [model_of(r, p).commands_per_s for r in s], "x", color=colors[b], ms=8,
                       label=f"{b} model at the run's own offered load")
                base = s[0]
                total = base["scenario"]["nodes"] * base["scenario"]["node_rate"]
                grid = sorted({1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 1000} | set(xs))
                total = base["scenario"]["nodes"] * base["scenario"]["node_rate"]
                a.plot(grid, [predict(replace(from_run(base), nodes=n, node_rate=total / n), b, p).commands_per_s
                              for n in grid], "-", color=colors[b], label=f"{b} model, scheduled load")
            if group:
                sc = group[0]["scenario"]
                a.set_title(f"{title}: {sc['nodes'] * sc['node_rate']:,.0f}/s offered, "
                            f"{sc['capacity']} + {sc['rate']:g}/s allowed", fontsize=9)
            a.set_xscale("log")
            a.set_yscale("log")
            a.set_xlabel("nodes sharing the key")
            a.set_ylabel("Redis commands/s")
            a.grid(True, alpha=0.3, which="both")
            a.legend(fontsize=8)
        fig.tight_layout()
        made.append(_save(fig, outdir / "scaling-hotkey.png"))

    # 3. Every run: predicted against measured, and admission.
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    for b in ("plain", "batched"):
        s = [r for r in rows if r["scenario"]["backend"] == b]
        a1.plot([measured_cmds(r) for r in s], [model_of(r, p).commands_per_s for r in s], "o",
                color=colors[b], label=b, alpha=0.8)
        a2.plot([100 - model_of(r, p).under_pct for r in s],
                [100 * r["admitted"] / max(r["ideal"], 1) for r in s], "o", color=colors[b], label=b, alpha=0.8)
    lo = min(measured_cmds(r) for r in rows) / 1.5
    hi = max(measured_cmds(r) for r in rows) * 1.5
    a1.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    a1.set_xscale("log")
    a1.set_yscale("log")
    from matplotlib.ticker import NullFormatter

    a1.xaxis.set_minor_formatter(NullFormatter())
    a1.yaxis.set_minor_formatter(NullFormatter())
    a1.set_xlabel("measured Redis commands/s")
    a1.set_ylabel("model")
    a1.set_title("Redis load: model against every run", fontsize=9)
    a2.plot([97, 100.5], [97, 100.5], "k--", lw=0.8)
    a2.set_xlabel("model: admitted, % of what an exact limiter admits")
    a2.set_ylabel("measured: admitted, % of the exact replay")
    a2.set_title("Admission against one exact limiter fed the same arrivals\n"
                 "(plain is exact by construction: its spread is the simulation's timing noise)", fontsize=8)
    for a in (a1, a2):
        a.grid(True, alpha=0.3, which="both")
        a.legend(fontsize=8)
    fig.tight_layout()
    made.append(_save(fig, outdir / "scaling-model.png"))
    return made


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", default=str(ROOT / "bench" / "results" / "fleet.json"))
    parser.add_argument("--img", default=str(ROOT / "docs" / "img"))
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    rows: List[Row] = json.loads(Path(args.runs).read_text())
    p = fit(rows)
    print(tables(rows, p))
    print()
    print(examples(p, 11.0))
    if not args.no_plots:
        for path in plots(rows, p, Path(args.img)):
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
