"""Type stubs for guardian._core (the C slot table); _pycore has the same API."""

from typing import Callable, Iterable, List, Optional, Tuple

MAX_KEY_BYTES: int

Result = Tuple[bool, int, float, float]

class LimitResult:
    """The decision for one check; see guardian._result.PyLimitResult."""

    allowed: bool
    remaining: int
    retry_after: float
    reset_after: float
    limit: int

    def __init__(self, allowed: bool, remaining: int, retry_after: float, reset_after: float,
                 limit: int) -> None: ...
    def is_allowed(self) -> bool: ...
    def __bool__(self) -> bool: ...

class Table:
    """A GCRA slot table for one limit; see _core.pyx for the slot protocol."""

    capacity: int
    slots: int
    name: Optional[str]
    spends: int

    def __init__(
        self,
        capacity: int,
        emission_ticks: int,
        ticks_per_ns: int,
        slots: Optional[int] = None,
        name: Optional[str] = None,
        clock: Optional[Callable[[], int]] = None,
        seed: Optional[bytes] = None,
    ) -> None: ...
    def try_acquire(self, key: str, cost: int = 1) -> bool: ...
    def check(self, key: str, cost: int = 1) -> Result: ...
    def check_result(self, key: str, cost: int = 1) -> LimitResult: ...
    def check_many(self, keys: Iterable[str], cost: int = 1) -> List[Result]: ...
    def usage(self, key: str) -> int: ...
    def reset(self, key: str) -> None: ...
    def spend(self, key: str, cost: int = 1) -> int: ...
    def drain(self, key: str) -> int: ...
    def stats(self) -> dict[str, int]: ...  # slots, full, reclaims (the table's); allowed, denied (this object's takes)
    def close(self) -> None: ...

def unlink(name: str) -> bool: ...
def siphash13(k0: int, k1: int, data: bytes) -> int: ...
def _self_pid() -> int: ...
