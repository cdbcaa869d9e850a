"""The wheel, as users get it: `python -m build` makes the sdist and then a
wheel from that sdist (proving the sdist is complete); the wheel installs
into a fresh venv and imports the compiled core, not the fallback, and the
Lua scripts from the installed package."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent("""
    import sys, guardian
    from guardian.backends import _redis_scripts
    assert guardian.CORE == "c", guardian.CORE
    assert "site-packages" in guardian.__file__, guardian.__file__
    scripts = _redis_scripts.scripts()
    assert set(scripts) == set(_redis_scripts.SCRIPT_NAMES), scripts
    assert all("redis.call" in _redis_scripts.read_source(n) for n in _redis_scripts.SCRIPT_NAMES)
    print("ok", guardian.CORE, guardian.__file__)
""")


@pytest.mark.slow
def test_wheel_from_sdist_installs_with_the_c_core(tmp_path: Path) -> None:
    pytest.importorskip("build")
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    assert "Building wheel from sdist" in built.stdout + built.stderr  # not from the source tree
    names = subprocess.run([sys.executable, "-m", "zipfile", "-l", str(wheel)], capture_output=True,
                           text=True, check=True).stdout
    assert "guardian/_core." in names and "guardian/lua/take.lua" in names
    assert "_core.c\n" not in names.replace(" ", "\n") and "_core.pyx" not in names  # no C or Cython sources
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=120)
    out = subprocess.run([str(py), "-c", CHECK], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("ok c ")
