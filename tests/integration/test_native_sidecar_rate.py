"""tests/integration/test_sidecar_rate.py again, on ``guardian serve --engine native``.

Its tests are imported, so pytest collects them a second time here, where
the autouse fixture native_engine sets GUARDIAN_ENGINE=native before any
server of this module starts (Sidecar copies the environment when made).
"""

from native_engine import native_engine, native_module  # noqa: F401 - native_engine is autouse

native_module()

from test_sidecar_rate import *  # noqa: E402,F401,F403
