"""Builds and imports bench/_floor.pyx (the floors), for conftest.py and
shm_scaling.py. The result, bench/_floor*.so and bench/build/, is
git-ignored; it is rebuilt when _floor.pyx or guardian's _siphash.h changes."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
GUARDIAN_SRC = HERE.parent / "src" / "guardian"


def build_floor() -> ModuleType:
    """Import bench/_floor, compiling it first when missing or stale."""
    sources = [HERE / "_floor.pyx", GUARDIAN_SRC / "_siphash.h"]
    built = sorted(HERE.glob("_floor*.so"))
    if not built or any(s.stat().st_mtime > built[-1].stat().st_mtime for s in sources):
        _compile()
    return _import()


def _compile() -> None:
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    ext = Extension(
        "_floor",
        [str(HERE / "_floor.pyx")],
        include_dirs=[str(GUARDIAN_SRC)],
        # guardian's release flags (setup.py), so the floor is as optimised.
        extra_compile_args=["-O3", "-Wall", "-Wno-unused-function"],
        depends=[str(GUARDIAN_SRC / "_siphash.h")],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setuptools' own deprecation chatter
        dist = Distribution(
            {"ext_modules": cythonize([ext], build_dir=str(HERE / "build"), quiet=True)}
        )
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib = str(HERE)  # lands as bench/_floor*.so
        cmd.build_temp = str(HERE / "build" / "temp")
        cmd.force = True
        cmd.ensure_finalized()
        cmd.run()


def _import() -> ModuleType:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    sys.modules.pop("_floor", None)
    importlib.invalidate_caches()
    return importlib.import_module("_floor")


if __name__ == "__main__":
    print(build_floor().__file__)
