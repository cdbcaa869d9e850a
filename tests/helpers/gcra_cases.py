"""Hand-computed GCRA cases, the one set every implementation is held to
(the C core and the Python core now; the Redis Lua scripts use the same).

Each case: a config (capacity, refill_rate, refill_interval) and steps of
(at_seconds, op, key, cost, expected). ``take`` expects
(allowed, remaining, retry_after_s, reset_after_s); ``usage`` expects an int.
"""

CASES = {
    "burst_then_refill": (
        (3, 1, 1.0),
        [
            (0.0, "take", "k", 1, (True, 2, 0.0, 1.0)),
            (0.0, "take", "k", 2, (True, 0, 0.0, 3.0)),
            (0.0, "take", "k", 1, (False, 0, 1.0, 3.0)),
            (0.5, "take", "k", 1, (False, 0, 0.5, 2.5)),
            (0.5, "usage", "k", 1, 3),
            (1.0, "take", "k", 1, (True, 0, 0.0, 3.0)),
            (3.0, "take", "k", 2, (True, 0, 0.0, 3.0)),
            (10.0, "take", "k", 3, (True, 0, 0.0, 3.0)),
            (11.5, "usage", "k", 1, 2),
            (13.0, "usage", "k", 1, 0),
            (13.0, "take", "other", 1, (True, 2, 0.0, 1.0)),
        ],
    ),
    "cost_above_what_is_left": (
        (10, 5, 1.0),
        [
            (0.0, "take", "k", 7, (True, 3, 0.0, 1.4)),
            (0.0, "take", "k", 4, (False, 3, 0.2, 1.4)),
            (0.2, "take", "k", 4, (True, 0, 0.0, 2.0)),
            (0.2, "usage", "k", 1, 10),
        ],
    ),
    "three_per_seven_seconds": (
        (1, 3, 7.0),
        [
            (0.0, "take", "k", 1, (True, 0, 0.0, 7 / 3)),
            (0.0, "take", "k", 1, (False, 0, 7 / 3, 7 / 3)),
            # T = 2_333_333_333.33 ns: one ns early is still denied...
            (2.333333333, "take", "k", 1, (False, 0, 1 / 3 * 1e-9, 1 / 3 * 1e-9)),
            # ...and the next ns is allowed.
            (2.333333334, "take", "k", 1, (True, 0, 0.0, 7 / 3)),
        ],
    ),
    "high_rate": (
        (1_000_000, 1_000_000, 1.0),
        [
            (0.0, "take", "k", 1_000_000, (True, 0, 0.0, 1.0)),
            (0.0, "take", "k", 1, (False, 0, 1e-6, 1.0)),
            (0.000001, "take", "k", 1, (True, 0, 0.0, 1.0)),
            (0.5, "usage", "k", 1, 500_001),  # the take at 1 µs is still in use
        ],
    ),
    "one_per_day": (
        (2, 1, 86_400.0),
        [
            (0.0, "take", "k", 2, (True, 0, 0.0, 172_800.0)),
            (43_200.0, "take", "k", 1, (False, 0, 43_200.0, 129_600.0)),
            (86_400.0, "take", "k", 1, (True, 0, 0.0, 172_800.0)),
        ],
    ),
}
