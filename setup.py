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
        depends=["src/guardian/_atomic.h", "src/guardian/_siphash.h", "src/guardian/_table.h",
                 "src/guardian/_since.h"],
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
    return cythonize([ext, *native_extensions(Extension, WERROR)], compiler_directives=directives)


# --- native data plane (issue 14; owned by the native helper) ----------------
# guardian._native: `guardian serve --engine native`. Optional: built only when
# pkg-config finds libnghttp2; GUARDIAN_EXPECT_NATIVE=1 makes its absence an
# error; GUARDIAN_NO_NATIVE=1 skips it. Its flags are its own, so the core's
# build above is unchanged.
def native_extensions(Extension, werror):
    import shutil
    import subprocess

    expect = os.environ.get("GUARDIAN_EXPECT_NATIVE", "") not in ("", "0")
    if os.environ.get("GUARDIAN_NO_NATIVE", "") not in ("", "0") or not sys.platform.startswith("linux"):
        if expect:
            raise SystemExit("guardian: GUARDIAN_EXPECT_NATIVE=1 but the native data plane is disabled here")
        return []

    def pkg(*args):
        if shutil.which("pkg-config") is None:
            return None
        done = subprocess.run(["pkg-config", *args, "libnghttp2"], capture_output=True, text=True)
        return done.stdout.split() if done.returncode == 0 else None

    cflags, libs = pkg("--cflags"), pkg("--libs")
    if cflags is None or libs is None:
        msg = "guardian: libnghttp2 not found by pkg-config (Debian: libnghttp2-dev)"
        if expect:
            raise SystemExit(msg + "; GUARDIAN_EXPECT_NATIVE=1 needs it")
        print(msg + ": building WITHOUT the native data plane")
        return []
    flags = ["-O0", "-g"] if DEBUG else ["-O2"]
    flags += ["-Wall", "-Wno-unused-function", "-Wno-deprecated-declarations", "-pthread", *cflags]
    if werror:
        flags.append("-Werror")
    dp = "src/guardian/_dataplane"
    print("guardian: building the native data plane (libnghttp2)")
    return [Extension(
        "guardian._native",
        ["src/guardian/_native.pyx", f"{dp}/pb.c", f"{dp}/policy.c", f"{dp}/server.c", f"{dp}/lease.c"],
        include_dirs=["src/guardian"],
        extra_compile_args=flags,
        extra_link_args=["-pthread", *libs],
        depends=[f"{dp}/{h}" for h in ("core_api.h", "pb.h", "policy.h", "server.h", "lease.h")],
    )]
# --- end native data plane ---------------------------------------------------


setup(ext_modules=extensions())
