"""Hand-computed GCRA cases, the one set every implementation is held to:
the C core and the Python core (tests/unit/test_core.py) and the Redis Lua
scripts (tests/integration/test_redis_lua.py).

Each case: a config (capacity, refill_rate, refill_interval) and steps of
(at_seconds, op, key, cost, expected). ``take`` and ``peek`` expect
(allowed, remaining, retry_after_s, reset_after_s): a peek is what a take
of ``cost`` would answer, and changes nothing (``cost`` 0: the bucket as it
is); ``usage`` expects an int.
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
    "cost_above_one_waits_for_every_token": (
        (10, 2, 1.0),  # T = 0.5 s
        [
            (0.0, "take", "k", 8, (True, 2, 0.0, 4.0)),
            # 5 tokens: 2 are there, 3 more take 1.5 s; the denial takes nothing.
            (0.0, "take", "k", 5, (False, 2, 1.5, 4.0)),
            (0.0, "peek", "k", 5, (False, 2, 1.5, 4.0)),
            (1.0, "take", "k", 5, (False, 4, 0.5, 3.0)),
            (1.5, "take", "k", 5, (True, 0, 0.0, 5.0)),
            (1.5, "take", "k", 10, (False, 0, 5.0, 5.0)),
            (6.5, "take", "k", 10, (True, 0, 0.0, 5.0)),
        ],
    ),
    "cost_above_one_at_a_fractional_interval": (
        (3, 3, 7.0),  # T = 7/3 s
        [
            (0.0, "take", "k", 2, (True, 1, 0.0, 14 / 3)),
            (0.0, "take", "k", 2, (False, 1, 7 / 3, 14 / 3)),
            (0.0, "peek", "k", 1, (True, 0, 0.0, 7.0)),
            (7.0, "take", "k", 3, (True, 0, 0.0, 7.0)),
            (7.0, "peek", "k", 3, (False, 0, 7.0, 7.0)),
        ],
    ),
    "peek_changes_nothing": (
        (5, 1, 1.0),
        [
            (0.0, "peek", "k", 0, (True, 5, 0.0, 0.0)),  # an absent key is a full bucket
            (0.0, "peek", "k", 5, (True, 0, 0.0, 5.0)),
            (0.0, "usage", "k", 1, 0),  # the peeks inserted nothing
            (0.0, "take", "k", 3, (True, 2, 0.0, 3.0)),
            (0.0, "peek", "k", 3, (False, 2, 1.0, 3.0)),
            (0.0, "peek", "k", 2, (True, 0, 0.0, 5.0)),
            (0.0, "peek", "k", 0, (True, 2, 0.0, 3.0)),
            (0.0, "usage", "k", 1, 3),
            (0.0, "take", "k", 3, (False, 2, 1.0, 3.0)),  # what the peek said
            (0.5, "peek", "k", 3, (False, 2, 0.5, 2.5)),
            (0.5, "peek", "k", 0, (True, 2, 0.0, 2.5)),  # reset_after moves with time
            (1.0, "peek", "k", 3, (True, 0, 0.0, 5.0)),
            (1.0, "take", "k", 3, (True, 0, 0.0, 5.0)),
            (1.0, "peek", "k", 0, (True, 0, 0.0, 5.0)),
            (1.0, "peek", "k", 1, (False, 0, 1.0, 5.0)),
            (3.5, "peek", "k", 0, (True, 2, 0.0, 2.5)),
            (6.0, "peek", "k", 0, (True, 5, 0.0, 0.0)),
            (6.0, "peek", "other", 5, (True, 0, 0.0, 5.0)),
            (6.0, "usage", "other", 1, 0),
        ],
    ),
    "peek_at_a_high_rate": (
        (1_000_000, 1_000_000, 1.0),
        [
            (0.0, "take", "k", 999_999, (True, 1, 0.0, 0.999999)),
            (0.0, "peek", "k", 2, (False, 1, 1e-6, 0.999999)),
            (0.000001, "peek", "k", 2, (True, 0, 0.0, 1.0)),
            (0.000001, "peek", "k", 0, (True, 2, 0.0, 0.999998)),
        ],
    ),
}


#: Several limits on one key, all or nothing. Each case: the limits (as in
#: CASES), then steps of (at_seconds, key, cost, (denied_by, answers)):
#: ``denied_by`` None when admitted, else the index of the limit with the
#: longest wait; ``answers[i]`` is limit i's (allowed, remaining,
#: retry_after_s, reset_after_s): its take when admitted, what a take would
#: answer now when denied (nothing is taken from any limit then).
MULTI_CASES = {
    "three_per_second_and_five_per_minute": (
        [(3, 3, 1.0), (5, 5, 60.0)],  # T = 1/3 s and 12 s
        [
            (0.0, "k", 1, (None, [(True, 2, 0.0, 1 / 3), (True, 4, 0.0, 12.0)])),
            (0.0, "k", 2, (None, [(True, 0, 0.0, 1.0), (True, 2, 0.0, 36.0)])),
            # The first limit denies: the second is not taken from.
            (0.0, "k", 1, (0, [(False, 0, 1 / 3, 1.0), (True, 1, 0.0, 48.0)])),
            (1.0, "k", 2, (None, [(True, 1, 0.0, 2 / 3), (True, 0, 0.0, 59.0)])),
            # The second denies: the first limit's take is undone...
            (1.0, "k", 1, (1, [(True, 0, 0.0, 1.0), (False, 0, 11.0, 59.0)])),
            # ...exactly: asking again gets the same answer.
            (1.0, "k", 1, (1, [(True, 0, 0.0, 1.0), (False, 0, 11.0, 59.0)])),
            (12.0, "k", 1, (None, [(True, 2, 0.0, 1 / 3), (True, 0, 0.0, 60.0)])),
            # Both deny: the longer wait (the minute's) decides.
            (12.0, "k", 3, (1, [(False, 2, 1 / 3, 1 / 3), (False, 0, 36.0, 60.0)])),
            (12.0, "other", 1, (None, [(True, 2, 0.0, 1 / 3), (True, 4, 0.0, 12.0)])),
        ],
    ),
    "three_limits_the_middle_one_binds": (
        [(10, 10, 1.0), (2, 1, 1.0), (100, 100, 3600.0)],
        [
            (0.0, "k", 2, (None, [(True, 8, 0.0, 0.2), (True, 0, 0.0, 2.0), (True, 98, 0.0, 72.0)])),
            (0.5, "k", 1, (1, [(True, 9, 0.0, 0.1), (False, 0, 0.5, 1.5), (True, 97, 0.0, 107.5)])),
            (1.0, "k", 1, (None, [(True, 9, 0.0, 0.1), (True, 0, 0.0, 2.0), (True, 97, 0.0, 107.0)])),
        ],
    ),
}
