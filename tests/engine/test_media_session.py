"""Two RtpSessions exchanging G.711 on loopback: clean for 10 s, and through a lossy relay."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import uvloop

from sipswarm.engine.media_engine import MediaEngine
from sipswarm.engine.rtp_session import RtpSession
from sipswarm.errors import InvalidState
from sipswarm.media.codecs import codec_by_name
from sipswarm.media.sources import get_source
from tests.engine.media_relay import (
    UdpRelay,
    expected_gaps,
    expected_loss,
    expected_out_of_order,
    reference_jitter,
)
from tests.engine.test_media_ports_clock import free_even_range

LOCAL = "127.0.0.1"


async def open_pair(engine: MediaEngine, name: str = "PCMU") -> tuple[RtpSession, RtpSession]:
    codec = codec_by_name(name)
    source = get_source("tone", {"frequency_hz": 1000}, codec, 20)
    a = await engine.open_session(codec, 20, source, dscp=46)
    b = await engine.open_session(codec, 20, source, dscp=46)
    return a, b


async def drain(*sessions: RtpSession) -> None:
    """Stop sending and let every packet in flight arrive."""
    for s in sessions:
        s.set_sending(False)
    await asyncio.sleep(0.3)


@pytest.mark.timeout(60)
def test_clean_loopback_ten_seconds_both_ways() -> None:
    async def run() -> None:
        engine = MediaEngine(free_even_range(4), rand=random.Random(7))
        engine.start()
        a, b = await open_pair(engine)
        wall_start = time.time()
        a.start((LOCAL, b.local_port), (LOCAL, b.local_rtcp_port))
        b.start((LOCAL, a.local_port), None)  # RTCP to port + 1 by default
        c = await engine.open_session(
            codec_by_name("PCMU"), 20, get_source("silence", {}, codec_by_name("PCMU"), 20)
        )
        engine.close_session(c)
        with pytest.raises(InvalidState, match="cannot start in state stopped"):
            c.start((LOCAL, b.local_port), None)
        await asyncio.sleep(10.0)
        clock = engine.take_clock_stats()
        await drain(a, b)
        for x, y in ((a, b), (b, a)):
            snap = x.snapshot()
            send, recv = y.snapshot()["send"], snap["recv"]
            assert 490 <= send["packets_sent"] <= 510  # 50 packets/s for 10 s
            assert recv["packets_received"] == send["packets_sent"]
            assert recv["bytes_received"] == send["bytes_sent"] == 172 * send["packets_sent"]
            assert recv["packets_lost"] == 0 and recv["fraction_lost"] == 0.0
            for key in ("duplicate_packets", "out_of_order_packets", "sequence_number_gaps"):
                assert recv[key] == 0, key
            assert recv["ssrc_switches"] == 0
            assert recv["jitter_ms"] < 3.0  # loopback: scheduling noise only
            assert recv["mos"] >= 4.3 and recv["r_factor"] > 88
            assert recv["rtt_ms"] is not None and 0 < recv["rtt_ms"] < 50
            assert 40 <= recv["packets_recv_rate_ps"] <= 60
            assert send["rtcp_sr_sent"] >= 1
            assert snap["remote"]["packets_lost"] == 0
            assert snap["remote"]["jitter_ms"] is not None
            first = x.first_rtp_ts
            assert first is not None and wall_start * 1000 <= first <= wall_start * 1000 + 1000
        assert clock.sends >= 980 and clock.lateness_p99_ms is not None
        assert clock.skipped_ticks == 0
        engine.close_session(a)  # stops with RTCP BYE: b hears it
        await asyncio.sleep(0.2)
        assert b.remote_bye
        await engine.close()
        assert engine.pool.in_use == 0 and not engine.sessions

    uvloop.run(run())


@pytest.mark.timeout(60)
def test_rtcp_mux_and_garbage() -> None:
    async def run() -> None:
        engine = MediaEngine(free_even_range(4), rand=random.Random(8))
        engine.start()
        a, b = await open_pair(engine, "PCMA")
        loop = asyncio.get_running_loop()
        junk, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(LOCAL, 0)
        )
        a.start((LOCAL, b.local_port), None, rtcp_mux=True)
        b.start((LOCAL, a.local_port), None, rtcp_mux=True)
        assert a.local_rtcp_port == a.local_port
        # queued before b's first packet connects a's socket (later, a stranger's are dropped)
        for data in (b"", b"\x00" * 40, b"\x80\xc8\x00\x01" + b"\x00" * 4):
            junk.sendto(data, (LOCAL, a.local_port))
        await asyncio.sleep(6.0)  # RTCP's first interval is 1-3.7 s after start
        await drain(a, b)
        junk.close()
        for s in (a, b):
            snap = s.snapshot()
            assert snap["recv"]["packets_lost"] == 0
            assert snap["send"]["rtcp_sr_sent"] >= 1 and s.rtcp_received >= 1
            assert snap["remote"]["packets_lost"] == 0
        # the side whose SR the peer heard before reporting has an RTT (RFC 3550 §6.4.1)
        assert a.quality.rtt_ms is not None or b.quality.rtt_ms is not None
        assert a.recv_stats.invalid_packets == 1  # the 40 zero bytes; the empty one is not sent
        assert a.rtcp_invalid == 1  # the truncated SR under rtcp-mux
        await engine.close()

    uvloop.run(run())


@pytest.mark.timeout(60)
def test_loss_reorder_and_jitter_through_a_relay() -> None:
    def policy(i: int) -> float | None:
        if i % 10 == 9:
            return None  # drop every 10th
        if i % 7 == 3:
            return 0.03  # hold 30 ms: the next packet overtakes it
        return 0.0

    async def run() -> None:
        engine = MediaEngine(free_even_range(4), rand=random.Random(9))
        engine.start()
        a, b = await open_pair(engine)
        relay = UdpRelay((LOCAL, b.local_port), policy, fifo=False)
        relay_port = await relay.open()
        a.start((LOCAL, relay_port), (LOCAL, b.local_rtcp_port))
        b.start((LOCAL, a.local_port), None)
        await asyncio.sleep(4.0)
        await drain(a, b)
        relay.close()
        log, recv = relay.log, b.recv_stats
        assert len(log.dropped) >= 19
        assert recv.packets_received == len(log.forwarded)
        assert recv.packets_lost == expected_loss(log)
        assert recv.out_of_order_packets == expected_out_of_order(log) > 0
        assert recv.sequence_number_gaps == expected_gaps(log)
        assert recv.duplicate_packets == 0
        _, ref_max = reference_jitter(log, 8000)
        assert recv.jitter_max * 1000 / 8000 == pytest.approx(ref_max, rel=0.15, abs=0.3)
        assert a.recv_stats.packets_lost == 0  # the way back is direct
        b.tick_second(time.monotonic())
        await engine.close()

    uvloop.run(run())


@pytest.mark.timeout(60)
def test_dtmf_both_ways_in_band_of_the_stream() -> None:
    async def run() -> None:
        engine = MediaEngine(free_even_range(4), rand=random.Random(10))
        engine.start()
        a, b = await open_pair(engine)
        a.start((LOCAL, b.local_port), None, dtmf_payload_type=101)
        b.start((LOCAL, a.local_port), None)
        with pytest.raises(InvalidState, match="telephone-event"):
            b.send_dtmf("1")
        b.start((LOCAL, a.local_port), None, dtmf_payload_type=101)  # re-INVITE adds it
        await asyncio.sleep(0.3)
        a.send_dtmf("12#")
        b.send_dtmf("9")
        await asyncio.sleep(1.5)  # 3 digits: 3 x (100 ms tone + 40 ms end repeats + 100 ms gap)
        await drain(a, b)
        assert [e.digit for e in b.dtmf_events_received()] == ["1", "2", "#"]
        assert [e.digit for e in a.dtmf_events_received()] == ["9"]
        assert b.dtmf_events_received() == []
        # 100 ms at 20 ms: 4 updates + 3 end packets per digit (RFC 4733 §2.5.1.4)
        assert a.dtmf_packets_sent == 21 and b.dtmf_packets_sent == 7
        for x, y in ((a, b), (b, a)):
            recv = x.recv_stats
            assert recv.packets_received == y.send_stats.packets_sent
            assert recv.packets_lost == 0 and recv.out_of_order_packets == 0
            assert recv.jitter_ms < 3.0  # event timestamps do not feed the jitter
        await engine.close()

    uvloop.run(run())
