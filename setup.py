"""Builds guardian._core. Everything else is in pyproject.toml.

GUARDIAN_NO_EXTENSIONS=1  build no extension (the pure-Python core is used)
GUARDIAN_DEBUG=1          -O0 -g and line tracing
GUARDIAN_WERROR=1         warnings are errors (CI)
"""

import os
import sys

from setuptools import setup

NO_EXTENSIONS = os.environ.get("GUARDIAN_NO_EXTENSIONS", "") not in ("", "0")
DEBUG = os.environ.get("GUARDIAN_DEBUG", "") not in ("", "0")
WERROR = os.environ.get("GUARDIAN_WERROR", "") not in ("", "0")


def extensions():
    if NO_EXTENSIONS or sys.implementation.name != "cpython":
        print("guardian: building WITHOUT the C core (pure-Python fallback)")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:  # acceleration was asked for: say so, don't fall back
        raise SystemExit(
            "guardian: Cython is required to build the C core "
            "(pip install Cython, or set GUARDIAN_NO_EXTENSIONS=1)"
        ) from exc
    from setuptools import Extension

    flags = ["-O0", "-g"] if DEBUG else ["-O3"]
    flags += ["-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
    if WERROR:
        flags.append("-Werror")
    macros = [("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []
    ext = Extension(
        "guardian._core",
        ["src/guardian/_core.pyx"],
        include_dirs=["src/guardian"],
        extra_compile_args=flags,
        define_macros=macros,
        depends=["src/guardian/_atomic.h", "src/guardian/_siphash.h", "src/guardian/_table.h"],
    )
    # Bounds and wraparound checks stay on (Cython's default): _core.pyx
    # turns them off per function, where the indexes were checked at the
    # boundary (STYLE.md). A debug build only adds line tracing.
    directives = {
        "language_level": 3,
        "embedsignature": True,
        "linetrace": DEBUG,
    }
    print(f"guardian: building the C core ({'debug' if DEBUG else 'release'})")
    return cythonize([ext], compiler_directives=directives)


setup(ext_modules=extensions())
