#!/usr/bin/env python
"""Run the memory benchmarks and print their medians as Markdown tables.

    python bench/report.py                     # run pytest, then report
    python bench/report.py --json FILE         # report an existing --benchmark-json
    python bench/report.py -- -k "guardian"    # extra pytest arguments after --

For each group (key shape): median ns per check (a round's median divided
by the checks in the round), the ratio to the hash+CAS floor and to
guardian's try_acquire on a local table, and how busy the machine was with
other work meanwhile; then the issue's targets.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "bench" / "build" / "memory.json"
FLOOR = "floor-hash-cas"
GUARDIAN = "guardian-try_acquire-local"
PEERS = ("limits", "pyrate-limiter", "throttled-py", "token-bucket")


def run_benchmarks(json_path: Path, extra: List[str]) -> int:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pytest", "bench/", "--benchmark-only",
        f"--benchmark-json={json_path}", "-q", *extra,
    ]
    print("$", " ".join(cmd), file=sys.stderr)
    if json_path.exists():
        json_path.unlink()
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code != 0:
        print(f"pytest exited with {code}; reporting what was measured", file=sys.stderr)
    return code


def load(json_path: Path) -> Tuple[Dict[str, Dict[str, float]], Dict[str, float]]:
    """({group: {subject: median ns per check}}, {group/subject: other load})"""
    data = json.loads(json_path.read_text())
    groups: Dict[str, Dict[str, float]] = {}
    load: Dict[str, float] = {}
    for b in data["benchmarks"]:
        calls = b["extra_info"]["calls"]
        name = b["param"] or b["name"]
        groups.setdefault(b["group"], {})[name] = b["stats"]["median"] / calls * 1e9
        load[f"{b['group']}/{name}"] = b["extra_info"].get("other_load", float("nan"))
    return groups, load


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def table(group: str, ns: Dict[str, float], load: Dict[str, float]) -> List[str]:
    floor, guardian = ns.get(FLOOR, 0.0), ns.get(GUARDIAN, 0.0)
    lines = [
        "| subject | median ns/check | vs floor (hash+CAS) | vs guardian try_acquire local | other load |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, value in sorted(ns.items(), key=lambda kv: kv[1]):
        bold = "**" if name == GUARDIAN else ""
        other = load.get(f"{group}/{name}", float("nan"))
        lines.append(
            f"| {bold}{name}{bold} | {value:,.1f} | {_ratio(value, floor)} "
            f"| {_ratio(value, guardian)} | {100 * other:.0f}% |"
        )
    return lines


def targets(groups: Dict[str, Dict[str, float]]) -> List[str]:
    lines = [
        "| key shape | target | measured | met |",
        "|---|---|---:|:---:|",
    ]
    for group, ns in groups.items():
        g = ns.get(GUARDIAN)
        if not g:
            continue
        checks = []
        if FLOOR in ns:
            checks.append(("try_acquire local <= 2.5x the hash+CAS floor", g / ns[FLOOR], g / ns[FLOOR] <= 2.5))
        if "token-bucket" in ns:
            r = ns["token-bucket"] / g
            checks.append(("at least 5x faster than token-bucket", r, r >= 5))
        lim = {k: v for k, v in ns.items() if k.startswith("limits-")}
        if lim:
            worst = min(lim, key=lim.get)
            r = lim[worst] / g
            checks.append((f"at least 30x faster than every limits strategy (closest: {worst[7:]})", r, r >= 30))
        for what, value, ok in checks:
            lines.append(f"| {group} | {what} | {value:.2f}x | {'yes' if ok else '**no**'} |")
    return lines


def versions() -> str:
    parts = [f"Python {platform.python_version()}"]
    try:
        import guardian

        parts.append(f"guardian {guardian.__version__} (core: {guardian.CORE})")
    except ImportError:  # pragma: no cover
        pass
    for dist in PEERS:
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    return ", ".join(parts)


def main(argv: List[str]) -> int:
    extra: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="report this --benchmark-json file instead of running")
    args = parser.parse_args(argv)
    path, code = args.json, 0
    if path is None:
        path = DEFAULT_JSON
        code = run_benchmarks(path, extra)
    groups, other = load(path)
    out = [versions(), ""]
    for group, ns in groups.items():
        out += [f"### {group}", "", *table(group, ns, other), ""]
    out += ["other load: share of all CPUs' time used by other processes while the "
            "subject was measured (noise on a shared machine).", ""]
    out += ["### targets", "", *targets(groups)]
    print("\n".join(out))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
