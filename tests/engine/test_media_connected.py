"""Connected RTP sockets: when a session connects, what it then filters, and when it must not.

Real sockets on 127.0.0.1; a plain UDP socket plays the stranger or the
asymmetric peer, sending valid RTP built with ``build_rtp``.
"""

from __future__ import annotations

import asyncio
import random
import socket

import pytest
import uvloop

from sipswarm.engine.media_engine import MediaEngine
from sipswarm.engine.ports import disconnect_udp
from sipswarm.engine.rtp_session import RtpSession
from sipswarm.media.codecs import codec_by_name
from sipswarm.media.rtp import build_rtp
from sipswarm.media.sources import get_source
from tests.engine.test_media_ports_clock import free_even_range

LOCAL = "127.0.0.1"


def peer_of(session: RtpSession) -> tuple[str, int] | None:
    """The address the session's RTP socket is connected to, None when unconnected."""
    try:
        addr = session.allocation.rtp_sock.getpeername()
    except OSError:
        return None
    return (addr[0], addr[1])


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCAL, 0))
    sock.setblocking(False)
    return sock


def send_rtp(sock: socket.socket, to: tuple[str, int], ssrc: int, count: int) -> None:
    for seq in range(count):
        sock.sendto(build_rtp(0, 100 + seq, 160 * seq, ssrc, b"\xff" * 160), to)


async def open_sessions(engine: MediaEngine, n: int) -> list[RtpSession]:
    codec = codec_by_name("PCMU")
    source = get_source("tone", {"frequency_hz": 1000}, codec, 20)
    return [await engine.open_session(codec, 20, source) for _ in range(n)]


@pytest.mark.timeout(30)
def test_symmetric_peer_connects_and_strangers_are_filtered() -> None:
    async def run() -> None:
        engine = MediaEngine(free_even_range(4), rand=random.Random(21))
        engine.start()
        a, b = await open_sessions(engine, 2)
        assert peer_of(a) is None  # nothing connects before the peer is heard
        a.start((LOCAL, b.local_port), None)
        b.start((LOCAL, a.local_port), None)
        await asyncio.sleep(0.3)
        assert peer_of(a) == (LOCAL, b.local_port)
        assert peer_of(b) == (LOCAL, a.local_port)
        stranger = udp_socket()
        send_rtp(stranger, (LOCAL, a.local_port), 0xABCD, 5)  # after connect: kernel drops
        await asyncio.sleep(0.3)
        for s in (a, b):
            s.set_sending(False)
        await asyncio.sleep(0.2)
        stranger.close()
        assert a.recv_stats.ssrc_switches == 0 and a.recv_stats.ssrc == b.ssrc
        assert a.recv_stats.packets_received == b.send_stats.packets_sent > 20
        assert b.recv_stats.packets_received == a.send_stats.packets_sent
        assert a.recv_stats.packets_lost == 0 and a.socket_errors == 0
        await engine.close()

    uvloop.run(run())


@pytest.mark.timeout(30)
def test_asymmetric_peer_stays_unconnected_and_counted() -> None:
    async def run() -> None:
        engine = MediaEngine(free_even_range(4), rand=random.Random(22))
        engine.start()
        (a,) = await open_sessions(engine, 1)
        sdp_port = udp_socket()  # what the peer's SDP names; its media comes from elsewhere
        media_from = udp_socket()
        a.start(sdp_port.getsockname(), None)
        send_rtp(media_from, (LOCAL, a.local_port), 0x1234, 10)
        await asyncio.sleep(0.2)
        assert peer_of(a) is None
        assert a.recv_stats.packets_received == 10 and a.recv_stats.ssrc == 0x1234
        assert sdp_port.recv(2048)[8:12] == a.ssrc.to_bytes(4, "big")  # we still send there
        await engine.close()
        sdp_port.close()
        media_from.close()

    uvloop.run(run())


@pytest.mark.timeout(30)
def test_latch_connects_to_the_source_and_restart_disconnects() -> None:
    async def run() -> None:
        engine = MediaEngine(free_even_range(6), rand=random.Random(23))
        engine.start()
        a, b, c = await open_sessions(engine, 3)
        nowhere = udp_socket()  # the address in the SDP, behind a NAT that rewrites it
        a.start(nowhere.getsockname(), None, latch=True)
        b.start((LOCAL, a.local_port), None)
        await asyncio.sleep(0.3)
        assert peer_of(a) == (LOCAL, b.local_port)  # latched (RFC 4961), then connected
        assert b.recv_stats.packets_received > 0  # our media now reaches the real source
        assert peer_of(b) == (LOCAL, a.local_port)
        a.start((LOCAL, c.local_port), None)  # re-INVITE: media moves to c
        assert peer_of(a) is None
        c.start((LOCAL, a.local_port), None)
        await asyncio.sleep(0.3)
        assert peer_of(a) == (LOCAL, c.local_port)
        assert c.recv_stats.packets_received > 0 and c.recv_stats.ssrc == a.ssrc
        assert a.local_port == a.allocation.rtp_sock.getsockname()[1]  # the port survived
        await engine.close()
        nowhere.close()

    uvloop.run(run())


def test_disconnect_keeps_the_bound_port() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    low, _ = free_even_range(1)
    sock.bind((LOCAL, low))
    sock.connect((LOCAL, 9))
    disconnect_udp(sock)
    with pytest.raises(OSError):
        sock.getpeername()
    assert sock.getsockname() == (LOCAL, low)
    sock.close()
    with pytest.raises(OSError):
        disconnect_udp(sock)  # fd -1: EBADF surfaces as OSError
