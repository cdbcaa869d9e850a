"""Seeds for fuzz_server: the bytes grpcio clients send for each native
method (and a compressed call, another method), recorded by a socket that
answers only SETTINGS, minus the connection preface the harness adds.

    python fuzz/make_seeds.py fuzz/corpus/server [NAME...]   (only those seeds)
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path
from typing import List

import grpc
from envoy.service.ratelimit.v3 import rls_pb2
from grpc_health.v1 import health_pb2

from guardian.v1 import guardian_pb2 as pb

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

CALLS = {
    "check": ("/guardian.v1.RateLimiter/CheckLimit", pb.CheckLimitRequest(key="user", cost=2)),
    "check_named": ("/guardian.v1.RateLimiter/CheckLimit", pb.CheckLimitRequest(key="u", limit="default")),
    "checks": ("/guardian.v1.RateLimiter/CheckLimits",
               pb.CheckLimitsRequest(checks=[pb.CheckLimitRequest(key="a"), pb.CheckLimitRequest(key="b")])),
    "rls": ("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", rls_pb2.RateLimitRequest(
        domain="d", hits_addend=1,
        descriptors=[{"entries": [{"key": "k", "value": "v"}]}, {"entries": [{"key": "a", "value": "x"},
                                                                              {"key": "b", "value": "y"}]},
                     {"entries": [{"key": "k", "value": "wow"}], "hits_addend": {"value": 0}}])),
    "rls_override": ("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", rls_pb2.RateLimitRequest(
        domain="d", descriptors=[{"entries": [{"key": "k", "value": "v"}],
                                  "limit": {"requests_per_unit": 3, "unit": 1}}])),
    # fuzz_server's policy: a*b*c (quota), *x* (share_threshold) and under it b, * (unlimited, replaces
    # r0 and q), and an entry without a value (matched by "*")
    "rls_wild": ("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", rls_pb2.RateLimitRequest(
        domain="d", descriptors=[{"entries": [{"key": "k", "value": "aXbYbc"}]}, {"entries": [{"key": "k", "value": "fox"}]},
                                 {"entries": [{"key": "k", "value": "xx"}, {"key": "b", "value": "1"}]},
                                 {"entries": [{"key": "k", "value": "v"}]},
                                 {"entries": [{"key": "k", "value": "wow"}], "hits_addend": {"value": 9}}])),
    "rls_quota": ("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", rls_pb2.RateLimitRequest(
        domain="d", descriptors=[{"entries": [{"key": "k", "value": "aXbYbc"}], "hits_addend": {"value": 9}},
                                 {"entries": [{"key": "k", "value": "abc"}], "hits_addend": {"value": 0}},
                                 {"entries": [{"key": "k", "value": "w"}]}])),
    "rls_empty_value": ("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", rls_pb2.RateLimitRequest(
        domain="d", descriptors=[{"entries": [{"key": "k"}]}])),
    # the lease table (limit "lease", rule L=v): hits, a miss, a key with a reservation, an undo
    "checks_lease": ("/guardian.v1.RateLimiter/CheckLimits", pb.CheckLimitsRequest(checks=[
        pb.CheckLimitRequest(key="abc", limit="lease"), pb.CheckLimitRequest(key="k1234567", limit="lease", cost=2),
        pb.CheckLimitRequest(key="u", limit="default"), pb.CheckLimitRequest(key="abcdefghi", limit="lease")])),
    "rls_lease": ("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", rls_pb2.RateLimitRequest(
        domain="d", descriptors=[{"entries": [{"key": "L", "value": "v"}]}, {"entries": [{"key": "k", "value": "v"}]},
                                 {"entries": [{"key": "L", "value": "v"}], "hits_addend": {"value": 0}}])),
    "health": ("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest(service="")),
    "watch": ("/grpc.health.v1.Health/Watch", health_pb2.HealthCheckRequest(service="")),
    "watch_unknown": ("/grpc.health.v1.Health/Watch", health_pb2.HealthCheckRequest(service="nope")),
    "other": ("/guardian.v1.RateLimiter/GetUsage", pb.GetUsageRequest(key="k")),
}


def record(path: str, message: bytes, compression: object = None) -> bytes:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    got = bytearray()

    def serve() -> None:
        conn, _ = listener.accept()
        # the server's (empty) SETTINGS and an ACK of the client's: then it sends the call
        conn.sendall(b"\0\0\0\x04\0\0\0\0\0" + b"\0\0\0\x04\x01\0\0\0\0")
        conn.settimeout(0.5)
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got.extend(chunk)
        except OSError:
            pass
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    with grpc.insecure_channel(f"127.0.0.1:{listener.getsockname()[1]}", compression=compression) as ch:
        try:
            ch.unary_unary(path)(message, timeout=0.4, wait_for_ready=True)
        except grpc.RpcError:
            pass
    t.join()
    listener.close()
    return bytes(got[len(PREFACE):]) if got.startswith(PREFACE) else bytes(got)


def main(out: str, names: List[str]) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    for name, (path, msg) in CALLS.items():
        if not names or name in names:
            Path(out, name).write_bytes(record(path, msg.SerializeToString()))
    if names and "gzip" not in names:
        return
    Path(out, "gzip").write_bytes(record(CALLS["check"][0], CALLS["check"][1].SerializeToString(),
                                         grpc.Compression.Gzip))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
