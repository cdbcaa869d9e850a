"""The native data plane's protobuf decoders against the protobuf library.

Messages are built field by field with the official encoder, then shuffled,
repeated and mixed with unknown fields of every wire type (and known field
numbers with the wrong wire type, which the library keeps as unknown); both
decoders must read the same values. Arbitrary and mutated bytes must be
rejected by the C decoder exactly when the library rejects them, and never
crash it (the libFuzzer harness in fuzz/ does the same under ASan/UBSan).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent.parent / "helpers"))
from native_engine import native_module  # noqa: E402

_native = native_module()

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2  # noqa: E402
from envoy.service.ratelimit.v3 import rls_pb2  # noqa: E402
from google.protobuf.message import DecodeError  # noqa: E402
from grpc_health.v1 import health_pb2  # noqa: E402

from guardian.v1 import guardian_pb2 as pb  # noqa: E402

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- raw wire pieces ---------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint((field << 3) | wire)


def length_delimited(field: int, body: bytes) -> bytes:
    return tag(field, 2) + varint(len(body)) + body


text = st.text(max_size=12)
u64 = st.integers(0, 2**64 - 1)


@st.composite
def unknown_field(draw: Any, known: Dict[int, int]) -> bytes:
    """One unknown field: a new number, or a known one with another wire type
    (``known``: field number -> its wire type)."""
    wire = draw(st.sampled_from([0, 1, 2, 5, 3]))
    if draw(st.booleans()) and any(w != wire for w in known.values()):
        field = draw(st.sampled_from(sorted(f for f, w in known.items() if w != wire)))
    else:
        field = draw(st.integers(1, 2**29 - 1).filter(lambda f: f not in known))
    if wire == 0:
        return tag(field, 0) + varint(draw(u64))
    if wire == 1:
        return tag(field, 1) + draw(st.binary(min_size=8, max_size=8))
    if wire == 5:
        return tag(field, 5) + draw(st.binary(min_size=4, max_size=4))
    if wire == 2:
        # bytes, or a packed run of varints: both are length-delimited
        body = draw(st.one_of(st.binary(max_size=8), st.lists(u64, max_size=4).map(lambda xs: b"".join(map(varint, xs)))))
        return length_delimited(field, body)
    inner = draw(st.lists(st.tuples(st.integers(1, 50), u64), max_size=3))
    return tag(field, 3) + b"".join(tag(f, 0) + varint(v) for f, v in inner) + tag(field, 4)


@st.composite
def wire_message(draw: Any, chunks: List[bytes], known: Dict[int, int]) -> bytes:
    """The chunks (each one encoded field) plus unknown fields, in any order."""
    parts = chunks + draw(st.lists(unknown_field(known), max_size=3))
    order = draw(st.permutations(range(len(parts)))) if parts else []
    return b"".join(parts[i] for i in order)


# --- guardian.v1 ---------------------------------------------------------------


@st.composite
def check_request(draw: Any) -> bytes:
    chunks = []
    for _ in range(draw(st.integers(0, 2))):  # a field may come twice: the last wins
        chunks.append(pb.CheckLimitRequest(key=draw(text)).SerializeToString())
    for _ in range(draw(st.integers(0, 2))):
        chunks.append(pb.CheckLimitRequest(cost=draw(u64)).SerializeToString())
    for _ in range(draw(st.integers(0, 2))):
        chunks.append(pb.CheckLimitRequest(limit=draw(text)).SerializeToString())
    return draw(wire_message(chunks, {1: 2, 2: 0, 3: 2}))


def _check(m: Any) -> Tuple[str, int, str]:
    return (m.key, m.cost, m.limit)


@SETTINGS
@given(check_request())
def test_check_limit_request_decodes_as_the_library_does(data: bytes) -> None:
    assert _native.decode_check(data) == _check(pb.CheckLimitRequest.FromString(data))


@SETTINGS
@given(st.lists(check_request(), max_size=5), st.data())
def test_check_limits_request_decodes_as_the_library_does(checks: List[bytes], data: Any) -> None:
    raw = data.draw(wire_message([length_delimited(1, c) for c in checks], {1: 2}))
    expected = [_check(c) for c in pb.CheckLimitsRequest.FromString(raw).checks]
    assert _native.decode_checks(raw) == expected


def test_check_limits_beyond_the_maximum_is_too_many() -> None:
    raw = pb.CheckLimitsRequest(checks=[pb.CheckLimitRequest(key="k")] * 5).SerializeToString()
    assert _native.decode_checks(raw, 4) == "too many"
    assert len(_native.decode_checks(raw, 5)) == 5


# --- Envoy RLS v3 ----------------------------------------------------------------

Descriptor = ratelimit_pb2.RateLimitDescriptor


@st.composite
def entry(draw: Any) -> bytes:
    chunks = []
    for _ in range(draw(st.integers(0, 2))):
        chunks.append(Descriptor.Entry(key=draw(text)).SerializeToString())
    for _ in range(draw(st.integers(0, 2))):
        chunks.append(Descriptor.Entry(value=draw(text)).SerializeToString())
    return draw(wire_message(chunks, {1: 2, 2: 2}))


@st.composite
def descriptor(draw: Any) -> bytes:
    chunks = [length_delimited(1, e) for e in draw(st.lists(entry(), max_size=4))]
    for _ in range(draw(st.integers(0, 2))):  # a singular message twice: merged
        override = Descriptor.RateLimitOverride(requests_per_unit=draw(st.integers(0, 2**32 - 1)),
                                                unit=draw(st.integers(-(2**31), 2**31 - 1)))
        chunks.append(length_delimited(2, draw(wire_message(
            [override.SerializeToString()] if draw(st.booleans()) else [], {1: 0, 2: 0}))))
    for _ in range(draw(st.integers(0, 2))):
        hits = Descriptor(hits_addend={"value": draw(u64)}).SerializeToString()
        chunks.append(hits if draw(st.booleans()) else length_delimited(3, b""))
    return draw(wire_message(chunks, {1: 2, 2: 2, 3: 2}))


@st.composite
def rls_request(draw: Any) -> bytes:
    chunks = [length_delimited(2, d) for d in draw(st.lists(descriptor(), max_size=4))]
    for _ in range(draw(st.integers(0, 2))):
        chunks.append(rls_pb2.RateLimitRequest(domain=draw(text)).SerializeToString())
    for _ in range(draw(st.integers(0, 2))):
        # uint32 on the wire as a full varint: both keep the low 32 bits
        chunks.append(tag(3, 0) + varint(draw(st.one_of(st.integers(0, 2**32 - 1), u64))))
    return draw(wire_message(chunks, {1: 2, 2: 2, 3: 0}))


def _rls(m: Any) -> Tuple[str, int, List[Any]]:
    descs = []
    for d in m.descriptors:
        descs.append(([(e.key, e.value) for e in d.entries],
                      (d.limit.requests_per_unit, d.limit.unit) if d.HasField("limit") else None,
                      d.hits_addend.value if d.HasField("hits_addend") else None))
    return (m.domain, m.hits_addend, descs)


@SETTINGS
@given(rls_request())
def test_rate_limit_request_decodes_as_the_library_does(data: bytes) -> None:
    assert _native.decode_rls(data) == _rls(rls_pb2.RateLimitRequest.FromString(data))


def test_rate_limit_request_beyond_the_maxima_is_too_many() -> None:
    d = Descriptor(entries=[Descriptor.Entry(key="k", value="v")] * 3)
    raw = rls_pb2.RateLimitRequest(domain="d", descriptors=[d, d]).SerializeToString()
    assert _native.decode_rls(raw, 1, 100) == "too many"
    assert _native.decode_rls(raw, 2, 5) == "too many"
    assert _native.decode_rls(raw, 2, 6)[2][1][0] == [("k", "v")] * 3


@SETTINGS
@given(st.data())
def test_health_request_decodes_as_the_library_does(data: Any) -> None:
    chunks = [health_pb2.HealthCheckRequest(service=data.draw(text)).SerializeToString()
              for _ in range(data.draw(st.integers(0, 2)))]
    raw = data.draw(wire_message(chunks, {1: 2}))
    assert _native.decode_health(raw) == health_pb2.HealthCheckRequest.FromString(raw).service


# --- malformed input ---------------------------------------------------------------

DECODERS = [
    (_native.decode_check, pb.CheckLimitRequest, _check),
    (_native.decode_checks, pb.CheckLimitsRequest, lambda m: [_check(c) for c in m.checks]),
    (_native.decode_rls, rls_pb2.RateLimitRequest, _rls),
    (_native.decode_health, health_pb2.HealthCheckRequest, lambda m: m.service),
]


def _library(cls: Any, data: bytes) -> Optional[Any]:
    try:
        return cls.FromString(data)
    except DecodeError:
        return None


def _agree(data: bytes) -> None:
    for decode, cls, convert in DECODERS:
        parsed = _library(cls, data)
        mine = decode(data)
        if parsed is None:
            assert mine is None, (cls.__name__, data)
        else:
            assert mine == convert(parsed), (cls.__name__, data)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_are_rejected_exactly_when_the_library_rejects_them(data: bytes) -> None:
    _agree(data)


@SETTINGS
@given(rls_request(), st.data())
def test_mutated_messages_are_rejected_exactly_when_the_library_rejects_them(raw: bytes, data: Any) -> None:
    if not raw:
        return
    cut = data.draw(st.integers(0, len(raw)))
    flip = data.draw(st.integers(0, len(raw) - 1))
    byte = data.draw(st.integers(0, 255))
    _agree(raw[:cut])
    _agree(raw[:flip] + bytes([byte]) + raw[flip + 1:])


@pytest.mark.parametrize("data", [
    b"\x0a\x02\xc3\x28",                        # key: invalid UTF-8
    b"\x0a\x03\xed\xa0\x80",                    # key: a UTF-16 surrogate
    b"\x0a\x02\xc0\x80",                        # key: overlong NUL
    b"\x10" + b"\xff" * 10 + b"\x01",           # cost: an 11-byte varint
    b"\x0a\x05ab",                              # a length past the end
    b"\x00\x01",                                # field number 0
    b"\x0f",                                    # wire type 7
    b"\x1c",                                    # an end-group with no start
    b"\x1b\x08\x01",                            # a group never closed
    b"\x1b" * 200 + b"\x1c" * 200,              # groups nested past the limit
])
def test_malformed_examples(data: bytes) -> None:
    _agree(data)
    assert _native.decode_check(data) is None
