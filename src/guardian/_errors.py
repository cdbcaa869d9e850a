"""guardian's exceptions: one root, grouped by who is at fault.

Argument and configuration errors also derive from ``ValueError`` or
``TypeError`` so callers that catch the builtins keep working; backend
failures also derive from ``ConnectionError`` / ``TimeoutError``.
A denied request is a result, never an exception; only the raising helpers
turn a denial into :class:`RateLimitExceeded`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "RateLimitError",
    "ConfigurationError",
    "InvalidArgumentError",
    "ArgumentTypeError",
    "SharedTableError",
    "BackendError",
    "BackendUnavailableError",
    "BackendTimeoutError",
    "BackendConfigError",
    "MisuseError",
    "RateLimitExceeded",
]


class RateLimitError(Exception):
    """Root of every exception guardian raises."""


# --- the caller's fault: raised at once, no state changed -------------------


class ConfigurationError(RateLimitError, ValueError):
    """A limit or backend was configured with values that cannot work."""


class InvalidArgumentError(RateLimitError, ValueError):
    """A key or cost has a value guardian does not accept."""


class ArgumentTypeError(RateLimitError, TypeError):
    """A key or cost has a type guardian does not accept."""


class MisuseError(ConfigurationError, TypeError):
    """An object of the wrong kind, or an unknown option, was passed."""


class SharedTableError(ConfigurationError):
    """A named shared-memory table is missing, incompatible or corrupt."""


# --- the backend's fault: handled by the limiter's failure policy ----------


class BackendError(RateLimitError):
    """A backend could not make a decision."""


class BackendUnavailableError(BackendError, ConnectionError):
    """The backend could not be reached."""


class BackendTimeoutError(BackendError, TimeoutError):
    """The backend did not answer in time."""


class BackendConfigError(BackendError):
    """The backend refused guardian's credentials or permissions: a
    configuration error, not an outage."""


# --- raised only by helpers that turn a denial into an exception -----------


class RateLimitExceeded(RateLimitError):
    """A call was denied; ``result`` says when to retry."""

    def __init__(self, result: Any) -> None:
        super().__init__(
            f"rate limit exceeded; retry after {result.retry_after:.3f}s"
        )
        self.result = result
