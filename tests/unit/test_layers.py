"""ARCHITECTURE.md's "never"s, checked on the source by walking imports.

"A layer imports only the layers below it. The core knows nothing of Redis,
asyncio or Python logging; backends know nothing of gRPC or HTTP", the
façade knows nothing of the sidecar, nothing below the sidecar imports it,
and guardian's modules import each other without a cycle. Every import
counts, at any depth of a module (a lazy import inside a function is still
a dependency); only the cycle check skips ``if TYPE_CHECKING:`` blocks,
which never run. A module added to the package must be given a layer here.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "guardian"

#: Layers, lowest first. A module may import its own layer and those below.
LAYERS = ["protocol", "core", "backends", "facade", "callers", "server"]

#: Module (or package prefix, ending in ".") -> layer. The longest match wins.
PLACES = {
    # Generated gRPC messages: plain data, import no other guardian module.
    "guardian.v1.": "protocol",
    "guardian.v1": "protocol",
    "guardian._errors": "core",
    "guardian._region": "core",
    "guardian._args": "core",
    "guardian._config": "core",
    "guardian._core": "core",
    "guardian._pycore": "core",
    "guardian._impl": "core",
    "guardian._result": "core",
    "guardian.backends.": "backends",
    "guardian.backends": "backends",
    "guardian": "facade",  # the package: `from guardian import RateLimiter`
    "guardian.limiter": "facade",
    "guardian._breaker": "facade",
    # Middleware, the decorator's HTTP helpers, the sidecar's client.
    "guardian.http": "callers",
    "guardian.asgi": "callers",
    "guardian.wsgi": "callers",
    "guardian.grpc": "callers",
    "guardian._routers": "callers",
    "guardian.starlette": "callers",
    "guardian.fastapi": "callers",
    "guardian.flask": "callers",
    "guardian.django": "callers",
    "guardian.client": "callers",
    "guardian.server.": "server",
    "guardian.server": "server",
    "guardian.__main__": "server",
    "guardian._tables_cli": "server",
    # The sidecar's native data plane (docs/native.md): only guardian.server.native loads it.
    "guardian._native": "server",
}

#: Third-party and standard modules a layer must never import (top-level names).
NEVER = {
    "core": {"asyncio", "logging", "redis", "hiredis", "grpc", "grpc_health", "grpc_reflection",
             "google", "envoy", "yaml", "prometheus_client", "socket"},
    "backends": {"grpc", "grpc_health", "grpc_reflection", "google", "envoy", "yaml",
                 "prometheus_client", "http", "wsgiref"},
    "facade": {"grpc", "grpc_health", "grpc_reflection", "google", "envoy", "yaml",
               "prometheus_client", "redis", "hiredis"},
    "callers": {"redis", "hiredis", "yaml", "prometheus_client"},
    "protocol": set(),
    "server": set(),
}

#: Cycles another branch is removing (issue 9 item 4); listed so that this
#: test guards everything else meanwhile. Drop an entry once it is gone.
KNOWN_CYCLES: Set[frozenset] = set()


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # a guardian module, or a top-level external name
    line: int
    type_only: bool  # inside `if TYPE_CHECKING:`
    internal: bool


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _pyx_tree(source: str) -> ast.Module:
    """A Cython file's Python imports (not cimports), as Python."""
    lines = [ln.strip() if re.match(r"\s*(from\s+\S+\s+import\s|import\s)", ln) else ""
             for ln in source.splitlines()]
    return ast.parse("\n".join(lines))


def _type_checking_lines(tree: ast.Module) -> Set[int]:
    out: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                for sub in ast.walk(child):
                    if hasattr(sub, "lineno"):
                        out.add(sub.lineno)
    return out


def imports(name: str, source: str, is_package: bool, modules: Set[str], pyx: bool = False) -> Iterator[Import]:
    tree = _pyx_tree(source) if pyx else ast.parse(source)
    typed = _type_checking_lines(tree)
    here = name if is_package else name.rpartition(".")[0]

    def edge(target: str, node: ast.stmt) -> Import:
        internal = target == PACKAGE or target.startswith(PACKAGE + ".")
        return Import(name, target if internal else target.split(".")[0], node.lineno,
                      node.lineno in typed, internal)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield edge(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.module == "__future__":
                continue
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                yield edge(sub if sub in modules else origin, node)


def layer_of(module: str) -> Optional[str]:
    best = None
    for place, layer in PLACES.items():
        if module == place or (place.endswith(".") and module.startswith(place)):
            if best is None or len(place) > len(best[0]):
                best = (place, layer)
    return best[1] if best else None


def collect(root: Path = SRC) -> Tuple[Dict[str, List[Import]], Set[str]]:
    files = {module_name(p, root): p for p in (root / PACKAGE).rglob("*") if p.suffix in (".py", ".pyx")}
    modules = set(files)
    found = {}
    for name, path in files.items():
        found[name] = list(imports(name, path.read_text(), path.stem == "__init__", modules,
                                   pyx=path.suffix == ".pyx"))
    return found, modules


def violations(found: Dict[str, List[Import]]) -> List[str]:
    out = []
    for name, edges in sorted(found.items()):
        layer = layer_of(name)
        if layer is None:
            out.append(f"{name} has no layer: give it one in tests/unit/test_layers.py")
            continue
        for e in edges:
            where = f"{name}:{e.line}"
            if e.internal:
                target_layer = layer_of(e.target)
                if target_layer is None:
                    out.append(f"{where} imports {e.target}, which has no layer")
                elif LAYERS.index(target_layer) > LAYERS.index(layer):
                    out.append(f"{where} ({layer}) imports {e.target} ({target_layer}), a layer above it")
                elif layer == "protocol" and not e.target.startswith("guardian.v1"):
                    out.append(f"{where} (protocol) imports {e.target}")
            elif e.target in NEVER[layer]:
                out.append(f"{where} ({layer}) imports {e.target}, which ARCHITECTURE.md rules out")
    return out


def cycles(found: Dict[str, List[Import]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {n: sorted({e.target for e in es if e.internal and not e.type_only and e.target != n})
             for n, es in found.items()}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# --- the package as it is ----------------------------------------------------


def test_every_import_respects_the_layers() -> None:
    found, _ = collect()
    assert len(found) > 30  # the walk really saw the package
    assert violations(found) == []


def test_guardian_modules_import_each_other_without_a_cycle() -> None:
    found, _ = collect()
    unexpected = [c for c in cycles(found) if frozenset(c) not in KNOWN_CYCLES]
    assert unexpected == []


def test_nothing_below_the_sidecar_imports_it() -> None:
    found, _ = collect()
    bad = [f"{e.source}:{e.line}" for es in found.values() for e in es
           if e.internal and e.target.startswith("guardian.server") and layer_of(e.source) != "server"]
    assert bad == []


# --- the checker can fail ----------------------------------------------------


def _with(planted: Dict[str, str]) -> Dict[str, List[Import]]:
    """The package's imports with some modules' sources replaced."""
    found, modules = collect()
    for name, source in planted.items():
        path = SRC / (name.replace(".", "/") + ".py")
        found[name] = list(imports(name, source, path.stem == "__init__", modules))
    return found


@pytest.mark.parametrize("module, source, expected", [
    ("guardian._region", "import logging\n", "(core) imports logging"),
    ("guardian._pycore", "def f():\n    import asyncio\n", "(core) imports asyncio"),
    ("guardian._impl", "from .backends import memory\n", "imports guardian.backends.memory (backends)"),
    ("guardian._result", "from . import limiter\n", "imports guardian.limiter (facade)"),
    ("guardian.backends.memory", "import grpc\n", "(backends) imports grpc"),
    ("guardian.backends.redis", "from ..http import Plan\n", "imports guardian.http (callers)"),
    ("guardian.backends._lease", "from ..server import policy\n", "imports guardian.server.policy (server)"),
    ("guardian.limiter", "from .server.buckets import Buckets\n", "imports guardian.server.buckets (server)"),
    ("guardian.limiter", "from . import asgi\n", "imports guardian.asgi (callers)"),
    ("guardian.asgi", "import redis\n", "(callers) imports redis"),
    ("guardian.wsgi", "from guardian.server import app\n", "imports guardian.server.app (server)"),
    ("guardian.v1.guardian_pb2", "from guardian import _config\n", "(protocol) imports guardian._config"),
])
def test_a_forbidden_import_planted_on_purpose_is_caught(module: str, source: str, expected: str) -> None:
    assert any(expected in v for v in violations(_with({module: source}))), expected


def test_a_planted_cycle_and_an_unplaced_module_are_caught() -> None:
    found = _with({"guardian._args": "from . import _impl\n", "guardian._impl": "from . import _args\n"})
    assert ["guardian._args", "guardian._impl"] in cycles(found)
    found = _with({"guardian._impl": "if TYPE_CHECKING:\n    from . import _args\n",
                   "guardian._args": "from . import _impl\n"})
    assert ["guardian._args", "guardian._impl"] not in cycles(found)  # a type-only import never runs
    found["guardian.newmodule"] = []
    assert "guardian.newmodule has no layer: give it one in tests/unit/test_layers.py" in violations(found)


def test_relative_and_cython_imports_resolve_to_modules() -> None:
    found, _ = collect()
    targets = {e.target for e in found["guardian._core"]}
    assert {"guardian._region", "guardian._errors"} <= targets and "cython" not in targets  # cimports skipped
    assert "guardian._impl" in {e.target for e in found["guardian.backends.memory"]}  # from .. import _impl
    assert "guardian" in {e.target for e in found["guardian.server.buckets"]}  # from .. import MemoryBackend
