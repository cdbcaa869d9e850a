"""The sidecar example of tests/integration/test_examples.py again, on
``guardian serve --engine native`` (only that test: the others start no
sidecar). The autouse fixture native_engine sets GUARDIAN_ENGINE=native
before the server starts (Sidecar copies the environment when made).
"""

from native_engine import native_engine, native_module  # noqa: F401 - native_engine is autouse

native_module()

from test_examples import test_sidecar_client  # noqa: E402,F401
