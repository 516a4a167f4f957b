"""SDP offer/answer and G.711 media against pjsua2 (a real, independent SIP UA).

The test is a minimal UAC over a raw UDP socket: it INVITEs pjsua with ``build_offer``,
applies pjsua's answer with ``apply_answer``, sends RTP with the negotiated codec and payload
type from a cached source, and checks that pjsua received it and that pjsua's RTP arrives at
our port with the agreed payload type. pjsua hangs up after 2 s; we answer its BYE.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest

from sipswarm.media.codecs import OPUS, PCMA, PCMU
from sipswarm.media.sdp import LocalMedia, apply_answer, build_offer, parse_sdp
from sipswarm.media.sources import get_source

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]


def _request(method: str, uri: str, sip_port: int, to: str, cseq: int, body: bytes = b"") -> bytes:
    headers = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bK-{method.lower()}-{cseq};rport",
        "Max-Forwards: 70",
        "From: <sip:sipswarm@127.0.0.1>;tag=swarm1",
        f"To: {to}",
        "Call-ID: sdp-interop-1@127.0.0.1",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:sipswarm@127.0.0.1:{sip_port}>",
    ]
    if body:
        headers.append("Content-Type: application/sdp")
    headers.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def _header(msg: str, name: str) -> str:
    m = re.search(rf"^{name}:\s*(.*)$", msg, re.MULTILINE | re.IGNORECASE)
    assert m, f"no {name} in {msg[:200]!r}"
    return m.group(1).strip()


def _reply_200(request: str) -> bytes:
    keep = [line for line in request.split("\r\n\r\n")[0].split("\r\n")[1:]
            if line.split(":")[0].lower() in ("via", "from", "to", "call-id", "cseq")]  # fmt: skip
    return ("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode()


def _rtp(pt: int, seq: int, ts: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, 0x5EED) + payload


def _open(kind: int = socket.SOCK_DGRAM) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.02)
    return sock


def test_offer_to_pjsua_and_exchange_g711(pjsua_peer: Callable[..., Any]) -> None:
    peer = pjsua_peer("answer", "--calls", "1", "--hold", "2")
    sip, rtp = _open(), _open()
    sip_port, rtp_port = sip.getsockname()[1], rtp.getsockname()[1]
    try:
        # pjsua here enables PCMU only: the answer must pick it out of our list
        local = LocalMedia("127.0.0.1", rtp_port, [PCMA, OPUS, PCMU])
        offer = build_offer(local, session_id=4242)
        target = f"sip:pjsua@{peer.sip_address[0]}:{peer.sip_address[1]}"
        to = f"<{target}>"
        sip.sendto(_request("INVITE", target, sip_port, to, 1, offer.serialise()), peer.sip_address)
        deadline = time.monotonic() + 10
        ok = ""
        while not ok and time.monotonic() < deadline:
            try:
                msg = sip.recv(65535).decode()
            except TimeoutError:
                continue
            if msg.startswith("SIP/2.0 200"):
                ok = msg
        assert ok, "pjsua did not answer the INVITE with 200"
        media = apply_answer(offer, parse_sdp(ok.split("\r\n\r\n", 1)[1].encode()))
        assert media.codec.name == "PCMU" and media.payload_type == 0
        assert media.direction == "sendrecv" and media.remote_rtp[0] == "127.0.0.1"
        contact = re.sub(r"^.*<|>.*$", "", _header(ok, "Contact"))
        sip.sendto(_request("ACK", contact, sip_port, _header(ok, "To"), 1), peer.sip_address)

        source = get_source("tone", {"frequency_hz": 440}, media.codec, media.ptime_ms)
        received: list[tuple[int, tuple[str, int]]] = []
        bye_seen = False
        index = 0
        start = time.monotonic()
        while time.monotonic() - start < 6 and not bye_seen:
            while index < (time.monotonic() - start) / (media.ptime_ms / 1000):
                packet = _rtp(media.payload_type, index, index * source.timestamp_step,
                              source.frame(index))  # fmt: skip
                rtp.sendto(packet, media.remote_rtp)
                index += 1
            try:
                data, addr = rtp.recvfrom(2048)
                received.append((data[1] & 0x7F, addr))
            except TimeoutError:
                pass
            try:
                msg = sip.recv(65535).decode()
            except TimeoutError:
                continue
            if msg.startswith("BYE "):
                sip.sendto(_reply_200(msg), peer.sip_address)
                bye_seen = True
        assert bye_seen, "pjsua did not hang up after its 2 s hold"
        end = next(e for e in peer.wait_done(15) if e["event"] == "call_end")
    finally:
        sip.close()
        rtp.close()
    assert end["connected"] is True
    assert end["rtp_rx_packets"] > 50, end  # pjsua decoded our PCMU stream
    assert len(received) > 50
    assert {pt for pt, _ in received} == {media.payload_type}
    assert {addr for _, addr in received} == {media.remote_rtp}  # symmetric RTP (RFC 4961)
