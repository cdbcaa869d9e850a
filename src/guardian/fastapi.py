"""FastAPI is Starlette underneath: the same dependency, exception and
handler as guardian.starlette (see there)."""

from .starlette import RateLimit, TooManyRequests, rate_limit_exceeded_handler, starlette_template

__all__ = ["RateLimit", "TooManyRequests", "rate_limit_exceeded_handler", "starlette_template"]
