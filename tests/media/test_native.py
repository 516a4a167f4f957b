"""The C hot path (sipswarm._rtpcore) against the pure-Python one: same figures, no crash.

Hand-computed vectors where the C code has its own representation (the
128-packet duplicate window split in two 64-bit words, the SSRC and the
last arrival as "None or a value"), then a seeded differential run over
every kind of packet the receive path distinguishes, comparing every field
after every packet.
"""

from __future__ import annotations

import os
import random
import struct

import pytest
from tests.media.conftest import CLASSES, EXT

from sipswarm import _native
from sipswarm.media.rtp import build_rtp
from sipswarm.media.stats import RtpReceiveStats

SSRC = 0x0A0B0C0D
FRAME = b"\xff" * 160

FIELDS = (
    "ssrc",
    "packets_received",
    "bytes_received",
    "invalid_packets",
    "duplicate_packets",
    "out_of_order_packets",
    "sequence_number_gaps",
    "ssrc_switches",
    "probation_dropped",
    "first_arrival",
    "last_arrival",
    "jitter",
    "jitter_max",
    "packets_expected",
    "packets_lost",
    "extended_highest_seq",
    "_window",
    "_max_seq",
    "_probation",
    "_cycles",
    "_unique",
    "_jitter_valid",
    "_last_ts",
    "_last_arrival_ts",
)


def test_extension_built_when_required() -> None:
    """scripts/test.sh sets SIPSWARM_REQUIRE_NATIVE=1: a broken C build must fail CI."""
    if os.environ.get("SIPSWARM_REQUIRE_NATIVE") != "1":
        pytest.skip("SIPSWARM_REQUIRE_NATIVE is not set")
    assert EXT is not None, f"sipswarm._rtpcore did not build: {_native.IMPORT_ERROR}"
    if os.environ.get("SIPSWARM_NATIVE", "1") != "0":
        assert _native.NATIVE and RtpReceiveStats.__mro__[1] is EXT.RecvBase


def pkt(seq: int, *, ts: int | None = None, ssrc: int = SSRC, pt: int = 0) -> bytes:
    return build_rtp(pt, seq & 0xFFFF, (seq * 160 if ts is None else ts) & 0xFFFFFFFF, ssrc, FRAME)


def test_duplicate_window_across_the_64_bit_boundary(recv_cls: type[RtpReceiveStats]) -> None:
    s = recv_cls(8000)
    for seq in range(100):
        if seq != 20:
            s.receive_rtp(pkt(seq), seq * 0.02)
    # highest 99: 29 is 70 behind (the window's upper word), 20 is 79 behind and missing
    assert s.receive_rtp(pkt(29), 2.0) == 0
    assert s.duplicate_packets == 1 and s.out_of_order_packets == 0
    s.receive_rtp(pkt(20), 2.0)  # late, fills the hole
    assert (s.out_of_order_packets, s.packets_lost) == (1, 0)
    s.receive_rtp(pkt(20), 2.0)  # and now it is a duplicate
    assert s.duplicate_packets == 2
    # every one of the 100 sequence numbers is in the window: bits 0..99
    assert s._window == (1 << 100) - 1
    assert (s.packets_received, s.packets_expected) == (102, 100)


def test_window_ssrc_and_last_arrival_round_trip(recv_cls: type[RtpReceiveStats]) -> None:
    s = recv_cls(8000)
    assert s.ssrc is None and s.last_arrival is None
    s._window = (1 << 127) | (1 << 64) | (1 << 63) | 1
    assert s._window == (1 << 127) | (1 << 64) | (1 << 63) | 1
    s.ssrc = 0xFFFFFFFF
    s.last_arrival = 1.5
    assert (s.ssrc, s.last_arrival) == (0xFFFFFFFF, 1.5)
    s.ssrc = None
    s.last_arrival = None
    assert s.ssrc is None and s.last_arrival is None


def test_sizes_and_buffer_types(recv_cls: type[RtpReceiveStats]) -> None:
    s = recv_cls(8000)
    for data in (b"", b"\x80" * 11, b"\x80" + b"\x00" * 1472):  # 1473 > MAX_RTP_PACKET
        assert s.receive_rtp(data, 0.0) == -1
    assert s.invalid_packets == 3
    for seq, kind in enumerate((bytes, bytearray, memoryview)):
        assert s.receive_rtp(kind(pkt(seq)), seq * 0.02) == 0
    assert (s.packets_received, s.bytes_received) == (3, 3 * 172)


def _random_packet(rng: random.Random, seq: int, ts: int) -> tuple[bytes, int, int]:
    """One datagram of a messy stream; returns it and the stream's next (seq, ts)."""
    kind = rng.random()
    if kind < 0.70:
        return pkt(seq, ts=ts), seq + 1, ts + 160 + rng.choice((0, 0, 0, 8, -8, 80))
    if kind < 0.76:
        return pkt(seq - rng.randint(1, 130), ts=ts - 1600), seq, ts  # late or duplicate
    if kind < 0.80:
        return pkt(seq + rng.randint(2, 5), ts=ts + 800), seq + 6, ts + 960  # gap
    if kind < 0.82:
        return pkt(seq + rng.choice((3000, 20000, 40000)), ts=ts), seq, ts  # wild jump
    if kind < 0.84:
        return pkt(seq, ts=ts, ssrc=rng.choice((SSRC, SSRC + 1))), seq + 1, ts + 160
    if kind < 0.87:
        return pkt(seq, ts=ts, pt=rng.choice((72, 76, 101, 8))), seq + 1, ts + 160
    if kind < 0.90:  # CSRC, extension, padding: the slow path validates them
        hdr = struct.pack("!BBHII", 0x91, 0, seq & 0xFFFF, ts & 0xFFFFFFFF, SSRC)
        body = struct.pack("!I", 7) + struct.pack("!HH", 0xBEDE, 1) + b"\x00" * 4 + FRAME
        return hdr + body, seq + 1, ts + 160
    if kind < 0.93:
        good = bytearray(pkt(seq, ts=ts))
        good[0] = rng.choice((0x00, 0x40, 0xA0, 0xBF, 0xFF))  # bad version / bad padding
        return bytes(good), seq, ts
    size = rng.choice((0, 1, 11, 12, 13, 1472, 1473, 2048))
    return bytes(rng.getrandbits(8) for _ in range(size)), seq, ts


@pytest.mark.skipif(EXT is None, reason="sipswarm._rtpcore did not build")
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_c_and_python_agree_field_by_field(seed: int) -> None:
    rng = random.Random(seed)
    py, c = CLASSES["python"]["recv"](8000), CLASSES["c"]["recv"](8000)
    seq, ts, now = rng.getrandbits(16), rng.getrandbits(32), 1000.0
    for i in range(4000):
        data, seq, ts = _random_packet(rng, seq, ts)
        now += rng.choice((0.02, 0.02, 0.019, 0.021, 0.0, 0.06))
        assert py.receive_rtp(data, now) == c.receive_rtp(data, now), (i, data[:12].hex())
        if i % 500 == 499:
            py.close_interval(now)
            c.close_interval(now)
            assert py.report_block() == c.report_block()
        for field in FIELDS:
            assert getattr(py, field) == getattr(c, field), (i, field)
    assert py.packets_received > 2000 and py.invalid_packets > 100 and py.ssrc_switches > 10


@pytest.mark.skipif(EXT is None, reason="sipswarm._rtpcore did not build")
def test_c_and_python_writers_build_the_same_bytes() -> None:
    kw = {"ssrc": 0xFFFFFFFF, "payload_type": 8, "sequence": 65533, "timestamp": 2**32 - 300}
    py = CLASSES["python"]["writer"](timestamp_step=160, **kw)
    c = CLASSES["c"]["writer"](timestamp_step=160, **kw)
    for i in range(12):  # across the sequence and timestamp wrap
        for w in (py, c):
            if i == 3:
                w.mark_next()
            if i == 5:
                w.set_payload_type(0)
            if i == 7:
                w.advance_timestamp(3)
        if i == 9:
            assert py.write_event(b"\x05\x0a\x00\xa0", 101, 42, True) == c.write_event(
                b"\x05\x0a\x00\xa0", 101, 42, True
            )
        payload = bytes([i]) * 160
        assert py.write(payload) == c.write(bytearray(payload)), i
    assert (
        (py.sequence, py.timestamp) == (c.sequence, c.timestamp) == (10, 2100)
    )  # 65533 + 13 packets; 12 frames + 3 skipped, -300
