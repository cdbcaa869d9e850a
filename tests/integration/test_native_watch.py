"""grpc.health.v1 Watch on the native engine under hostile or heavy clients:
a small flow-control window, thousands of open watches, a client that
never reads; the hot RPCs keep being answered and a drain still ends."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Iterator, List, Optional

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from native_engine import native_module
from sidecar import Sidecar, write

from guardian.v1 import guardian_pb2 as pb
from guardian.v1 import guardian_pb2_grpc as pb_grpc

native_module()

pytestmark = pytest.mark.grpc

POLICY = "limits:\n  default: {capacity: 1000000, refill_rate: 1000000, refill_interval: 1}\n"


@pytest.fixture
def native(tmp_path: Path) -> Iterator[Sidecar]:
    s = Sidecar(tmp_path, "--config", write(tmp_path / "p.yaml", POLICY), "--engine", "native",
                "--grace", "2").start()
    try:
        yield s
    finally:
        s.stop()


class RawWatch:
    """One HTTP/2 connection (the h2 library) opening Watch streams, with
    the initial window it announces, reading only when told to."""

    def __init__(self, target: str, window: int) -> None:
        host, port = target.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.data: dict = {}
        self.ended: dict = {}

    def watch(self, *extra: tuple) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", "POST"), (":path", "/grpc.health.v1.Health/Watch"),
                                     (":scheme", "http"), (":authority", "x"), ("content-type", "application/grpc"),
                                     ("te", "trailers"), *extra])
        self.conn.send_data(sid, b"\0\0\0\0\0", end_stream=True)  # an empty HealthCheckRequest
        self.sock.sendall(self.conn.data_to_send())
        return sid

    def pump(self, seconds: float, ack: bool = False) -> None:
        """Reads for ``seconds``; ``ack``: gives back the window of what arrived."""
        end = time.monotonic() + seconds
        self.sock.settimeout(0.05)
        while time.monotonic() < end:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return
            for ev in self.conn.receive_data(chunk):
                if isinstance(ev, h2.events.DataReceived):
                    self.data[ev.stream_id] = self.data.get(ev.stream_id, b"") + ev.data
                    if ack:
                        self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.TrailersReceived):
                    self.ended[ev.stream_id] = dict(ev.headers)
                elif isinstance(ev, h2.events.ResponseReceived) and any(k == b"grpc-status" for k, _ in ev.headers):
                    self.ended[ev.stream_id] = dict(ev.headers)  # a trailers-only answer
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)

    def open_window(self, sid: int, n: int) -> None:
        self.conn.increment_flow_control_window(n, stream_id=sid)
        self.sock.sendall(self.conn.data_to_send())


def test_a_status_held_back_by_a_small_window_is_sent_once_the_window_opens(native: Sidecar) -> None:
    """A window of 6 bytes cannot carry the 7-byte SERVING message: what fits
    goes (a message may span DATA frames), the rest once the client opens
    the window (WINDOW_UPDATE). The watcher is not left without its first
    status until the next change (it was: the stream stayed deferred)."""
    raw = RawWatch(native.target, window=6)
    try:
        sid = raw.watch()
        raw.pump(0.5)
        assert raw.data.get(sid, b"") in (b"", b"\0\0\0\0\x02\x08")  # 7 bytes do not fit in 6
        raw.open_window(sid, 1000)
        raw.pump(1.0)
        assert raw.data.get(sid, b"") == b"\0\0\0\0\x02\x08\x01", raw.data  # SERVING
    finally:
        raw.sock.close()


def test_thousands_of_watches_and_a_reader_that_never_reads(native: Sidecar) -> None:
    """3,000 watches over four connections, and a client whose window is
    shut: CheckLimit is still answered at once, and SIGTERM ends every
    watch (NOT_SERVING, then UNAVAILABLE) and the server within --grace."""
    channels = [grpc.insecure_channel(native.target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(4)]
    stuck = RawWatch(native.target, window=0)
    try:
        for _ in range(50):
            stuck.watch()
        watches: List[grpc.Future] = []
        for i in range(3000):
            stub = health_pb2_grpc.HealthStub(channels[i % 4])
            watches.append(stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60))
        firsts = [next(w).status for w in watches]
        assert set(firsts) == {health_pb2.HealthCheckResponse.SERVING}
        with grpc.insecure_channel(native.target) as ch:
            stub = pb_grpc.RateLimiterStub(ch)
            start = time.monotonic()
            for i in range(50):
                assert stub.CheckLimit(pb.CheckLimitRequest(key=f"k{i}"), timeout=5).allowed
            assert time.monotonic() - start < 5
        native.signal(signal.SIGTERM)
        codes = set()
        for w in watches:
            seen: List[int] = []
            code: Optional[grpc.StatusCode] = None
            try:
                for update in w:
                    seen.append(update.status)
            except grpc.RpcError as exc:
                code = exc.code()
            assert seen == [health_pb2.HealthCheckResponse.NOT_SERVING], (code, len(codes))
            codes.add(code)
        assert codes == {grpc.StatusCode.UNAVAILABLE}
        assert native.proc is not None
        native.proc.wait(10)
        assert native.proc.returncode == 0, native.log()
    finally:
        stuck.sock.close()
        for ch in channels:
            ch.close()


def test_a_watch_ends_at_its_grpc_timeout(native: Sidecar) -> None:
    """The server ends a Watch at the caller's deadline (DEADLINE_EXCEEDED),
    as grpcio does, not only when the client gives up."""
    raw = RawWatch(native.target, window=65535)
    try:
        sid = raw.watch(("grpc-timeout", "300m"))
        raw.pump(1.5)
        assert raw.data.get(sid, b"") == b"\0\0\0\0\x02\x08\x01"  # SERVING, then the end
        assert raw.ended.get(sid, {}).get(b"grpc-status") == b"4", raw.ended
    finally:
        raw.sock.close()


def test_open_watches_are_capped_and_other_calls_still_get_streams(native: Sidecar) -> None:
    """A Watch holds its stream as long as the client likes: past 4,096 open
    ones a new Watch is refused (RESOURCE_EXHAUSTED), so watches alone
    cannot take every stream of the server."""
    conns = [RawWatch(native.target, window=65535) for _ in range(5)]
    try:
        sids = [(c, c.watch()) for c in conns for _ in range(820)]  # 4,100
        for c in conns:
            c.pump(1.0)
        refused = [sid for c, sid in sids if c.ended.get(sid, {}).get(b"grpc-status") == b"8"]
        open_ = [sid for c, sid in sids if sid not in c.ended]
        assert len(refused) == 4, (len(refused), len(open_))
        assert len(open_) == 4096
        with grpc.insecure_channel(native.target) as ch:
            assert pb_grpc.RateLimiterStub(ch).CheckLimit(pb.CheckLimitRequest(key="k"), timeout=5).allowed
    finally:
        for c in conns:
            c.sock.close()
