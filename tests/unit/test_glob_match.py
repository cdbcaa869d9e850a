"""guardian.server.policy.glob_match (ratelimit's '*' wildcard, mirrored in C
by policy.c's glob_match and fuzzed there by fuzz/fuzz_glob.c) against an
independent reference: the pattern's parts, escaped, joined by '.*' and
matched whole (re.DOTALL: a '*' runs over newlines too)."""

from __future__ import annotations

import re
from typing import List

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from guardian.server.policy import _glob_parts, glob_match

SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# few letters (so parts repeat and overlap), regex metacharacters, a newline,
# two- to four-byte UTF-8 and a combining mark
ALPHABET = st.sampled_from(list("ab*") + list("ab.?+[]\\^$|()\n") + ["é", "ß", "€", "𝄞", "\u0301", "\x00"])
TEXT = st.text(alphabet=ALPHABET.filter(lambda c: c != "*"), max_size=12)
PATTERN = st.text(alphabet=ALPHABET, max_size=12)


def reference(pattern: str, value: str) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, value, re.DOTALL) is not None


@SETTINGS
@given(PATTERN, st.text(alphabet=ALPHABET, max_size=16))
@example("*", "")
@example("**", "")
@example("a*b*c", "abc")
@example("ab*ba", "aba")       # the first and last parts may not overlap
@example("a*a*a", "aa")
@example("*ab*abc", "xxabcabc")
@example("*é*", "café")
def test_any_pattern_and_value(pattern: str, value: str) -> None:
    assert glob_match(_glob_parts(pattern), value) is reference(pattern, value)


@st.composite
def matching(draw: st.DrawFn) -> tuple:
    """A pattern and a value made from it (each '*' filled with some text),
    so that most cases match, then perhaps one character changed."""
    pattern = draw(PATTERN)
    fills: List[str] = [draw(TEXT) for _ in range(pattern.count("*"))]
    value = pattern.split("*")[0] + "".join(f + p for f, p in zip(fills, pattern.split("*")[1:]))
    if value and draw(st.booleans()):
        i = draw(st.integers(0, len(value) - 1))
        value = value[:i] + draw(st.sampled_from(["a", "b", "é", ""])) + value[i + 1:]
    return pattern, value


@SETTINGS
@given(matching())
def test_values_made_from_the_pattern(case: tuple) -> None:
    pattern, value = case
    assert glob_match(_glob_parts(pattern), value) is reference(pattern, value)


def test_reference_agrees_on_known_cases() -> None:
    # the reference itself, on cases decided by hand
    assert reference("a*b*c", "aXbYbZc") and reference("*", "") and reference("*x*", "x")
    assert not reference("ab*ba", "aba") and not reference("a.c", "abc") and not reference("w", "ww")
    assert reference("*", "line\nbreak")
