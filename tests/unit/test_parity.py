"""The C core, its pure-Python twin and the stub expose one API.

``_impl`` takes ``Table``, ``LimitResult`` and ``unlink`` from one twin;
code above it (and type checkers, which read ``_core.pyi`` and the twin)
must not be able to tell which. So the three must list the same public
names, each class the same public members, and every callable the same
parameters (names, kinds and defaults). Behaviour is held equal elsewhere
(test_twins.py, the shared GCRA cases).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional, Tuple

import pytest

from guardian import _impl, _pycore

_core: Optional[ModuleType] = None if _impl.NO_EXTENSIONS else pytest.importorskip("guardian._core")
PYI = Path(_pycore.__file__).with_name("_core.pyi")

#: A parameter: (name, kind, default as source text or None).
Param = Tuple[str, str, Optional[str]]
#: A module's API: name -> "constant", a parameter list, or a class's
#: members (name -> "attribute" or a parameter list).
Api = Dict[str, Any]

_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: "positional",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "any",
    inspect.Parameter.KEYWORD_ONLY: "keyword",
    inspect.Parameter.VAR_POSITIONAL: "*args",
    inspect.Parameter.VAR_KEYWORD: "**kwargs",
}


def _public(name: str) -> bool:
    return not name.startswith("_") or name == "__init__"


# --- the stub, read with ast -------------------------------------------------


def _stub_params(fn: ast.FunctionDef) -> List[Param]:
    a = fn.args
    positional = a.posonlyargs + a.args
    defaults: List[Optional[ast.expr]] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    out: List[Param] = []
    for i, (arg, default) in enumerate(zip(positional, defaults)):
        kind = "positional" if i < len(a.posonlyargs) else "any"
        out.append((arg.arg, kind, None if default is None else ast.unparse(default)))
    if a.vararg:
        out.append((a.vararg.arg, "*args", None))
    for arg, kw_default in zip(a.kwonlyargs, a.kw_defaults):
        out.append((arg.arg, "keyword", None if kw_default is None else ast.unparse(kw_default)))
    if a.kwarg:
        out.append((a.kwarg.arg, "**kwargs", None))
    return [p for p in out if p[0] != "self"]


def stub_api(source: str) -> Api:
    api: Api = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and _public(node.name):
            members: Api = {}
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and _public(item.name):
                    members[item.name] = _stub_params(item)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members[item.target.id] = "attribute"
            api[node.name] = members
        elif isinstance(node, ast.FunctionDef) and _public(node.name):
            api[node.name] = _stub_params(node)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and _public(node.target.id):
            api[node.target.id] = "constant"
    return api


# --- a module, inspected -----------------------------------------------------

_C_PARAM = re.compile(r"(?:[\w ]+\s)?(\w+)(?:=(.*))?")


def _embedded_init(cls: type) -> List[Param]:
    """A Cython class's constructor parameters, from the signature that
    ``embedsignature`` writes as the first line of its docstring (C types
    dropped): inspect only sees ``*args, **kwargs`` there."""
    first = (cls.__doc__ or "").split("\n", 1)[0]
    match = re.fullmatch(rf"{cls.__name__}\((.*)\)", first)
    assert match, f"{cls.__name__} has no embedded signature: {first!r}"
    out: List[Param] = []
    for part in filter(None, (p.strip() for p in match.group(1).split(","))):
        m = _C_PARAM.fullmatch(part)
        assert m, part
        out.append((m.group(1), "any", m.group(2)))
    return out


def _params(fn: Any, owner: Optional[type] = None) -> List[Param]:
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    if owner is not None and fn is owner.__init__ and [p.kind for p in params[1:]] == [
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]:
        return _embedded_init(owner)
    return [
        (p.name, _KINDS[p.kind], None if p.default is inspect.Parameter.empty else repr(p.default))
        for p in params if p.name != "self"
    ]


def _instance(cls: type) -> Any:
    """One live object of a core class, so instance attributes show."""
    if cls.__name__ == "Table":
        return cls(1, 1, 1, slots=8)
    if cls.__name__ == "BucketReading":
        return cls(7, 70, 1_000_000, 10)
    return cls(True, 0, 0.0, 0.0, 1)


def module_api(module: ModuleType) -> Api:
    api: Api = {}
    for name in module.__all__:
        obj = getattr(module, name)  # a name listed but missing fails here
        if isinstance(obj, type):
            instance = _instance(obj)
            members: Api = {}
            for member in dir(instance):
                if not _public(member):
                    continue
                value = getattr(obj, member, None)
                if member == "__init__":
                    members[member] = _params(obj.__init__, obj)
                elif callable(getattr(instance, member)):
                    members[member] = _params(value)
                else:
                    members[member] = "attribute"
            api[name] = members
        elif callable(obj):
            api[name] = _params(obj)
        else:
            api[name] = "constant"
    return api


# --- the tests ---------------------------------------------------------------


def _diff(a: Api, b: Api) -> List[str]:
    out = [f"only in the first: {n}" for n in sorted(a.keys() - b.keys())]
    out += [f"only in the second: {n}" for n in sorted(b.keys() - a.keys())]
    for n in sorted(a.keys() & b.keys()):
        if isinstance(a[n], dict) and isinstance(b[n], dict):
            out += [f"{n}.{d}" for d in _diff(a[n], b[n])]
        elif a[n] != b[n]:
            out.append(f"{n}: {a[n]} != {b[n]}")
    return out


def test_the_python_twin_matches_the_stub() -> None:
    assert _diff(module_api(_pycore), stub_api(PYI.read_text())) == []


@pytest.mark.skipif(_core is None, reason="the C core is not built")
def test_the_c_core_matches_the_stub() -> None:
    assert _core is not None
    assert _diff(module_api(_core), stub_api(PYI.read_text())) == []


@pytest.mark.skipif(_core is None, reason="the C core is not built")
def test_the_twins_match_each_other() -> None:
    assert _core is not None
    assert _diff(module_api(_core), module_api(_pycore)) == []


def test_the_selector_takes_every_name_from_one_twin() -> None:
    twin = _pycore if not _impl.USING_C else _core
    for name in ("Table", "LimitResult", "unlink", "take_all", "take_all_result", "try_take_all"):
        assert getattr(_impl, name) is getattr(twin, name), name


def test_the_checker_sees_a_missing_name_or_a_changed_parameter() -> None:
    """The comparison itself can fail: a stub that lost a method, renamed a
    parameter or changed a default differs from the twin."""
    source = PYI.read_text()
    twin = module_api(_pycore)
    assert _diff(twin, stub_api(source.replace("    def peek(", "    def _gone("))) == [
        "Table.only in the first: peek"]
    assert _diff(twin, stub_api(source.replace("def unlink(name: str)", "def unlink(label: str)")))
    assert _diff(twin, stub_api(source.replace("def try_acquire(self, key: str, cost: int = 1)",
                                               "def try_acquire(self, key: str, cost: int = 2)")))
    assert _diff(twin, stub_api(source.replace("MAX_KEY_BYTES: int\n", "")))


@pytest.mark.parametrize("no_extensions", ["0", "1"])
def test_one_result_type_per_process(no_extensions: str) -> None:
    """Whichever core a process runs, every path answers with one
    LimitResult type: the façade's, the memory backend's, the core's."""
    import os
    import subprocess
    import sys

    code = (
        "import guardian\n"
        "from guardian import _impl, _result, MemoryBackend, RateLimiter, TokenBucketConfig\n"
        "b = MemoryBackend(TokenBucketConfig(2, 1))\n"
        "kinds = {type(b.take('k')), type(b.peek('k')), type(b.take_many(['k'])[0]),\n"
        "         type(RateLimiter(b).check_limit('k')), type(b.table.check_result('k'))}\n"
        "assert kinds == {guardian.LimitResult} and guardian.LimitResult is _impl.LimitResult, kinds\n"
        "print(guardian.CORE)\n"
    )
    env = {**os.environ, "GUARDIAN_NO_EXTENSIONS": no_extensions}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    if no_extensions == "1":
        assert out.stdout.strip() == "python"
