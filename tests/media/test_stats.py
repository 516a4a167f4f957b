"""RtpReceiveStats/RtpSendStats with synthetic packet sequences; expected figures by hand."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from sipswarm.media.rtp import build_rtp
from sipswarm.media.stats import (
    Quality,
    RemoteReport,
    RtpReceiveStats,
    RtpSendStats,
    metrics_snapshot,
)

SSRC = 0x11223344
FRAME = b"\xd5" * 160  # 20 ms of PCMA: 172-byte packets


def feed(
    stats: RtpReceiveStats,
    seqs: Iterable[int],
    *,
    ssrc: int = SSRC,
    start: float = 0.0,
    spacing: float = 0.02,
) -> None:
    """Send ``seqs``, stamped ``seq * 160`` and arriving on their 20 ms slot counted from the first.

    A packet whose slot is earlier than one already sent (reordered) arrives
    when it is fed, in which case its arrival time is the latest so far.
    """
    seqs = list(seqs)
    latest = start
    for seq in seqs:
        slot = (seq - seqs[0]) & 0xFFFF
        latest = max(latest, start + slot * spacing)
        data = build_rtp(8, seq, ((seqs[0] + slot) * 160) & 0xFFFFFFFF, ssrc, FRAME)
        assert stats.receive_rtp(data, latest) >= 0


def test_in_order_across_the_16_bit_wrap(recv_cls: type[RtpReceiveStats]) -> None:
    s = recv_cls(8000)
    feed(s, [(65500 + i) & 0xFFFF for i in range(100)])
    # 65500..65535 is 36 packets, then 0..63: one wrap, highest = 65536 + 63
    assert s.extended_highest_seq == 65536 + 63
    assert (s.packets_received, s.packets_expected, s.packets_lost) == (100, 100, 0)
    assert s.bytes_received == 100 * 172
    assert (s.duplicate_packets, s.out_of_order_packets, s.sequence_number_gaps) == (0, 0, 0)
    assert s.jitter_ms == pytest.approx(0.0, abs=1e-9)
    assert s.first_arrival == 0.0 and s.last_arrival == pytest.approx(99 * 0.02)


def test_loss_gaps_and_fraction(recv_cls: type[RtpReceiveStats]) -> None:
    s = recv_cls(8000)
    s.close_interval(0.0)
    feed(s, [q for q in range(20) if q not in (5, 6, 10)])
    # 20 expected (0..19), 17 received, two holes (5-6 and 10)
    assert (s.packets_expected, s.packets_received, s.packets_lost) == (20, 17, 3)
    assert s.sequence_number_gaps == 2
    s.close_interval(1.0)
    assert s.interval_fraction_lost == pytest.approx(3 / 20)
    assert s.interval_packets_rate == pytest.approx(17.0)
    assert s.interval_bytes_rate == pytest.approx(17 * 172 * 8)
    # RTCP report block: fraction = (3 << 8) // 20 = 38, highest seq 19, jitter 0
    assert s.report_block() == (38, 3, 19, 0)
    feed(s, [20, 21, 22, 23], start=0.4)
    s.close_interval(2.0)
    assert s.interval_fraction_lost == 0.0
    assert s.report_block() == (0, 3, 23, 0)


def test_reorder_fills_the_hole(recv_cls: type[RtpReceiveStats]) -> None:
    s = recv_cls(8000)
    feed(s, [0, 1, 2, 4, 3, 5])
    assert s.out_of_order_packets == 1
    assert s.sequence_number_gaps == 1  # 2 -> 4
    assert s.packets_lost == 0 and s.packets_received == 6


def test_duplicates_do_not_hide_loss(recv_cls: type[RtpReceiveStats]) -> None:
    s = recv_cls(8000)
    feed(s, [0, 1, 2, 2, 4, 1, 5])
    assert s.duplicate_packets == 2  # the second 2 and the late 1
    assert s.packets_received == 7
    assert s.packets_lost == 1  # seq 3; RFC A.3 alone would say 6 expected - 7 received = -1
    assert s.out_of_order_packets == 0


def test_jitter_by_hand(recv_cls: type[RtpReceiveStats]) -> None:
    s = recv_cls(8000)
    for seq, arrival in [(0, 0.0), (1, 0.020), (2, 0.045), (3, 0.060)]:
        s.receive_rtp(build_rtp(0, seq, seq * 160, SSRC, FRAME), arrival)
    # D(0,1) = 0 -> J = 0; D(1,2) = 25 ms - 20 ms = 40 units -> J = 40/16 = 2.5
    # D(2,3) = 15 ms - 20 ms = -40 -> J = 2.5 + (40 - 2.5)/16 = 4.84375 units = 0.60546875 ms
    assert s.jitter == pytest.approx(4.84375)
    assert s.jitter_ms == pytest.approx(0.60546875)
    assert s.jitter_max == pytest.approx(4.84375)


def test_jitter_across_timestamp_wrap(recv_cls: type[RtpReceiveStats]) -> None:
    s = recv_cls(8000)
    for i in range(3):
        ts = (0xFFFFFF60 + i * 160) & 0xFFFFFFFF
        s.receive_rtp(build_rtp(0, i, ts, SSRC, FRAME), i * 0.02)
    assert s.jitter == pytest.approx(0.0, abs=1e-6)


def test_probation_counts_the_first_packets_once_validated(recv_cls: type[RtpReceiveStats]) -> None:
    s = recv_cls(8000)
    feed(s, [10])
    assert s.packets_received == 0 and s.report_block() is None
    feed(s, [50, 51, 52], start=0.02)
    # 10 started probation, 50 broke it (10 dropped), 51 follows 50: validated with base 50
    assert s.probation_dropped == 1
    assert (s.packets_received, s.packets_expected, s.packets_lost) == (3, 3, 0)


def test_ssrc_switch_restarts_and_keeps_cumulative_loss(recv_cls: type[RtpReceiveStats]) -> None:
    s = recv_cls(8000)
    feed(s, [0, 1, 2, 4, 5, 6, 7, 8, 9])  # seq 3 lost
    feed(s, range(1000, 1010), ssrc=0x55667788, start=0.2)
    assert s.ssrc_switches == 1 and s.ssrc == 0x55667788
    assert (s.packets_received, s.packets_expected, s.packets_lost) == (19, 20, 1)


def test_large_jump_needs_two_sequential_packets(recv_cls: type[RtpReceiveStats]) -> None:
    s = recv_cls(8000)
    feed(s, range(10))
    feed(s, [20000, 20001, 20002], start=0.2)
    # A.1: 20000 is dropped as a possible stray; 20001 == bad_seq -> resync, base 20001
    assert s.packets_received == 12
    assert s.packets_lost == 0
    assert s.extended_highest_seq == 20002


def test_stray_old_packet_after_jump_is_dropped(recv_cls: type[RtpReceiveStats]) -> None:
    s = recv_cls(8000)
    feed(s, range(10))
    feed(s, [30000, 10, 11], start=0.2)
    assert s.packets_received == 12 and s.packets_lost == 0


def test_garbage_is_counted_and_dropped(recv_cls: type[RtpReceiveStats]) -> None:
    s = recv_cls(8000)
    assert s.receive_rtp(b"\x00" * 20, 0.0) == -1
    assert s.receive_rtp(b"", 0.0) == -1
    assert s.invalid_packets == 2 and s.packets_received == 0 and s.ssrc is None


def test_snapshot_has_exactly_the_protocol_keys(
    recv_cls: type[RtpReceiveStats], send_cls: type[RtpSendStats]
) -> None:
    send, recv = send_cls(), recv_cls(8000)
    snap = metrics_snapshot(send, recv, Quality(), RemoteReport())
    assert set(snap["send"]) == {
        "packets_sent",
        "bytes_sent",
        "packets_sent_rate_ps",
        "bytes_sent_rate_bps",
        "rtcp_sr_sent",
    }
    assert set(snap["recv"]) == {
        "packets_received",
        "bytes_received",
        "packets_recv_rate_ps",
        "bytes_recv_rate_bps",
        "packets_lost",
        "fraction_lost",
        "jitter_ms",
        "rtt_ms",
        "duplicate_packets",
        "out_of_order_packets",
        "sequence_number_gaps",
        "ssrc_switches",
        "r_factor",
        "mos",
    }
    # nothing received yet: gauges are null, counters zero
    assert snap["recv"]["jitter_ms"] is None and snap["recv"]["packets_lost"] is None
    assert snap["recv"]["mos"] is None and snap["send"]["packets_sent_rate_ps"] is None


def test_snapshot_with_figures(
    recv_cls: type[RtpReceiveStats], send_cls: type[RtpSendStats]
) -> None:
    send, recv = send_cls(), recv_cls(8000)
    send.close_interval(10.0)
    recv.close_interval(10.0)
    send.packets_sent, send.bytes_sent = 50, 50 * 172
    feed(recv, [q for q in range(50) if q != 7], start=10.0)
    send.close_interval(11.0)
    recv.close_interval(11.0)
    snap = metrics_snapshot(
        send, recv, Quality(rtt_ms=0.4, r_factor=92.1, mos=4.38), RemoteReport(jitter_ms=1.5)
    )
    assert snap["send"]["packets_sent_rate_ps"] == 50.0
    assert snap["send"]["bytes_sent_rate_bps"] == 50 * 172 * 8
    assert snap["recv"]["packets_lost"] == 1
    assert snap["recv"]["fraction_lost"] == 0.02
    assert snap["recv"]["packets_recv_rate_ps"] == 49.0
    assert snap["recv"]["mos"] == 4.38 and snap["remote"]["jitter_ms"] == 1.5
