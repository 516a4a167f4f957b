"""SRTP/SRTCP (RFC 3711) on RtpSessions: libsrtp contexts, the wire, a wrong key, a replay."""

from __future__ import annotations

import asyncio
import random
from typing import cast

import pytest

from sipswarm.engine.media_engine import MediaEngine
from sipswarm.engine.rtp_session import RtpSession
from sipswarm.engine.srtp import SrtpContext
from sipswarm.media.codecs import codec_by_name
from sipswarm.media.sdes import SUITES, SdesKeys
from sipswarm.media.sources import get_source
from tests.engine.test_media_ports_clock import free_even_range

LOCAL = "127.0.0.1"
KEY_A = bytes(range(30))
KEY_B = bytes(range(100, 130))
SUITE = SUITES["AES_CM_128_HMAC_SHA1_80"]
# V=2, PT 0, seq 1, ts 160, SSRC 0x01020304, 160 octets of payload
PLAIN = bytes([0x80, 0, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4]) + bytes(range(160))
RTCP_RR = bytes([0x80, 201, 0, 1, 1, 2, 3, 4])


def pair(suite_name: str = "AES_CM_128_HMAC_SHA1_80") -> tuple[SrtpContext, SrtpContext]:
    suite = SUITES[suite_name]
    a, b = bytes(range(suite.key_salt_len)), bytes(range(100, 100 + suite.key_salt_len))
    return SrtpContext(SdesKeys(suite, a, b, 1)), SrtpContext(SdesKeys(suite, b, a, 1))


@pytest.mark.parametrize("suite", list(SUITES))
def test_contexts_protect_and_unprotect_rtp_and_rtcp(suite: str) -> None:
    a, b = pair(suite)
    wire = a.protect_rtp(PLAIN)
    assert len(wire) == len(PLAIN) + SUITES[suite].tag_len == len(PLAIN) + a.overhead
    assert wire[:12] == PLAIN[:12] and wire[12:172] != PLAIN[12:]  # header clear, payload not
    assert b.unprotect_rtp(wire) == PLAIN
    assert b.unprotect_rtcp(a.protect_rtcp(RTCP_RR)) == RTCP_RR
    assert b.metrics() == {"srtp_auth_failures": 0, "srtp_replays": 0, "srtp_errors": 0}


def test_failures_are_counted_never_raised() -> None:
    a, b = pair()
    first = a.protect_rtp(PLAIN)
    tampered = first[:-1] + bytes([first[-1] ^ 1])
    assert b.unprotect_rtp(tampered) is None  # RFC 3711 §3.4: authentication before anything
    assert b.unprotect_rtp(first) == PLAIN
    assert b.unprotect_rtp(first) is None  # §3.3.2 replay list
    assert b.unprotect_rtp(b"\x80") is None
    assert b.unprotect_rtcp(a.protect_rtcp(RTCP_RR)[:-2] + b"\0\0") is None
    assert b.metrics() == {"srtp_auth_failures": 2, "srtp_replays": 1, "srtp_errors": 1}
    stranger = SrtpContext(SdesKeys(SUITE, KEY_A, KEY_B, 1))  # expects the wrong key
    assert stranger.unprotect_rtp(a.protect_rtp(PLAIN[:3] + b"\x02" + PLAIN[4:])) is None
    assert stranger.auth_failures == 1
    same = b.rekeyed(b.keys)
    other = b.rekeyed(SdesKeys(SUITE, KEY_A, KEY_A, 2))
    assert same is b and other is not b and other.metrics() == b.metrics()


class CaptureRelay(asyncio.DatagramProtocol):
    """Forward every datagram to ``target``; keep them; send datagram ``repeat`` twice."""

    def __init__(self, target: tuple[str, int], repeat: int | None = None) -> None:
        self.target = target
        self.repeat = repeat
        self.seen: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.seen.append(data)
        self.transport.sendto(data, self.target)
        if len(self.seen) - 1 == self.repeat:
            self.transport.sendto(data, self.target)


async def open_pair(engine: MediaEngine) -> tuple[RtpSession, RtpSession]:
    codec = codec_by_name("PCMU")
    source = get_source("tone", {"frequency_hz": 1000}, codec, 20)
    return (
        await engine.open_session(codec, 20, source),
        await engine.open_session(codec, 20, source),
    )


async def relay_to(port: int, repeat: int | None = None) -> tuple[CaptureRelay, int]:
    loop = asyncio.get_running_loop()
    relay = CaptureRelay((LOCAL, port), repeat)
    transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=(LOCAL, 0))
    return relay, transport.get_extra_info("sockname")[1]


@pytest.mark.timeout(30)
def test_sessions_exchange_srtp_and_srtcp_through_a_relay() -> None:
    async def run() -> None:
        engine = MediaEngine(free_even_range(4), rand=random.Random(3))
        engine.start()
        a, b = await open_pair(engine)
        relay, relay_port = await relay_to(b.local_port, repeat=20)
        ka = SrtpContext(SdesKeys(SUITE, KEY_A, KEY_B, 1))
        kb = SrtpContext(SdesKeys(SUITE, KEY_B, KEY_A, 1))
        a.start((LOCAL, relay_port), (LOCAL, b.local_rtcp_port), srtp=ka)
        b.start((LOCAL, a.local_port), None, srtp=kb)
        # RTT needs an SR one way and a report block with its LSR back: ~2 RTCP intervals (A.7)
        for _ in range(150):
            await asyncio.sleep(0.1)
            if a.quality.rtt_ms is not None and b.quality.rtt_ms is not None:
                break
        for s in (a, b):
            s.set_sending(False)
        await asyncio.sleep(0.3)
        source = get_source("tone", {"frequency_hz": 1000}, codec_by_name("PCMU"), 20)
        wire = relay.seen[5]
        assert len(wire) == 172 + 10  # RTP packet + HMAC-SHA1-80 tag
        assert wire[0] == 0x80 and wire[1] & 0x7F == 0  # RTP header in clear (RFC 3711 §3.1)
        assert wire[12:172] != source.frame(5)  # payload encrypted
        check = SrtpContext(SdesKeys(SUITE, KEY_B, KEY_A, 1))
        plain = check.unprotect_rtp(wire)
        assert plain is not None and plain[12:] == source.frame(5)
        sa, sb = a.snapshot(), b.snapshot()
        assert sb["recv"]["packets_received"] == sa["send"]["packets_sent"] > 150
        assert sa["recv"]["packets_received"] == sb["send"]["packets_sent"] > 150
        for snap in (sa, sb):
            recv = snap["recv"]
            assert recv["packets_lost"] == 0 and recv["mos"] >= 4.3, recv
            assert recv["srtp_auth_failures"] == 0 and recv["srtp_errors"] == 0
            assert recv["rtt_ms"] is not None  # SRTCP both ways: SR/RR with LSR/DLSR
            assert snap["send"]["bytes_sent"] == 172 * snap["send"]["packets_sent"]
        assert sb["recv"]["srtp_replays"] == 1 and sb["recv"]["duplicate_packets"] == 0
        assert a.rtcp_received >= 1 and b.rtcp_received >= 1
        engine.close_session(a, "done")  # SRTCP BYE
        await asyncio.sleep(0.2)
        assert b.remote_bye
        await engine.close()

    asyncio.run(run())


@pytest.mark.timeout(30)
def test_wrong_key_counts_auth_failures_and_stops_cleanly() -> None:
    async def run() -> None:
        engine = MediaEngine(free_even_range(4), rand=random.Random(4))
        engine.start()
        a, b = await open_pair(engine)
        a.start((LOCAL, b.local_port), None, srtp=SrtpContext(SdesKeys(SUITE, KEY_A, KEY_B, 1)))
        wrong = bytes([KEY_A[0] ^ 0x80]) + KEY_A[1:]
        b.start((LOCAL, a.local_port), None, srtp=SrtpContext(SdesKeys(SUITE, KEY_B, wrong, 1)))
        await asyncio.sleep(1.5)
        a.set_sending(False)
        await asyncio.sleep(0.2)
        sb = b.snapshot()["recv"]
        sent = a.snapshot()["send"]["packets_sent"]
        assert sb["packets_received"] == 0 and sb["srtp_auth_failures"] >= sent > 50
        assert a.snapshot()["recv"]["packets_received"] > 50  # the other way is fine
        engine.close_session(a)
        engine.close_session(b)
        assert not b.remote_bye  # a's BYE failed authentication too
        await engine.close()

    asyncio.run(run())
