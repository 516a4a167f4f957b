"""The C hot path in the engine against the pure-Python one, on real sockets.

Each test runs a session on an engine with the C path (``MediaEngine(native=True)``)
and one on an engine forced to Python (``native=False``), gives both the same
traffic from a plain UDP socket, and compares what they sent (byte for byte)
and what they counted. Sends are driven by calling the session's clock
callback with a fake schedule, so both sessions build the same frames.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from sipswarm import _native
from sipswarm.engine.media_engine import MediaEngine
from sipswarm.engine.rtp_session import RtpSession
from sipswarm.engine.switchable import SwitchableSource
from sipswarm.media.codecs import codec_by_name
from sipswarm.media.dtmf import build_event_payload
from sipswarm.media.rtcp import build_bye
from sipswarm.media.rtp import build_rtp
from sipswarm.media.sources import get_source
from sipswarm.media.stats import RtpReceiveStats
from tests.engine.test_media_ports_clock import free_even_range

LOCAL = "127.0.0.1"
SSRC = 0x5EED0001
DTMF_PT = 101

pytestmark = pytest.mark.skipif(not _native.NATIVE, reason="the C path is not active")


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCAL, 0))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


async def until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def connected_pair(native: bool, seed: int) -> tuple[MediaEngine, RtpSession, socket.socket]:
    """An engine and one session connected to a plain socket (``peer``), not on the clock."""
    engine = MediaEngine(free_even_range(2), rand=random.Random(seed), native=native)
    engine.start()
    codec = codec_by_name("PCMU")
    source = get_source("tone", {"frequency_hz": 400}, codec, 20)
    session = await engine.open_session(codec, 20, source)
    peer = udp_socket()
    session.start(peer.getsockname(), None, send=False, dtmf_payload_type=DTMF_PT)
    peer.sendto(build_rtp(0, 1, 0, SSRC, b"\xff" * 160), (LOCAL, session.local_port))
    await until(lambda: session._connected)
    assert session.native is native and session._fast.polled is native
    return engine, session, peer


def both(test: Callable[[bool], Awaitable[dict[str, object]]]) -> None:
    """Run ``test`` on the C path and on the Python path; their results must be equal."""

    async def run() -> None:
        c = await test(True)
        py = await test(False)
        assert c == py

    uvloop.run(run())


@pytest.mark.timeout(30)
def test_sent_bytes_identical_through_dtmf_and_back() -> None:
    async def run(native: bool) -> dict[str, object]:
        engine, session, peer = await connected_pair(native, seed=7)
        due = 100.0
        for i in range(60):
            if i == 10:
                session.send_dtmf("5", duration_ms=60, gap_ms=40)
                assert session._tx.fd == -1  # DTMF playback goes through Python
            session._clock_cb(due + i * 0.02)
            await asyncio.sleep(0)
        if native:
            assert session._tx.fd == session.allocation.rtp_sock.fileno()  # back in C
        await asyncio.sleep(0.1)
        sent = drain(peer)
        stats = session.send_stats
        figures = {
            "packets": sent,
            "counts": (stats.packets_sent, stats.bytes_sent, stats.send_errors),
            "dtmf": session.dtmf_packets_sent,
            "rtp_ts_at": session.rtp_timestamp_at(due + 59 * 0.02 + 0.005),
            "frame_index": session._tx.frame_index,
        }
        assert len(sent) == stats.packets_sent > 55 and session.dtmf_packets_sent > 3
        peer.close()
        await engine.close()
        return figures

    both(run)


def scripted_traffic() -> list[bytes]:
    """Reorder, duplicates, a gap, garbage, RFC 4733 events, an SSRC switch."""
    seqs = [2, 3, 4, 6, 5, 5, 7, 8, 12, 9, 13, 14, 14, 15]
    out = [build_rtp(0, s, s * 160, SSRC, b"\xff" * 160) for s in seqs]
    out.insert(3, b"\x80\x00garbage")
    out.insert(6, b"")
    for i, end in enumerate((False, False, True)):
        payload = build_event_payload(7, end, 10, 160 * (i + 1))
        out.append(build_rtp(DTMF_PT, 16 + i, 16 * 160, SSRC, payload, marker=i == 0))
    out += [build_rtp(0, 900 + s, s * 160, SSRC + 1, b"\xff" * 160) for s in range(5)]
    return out


@pytest.mark.timeout(30)
def test_received_figures_identical() -> None:
    async def run(native: bool) -> dict[str, object]:
        engine, session, peer = await connected_pair(native, seed=8)
        traffic = scripted_traffic()
        for data in traffic:
            peer.sendto(data, (LOCAL, session.local_port))
        r = session.recv_stats
        await until(lambda: r.packets_received + r.invalid_packets >= len(traffic) - 1)
        await asyncio.sleep(0.05)
        figures = {
            name: getattr(r, name)
            for name in (
                "packets_received",
                "bytes_received",
                "invalid_packets",
                "duplicate_packets",
                "out_of_order_packets",
                "sequence_number_gaps",
                "ssrc_switches",
                "packets_lost",
                "packets_expected",
                "ssrc",
            )
        }
        figures["events"] = [(e.digit, e.timestamp) for e in session.dtmf_events_received()]
        figures["socket_errors"] = session.socket_errors
        assert figures["events"] and figures["invalid_packets"] == 2
        peer.close()
        await engine.close()
        return figures

    both(run)


@pytest.mark.timeout(30)
def test_socket_moves_between_poller_and_loop() -> None:
    async def run() -> None:
        engine, session, peer = await connected_pair(True, seed=9)
        poller = engine._poller
        assert poller is not None and poller.registered == 1
        # rtcp-mux: RTCP arrives on the RTP socket and must reach the RTCP code
        session.start(peer.getsockname(), None, rtcp_mux=True, dtmf_payload_type=DTMF_PT)
        assert poller.registered == 0 and not session._fast.polled
        peer.sendto(build_bye(SSRC, "bye", cname="x"), (LOCAL, session.local_port))
        await until(lambda: session.remote_bye)
        session.start(peer.getsockname(), None, dtmf_payload_type=DTMF_PT)
        assert poller.registered == 1 and session._fast.polled
        other = udp_socket()  # a new remote: disconnected, read by the loop again
        session.start(other.getsockname(), None, dtmf_payload_type=DTMF_PT)
        assert poller.registered == 0 and session._tx.fd == -1
        other.sendto(build_rtp(0, 50, 0, SSRC + 7, b"\xff" * 160), (LOCAL, session.local_port))
        await until(lambda: session._fast.polled)  # the new peer proved its source: back in C
        engine.close_session(session)
        assert poller.registered == 0
        before = session.recv_stats.packets_received
        await asyncio.sleep(0.05)
        assert session.recv_stats.packets_received == before
        peer.close()
        other.close()
        await engine.close()

    uvloop.run(run())


@pytest.mark.timeout(10)
def test_poller_counts_garbage_and_survives_a_reused_descriptor() -> None:
    core = _native.core
    assert core is not None
    poller = core.Poller(max_events=1)  # one socket per poll: leftovers come next time
    stats = RtpReceiveStats(8000)
    errors: list[int] = []
    first = udp_socket()
    fd = first.fileno()
    poller.register(fd, stats, DTMF_PT, lambda data: None, lambda: errors.append(1))
    first.close()  # closed without unregister: the kernel drops it from the epoll
    sock = udp_socket()
    assert sock.fileno() == fd
    poller.register(fd, stats, DTMF_PT, lambda data: None, lambda: errors.append(1))
    sender = udp_socket()
    for data in (b"", b"\x80", b"\x00" * 2048, build_rtp(0, 1, 0, SSRC, b"\xff" * 160)):
        sender.sendto(data, sock.getsockname())
    for _ in range(200):
        if poller.packets >= 4:
            break
        poller.poll()
    assert (poller.packets, stats.invalid_packets, errors) == (4, 3, [])
    assert stats.ssrc == SSRC and stats.packets_received == 0  # on probation
    assert poller.unregister(fd) and not poller.unregister(fd) and poller.registered == 0
    poller.close()
    assert poller.poll() == 0 and poller.fileno() == -1
    sock.close()
    sender.close()


@pytest.mark.timeout(10)
def test_switchable_source_is_sent_in_c_as_switched_before_start() -> None:
    """The engine's endpoints wrap sources in a SwitchableSource pointed at the answer's codec."""

    async def run() -> None:
        engine = MediaEngine(free_even_range(2), rand=random.Random(3), native=True)
        engine.start()
        codec = codec_by_name("PCMU")
        tone = get_source("tone", {"frequency_hz": 1000}, codec, 20)
        source = SwitchableSource(get_source("silence", {}, codec, 20))
        session = await engine.open_session(codec, 20, source)
        source.switch(tone)  # what the endpoint does once the answer is known
        peer = udp_socket()
        session.start(peer.getsockname(), None, send=False)
        peer.sendto(build_rtp(0, 1, 0, SSRC, b"\xff" * 160), (LOCAL, session.local_port))
        await until(lambda: session._connected)
        assert session._tx.fd == session.allocation.rtp_sock.fileno()  # the C sender runs
        for i in range(5):
            session._clock_cb(10.0 + i * 0.02)
        await asyncio.sleep(0.05)
        assert [p[12:] for p in drain(peer)] == [tone.frame(i) for i in range(5)]
        peer.close()
        await engine.close()

    uvloop.run(run())
