"""guardian: a distributed rate limiter for Python services.

>>> from guardian import RateLimiter, MemoryBackend, TokenBucketConfig
>>> limiter = RateLimiter(MemoryBackend(TokenBucketConfig(capacity=100, refill_rate=10)))
>>> limiter.check_limit("client-42").allowed
True
"""

from ._config import Limits, TokenBucketConfig
from ._errors import (
    ArgumentTypeError,
    BackendConfigError,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidArgumentError,
    MisuseError,
    RateLimitError,
    RateLimitExceeded,
    SharedTableError,
)
from ._impl import USING_C as _USING_C
from ._region import MAX_KEY_BYTES
from ._result import LimitResult
from .backends.memory import MemoryBackend
from .limiter import AsyncRateLimiter, RateLimiter

__version__ = "0.1.0"

#: "c" when the compiled core is in use, "python" for the pure-Python twin.
CORE = "c" if _USING_C else "python"

__all__ = [
    "TokenBucketConfig",
    "Limits",
    "LimitResult",
    "RateLimiter",
    "AsyncRateLimiter",
    "MemoryBackend",
    "RateLimitError",
    "ConfigurationError",
    "InvalidArgumentError",
    "ArgumentTypeError",
    "MisuseError",
    "SharedTableError",
    "BackendError",
    "BackendUnavailableError",
    "BackendTimeoutError",
    "BackendConfigError",
    "RateLimitExceeded",
    "MAX_KEY_BYTES",
    "CORE",
]
