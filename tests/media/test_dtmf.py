"""RFC 4733 DTMF: packet plans by literal payloads, detection with retransmissions and loss."""

from __future__ import annotations

import pytest

from sipswarm.errors import ConfigError
from sipswarm.media.dtmf import (
    DtmfReceiver,
    DtmfSender,
    build_event_payload,
    parse_event_payload,
)


def test_payload_literal() -> None:
    # event 5, E=1, volume 10, duration 800
    assert build_event_payload(5, True, 10, 800) == bytes.fromhex("058a0320")
    assert parse_event_payload(bytes.fromhex("0b0a00a0")) == (11, False, 10, 160)
    assert parse_event_payload(b"\x01\x02\x03") is None


def test_one_digit_plan() -> None:
    packets = DtmfSender(duration_ms=100).packets("5")
    assert [p.payload.hex() for p in packets] == [
        "050a00a0",  # 160
        "050a0140",  # 320
        "050a01e0",  # 480
        "050a0280",  # 640
        "058a0320",  # end, 800
        "058a0320",
        "058a0320",
    ]
    assert {p.timestamp_offset for p in packets} == {0}  # one event, one timestamp
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert [p.is_end for p in packets] == [False] * 4 + [True] * 3
    assert [p.send_offset_ms for p in packets] == [0, 20, 40, 60, 80, 100, 120]


def test_sequence_timestamps_and_digit_codes() -> None:
    packets = DtmfSender(duration_ms=60, gap_ms=40).packets("1*#d")
    starts = [p for p in packets if p.marker]
    assert [p.payload[0] for p in starts] == [1, 10, 11, 15]
    # each event: 2 updates + 3 ends sent at 0..80 ms, then one ptime + 40 ms gap -> 140 ms
    assert [p.send_offset_ms for p in starts] == [0, 140, 280, 420]
    assert [p.timestamp_offset for p in starts] == [0, 1120, 2240, 3360]


def test_single_packet_event_marks_first_end_packet() -> None:
    packets = DtmfSender(duration_ms=20).packets("0")
    assert [(p.marker, p.is_end) for p in packets] == [(True, True), (False, True), (False, True)]


def test_wideband_clock() -> None:
    packets = DtmfSender(clock_rate=48000, duration_ms=40).packets("9")
    assert parse_event_payload(packets[0].payload) == (9, False, 10, 960)
    assert parse_event_payload(packets[-1].payload) == (9, True, 10, 1920)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration_ms": 10}, "at least one ptime"),
        ({"duration_ms": 9000}, "16-bit duration"),
        ({"clock_rate": 48000, "duration_ms": 2000}, "max 1365 ms"),
        ({"volume": 64}, "volume"),
        ({"gap_ms": -1}, "gap_ms"),
    ],
)
def test_sender_config_errors(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DtmfSender(**kwargs)


def test_bad_digits() -> None:
    with pytest.raises(ConfigError, match=r"got 'EX'"):
        DtmfSender().packets("12x#e")


def test_receiver_detects_each_digit_once() -> None:
    rx = DtmfReceiver()
    base = 123456
    for p in DtmfSender().packets("12#"):
        rx.receive(p.payload, base + p.timestamp_offset)
    events = rx.events_received()
    assert [e.digit for e in events] == ["1", "2", "#"]
    assert [e.timestamp for e in events] == [base, base + 1920, base + 3840]  # 240 ms apart
    assert rx.duplicates == 3 * 6 and rx.events_received() == []


def test_same_digit_twice_is_two_events() -> None:
    rx = DtmfReceiver()
    for p in DtmfSender().packets("55"):
        rx.receive(p.payload, 0xFFFFFF00 + p.timestamp_offset)  # wraps past 2**32
    assert [e.digit for e in rx.events_received()] == ["5", "5"]


def test_only_end_packets_arrive() -> None:
    rx = DtmfReceiver()
    end = build_event_payload(7, True, 12, 800)
    for _ in range(3):
        rx.receive(end, 5000)
    (event,) = rx.events_received()
    assert (event.digit, event.volume, event.timestamp) == ("7", 12, 5000)


def test_late_packet_of_an_earlier_event_is_not_a_new_press() -> None:
    rx = DtmfReceiver()
    rx.receive(build_event_payload(1, False, 10, 160), 1000)
    rx.receive(build_event_payload(2, False, 10, 160), 2000)
    rx.receive(build_event_payload(1, True, 10, 800), 1000)  # reordered end of "1"
    assert [e.digit for e in rx.events_received()] == ["1", "2"]


def test_receiver_never_raises_and_counts() -> None:
    rx = DtmfReceiver()
    rx.receive(b"", 0)
    rx.receive(b"\x05\x0a", 0)
    rx.receive(build_event_payload(16, False, 10, 160), 0)  # flash: not a digit
    rx.receive(bytes.fromhex("ff8aff"), 0)
    assert (rx.malformed, rx.ignored) == (3, 1) and rx.events_received() == []
