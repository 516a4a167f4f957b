"""tests/peers: every real-peer fixture starts, does its job, and stops leaving nothing behind."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from sipswarm.engine.transport import Address, TransportError, UdpTransport
from tests.peers.kamailio import Kamailio, KamailioOptions, options_ping
from tests.peers.media import write_ulaw_tone
from tests.peers.pjsua import PjsuaPeer, run_pjsua_call
from tests.peers.procs import LOOPBACK
from tests.peers.relay import UdpRelay
from tests.peers.sipp import SippUas, run_sipp_register, run_sipp_uac

pytestmark = pytest.mark.peers


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ---------------------------------------------------------------- Kamailio


def test_private_kamailio_starts_answers_and_stops_cleanly(
    kamailio_factory: Callable[[KamailioOptions], Kamailio],
) -> None:
    kam = kamailio_factory(KamailioOptions(auth=False, tls=False, children=1, tcp_children=1))
    reply = options_ping(kam.address("udp"))
    assert reply is not None and reply.startswith(b"SIP/2.0 200")
    children = kam.process.note_descendants()
    assert len(children) >= 2  # kamailio forks its workers
    workdir = kam.workdir
    kam.stop()
    assert _gone(kam.pid) and all(_gone(pid) for pid in children)
    assert not workdir.exists()
    assert options_ping(kam.address("udp"), timeout=0.2) is None


def test_kamailio_requires_digest_auth_and_routes_to_registered_uas(
    kamailio: Kamailio, sipp_uas: Callable[..., SippUas], tmp_path: Path
) -> None:
    uas = sipp_uas("answer")
    reg = run_sipp_register(tmp_path, kamailio.address(), [("1901", "secret1901")], uas.address)
    assert (reg.returncode, reg.stats.successful) == (0, 1)
    assert kamailio.contacts("1901") == [f"sip:1901@{uas.address[0]}:{uas.address[1]}"]
    ok = run_sipp_uac(
        tmp_path, kamailio.address(), calls=3, rate=20, accounts=[("1001", "1901", "secret1001")]
    )
    assert (ok.returncode, ok.stats.successful, ok.stats.failed) == (0, 3, 0)
    bad = run_sipp_uac(tmp_path, kamailio.address(), accounts=[("1002", "1901", "wrong")])
    assert (bad.returncode, bad.stats.successful, bad.stats.failed) == (1, 0, 1)


def test_kamailio_extra_users_register(kamailio: Kamailio, tmp_path: Path) -> None:
    contact = (LOOPBACK, 5999)  # only stored, never contacted
    reg = run_sipp_register(
        tmp_path, kamailio.address(), [("alice", kamailio.password("alice"))], contact
    )
    assert reg.stats.successful == 1
    assert kamailio.contacts("alice") == ["sip:alice@127.0.0.1:5999"]


# ---------------------------------------------------------------- SIPp UAS modes, raw over UDP


# A Via below ours, as a proxy's INVITE has: the UAS must return it in every response,
# including the 487 it sends after a CANCEL that carries only the top Via (RFC 3261 §9.2).
LOWER_VIA = "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKlower;rport"


def _invite(local: Address, target: Address, branch: str) -> bytes:
    sdp = "v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    sdp += "m=audio 40000 RTP/AVP 0\r\n"
    return (
        f"INVITE sip:service@{target[0]}:{target[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch={branch}\r\n{LOWER_VIA}\r\n"
        f"From: <sip:raw@127.0.0.1>;tag=raw1\r\nTo: <sip:service@{target[0]}>\r\n"
        f"Call-ID: {branch}@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:raw@{local[0]}:{local[1]}>\r\nMax-Forwards: 70\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()


def _in_dialog(
    method: str, local: Address, target: Address, branch: str, to: str, cseq: int
) -> bytes:
    return (
        f"{method} sip:service@{target[0]}:{target[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch={branch}\r\n"
        f"From: <sip:raw@127.0.0.1>;tag=raw1\r\nTo: {to}\r\n"
        f"Call-ID: {branch.split('-')[0]}@127.0.0.1\r\nCSeq: {cseq} {method}\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _header(message: bytes, name: str) -> str:
    for line in message.decode().split("\r\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in {message!r}")


async def _exchange(uas: Address, script: Callable[..., Any]) -> list[bytes]:
    """Open a UDP transport, run ``script(send, received)``, return the status lines."""
    got: list[bytes] = []
    arrived = asyncio.Event()

    def on_message(data: bytes, remote: Address) -> None:
        got.append(data)
        arrived.set()

    def on_error(error: TransportError) -> None:
        raise AssertionError(error)

    transport = await UdpTransport.open(on_message, on_error)

    async def until(code: bytes, method: str = "INVITE") -> bytes:
        """The first response with status ``code`` to a request of ``method``."""
        while True:
            for message in got:
                if message.startswith(b"SIP/2.0 " + code) and _header(message, "CSeq").endswith(
                    " " + method
                ):
                    return message
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 5)

    try:
        await script(transport, until)
    finally:
        transport.close()
    return [m.split(b"\r\n", 1)[0] for m in got]


@pytest.mark.parametrize("mode", ["answer", "busy", "ring"])
def test_sipp_uas_modes_answer_a_raw_invite(sipp_uas: Callable[..., SippUas], mode: str) -> None:
    uas = sipp_uas(mode)
    target = uas.address

    async def script(t: UdpTransport, until: Callable[[bytes], Any]) -> None:
        branch = f"z9hG4bK{mode}{t.local_address[1]}"
        t.send(_invite(t.local_address, target, branch), target)
        if mode == "answer":
            ok = await until(b"200")
            to = _header(ok, "To")
            t.send(_in_dialog("ACK", t.local_address, target, branch + "-a", to, 1), target)
            t.send(_in_dialog("BYE", t.local_address, target, branch + "-b", to, 2), target)
            bye_ok = await until(b"200", "BYE")
            assert _header(bye_ok, "CSeq") == "2 BYE"
        elif mode == "busy":
            busy = await until(b"486")
            t.send(
                _in_dialog("ACK", t.local_address, target, branch, _header(busy, "To"), 1), target
            )
        else:
            ringing = await until(b"180")
            to = _header(ringing, "To").split(";tag=")[0]
            t.send(_in_dialog("CANCEL", t.local_address, target, branch, to, 1), target)
            await until(b"200", "CANCEL")
            terminated = await until(b"487")
            assert _header(terminated, "CSeq") == "1 INVITE"
            assert LOWER_VIA.split(": ", 1)[1] in terminated.decode()
            ack = _in_dialog("ACK", t.local_address, target, branch, _header(terminated, "To"), 1)
            t.send(ack, target)
        await asyncio.sleep(0.2)

    lines = asyncio.run(asyncio.wait_for(_exchange(target, script), 20))
    expected = {
        "answer": [b"SIP/2.0 180 Ringing", b"SIP/2.0 200 OK"],
        "busy": [b"SIP/2.0 486 Busy Here"],
        "ring": [b"SIP/2.0 180 Ringing", b"SIP/2.0 200 OK", b"SIP/2.0 487 Request Terminated"],
    }[mode]
    assert lines[: len(expected)] == expected
    pid = uas.process.pid
    uas.stop()
    assert _gone(pid)
    stats = uas.stats()
    assert stats is not None and stats.successful == 1 and stats.failed == 0


def test_sipp_uac_to_uas_through_lossy_relay(
    sipp_uas: Callable[..., SippUas], udp_relay: Callable[..., UdpRelay], tmp_path: Path
) -> None:
    uas = sipp_uas("answer")
    requests = (b"INVITE ", b"BYE ")
    relay = udp_relay(uas.address, drop_every=2, delay=0.01, match=lambda d: d.startswith(requests))
    run = run_sipp_uac(tmp_path, relay.address, calls=2, rate=10, timeout=30)
    # every second INVITE/BYE is lost; the UAC's retransmissions (RFC 3261 §17.1) recover
    assert (run.stats.successful, run.stats.failed) == (2, 0)
    assert relay.stats["dropped"] >= 2
    assert run.stats.retransmissions >= relay.stats["dropped"]


# ---------------------------------------------------------------- relay alone


def test_relay_drops_every_nth_and_delays() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind((LOOPBACK, 0))
        client.bind((LOOPBACK, 0))
        server.settimeout(2)
        with UdpRelay(server.getsockname(), drop_every=4, delay=0.05) as relay:
            sent_at = time.monotonic()
            for i in range(12):
                client.sendto(b"%d" % i, relay.address)
            received = [server.recvfrom(100) for _ in range(9)]
            elapsed = time.monotonic() - sent_at
            server.sendto(b"back", received[0][1])
            client.settimeout(2)
            assert client.recvfrom(100) == (b"back", relay.address)
        assert [int(d) for d, _ in received] == [0, 1, 2, 4, 5, 6, 8, 9, 10]
        assert elapsed >= 0.05  # nothing arrives before its delay
        assert relay.stats == {"to_target": 9, "to_client": 1, "dropped": 3}


# ---------------------------------------------------------------- pjsua2


def test_pjsua_answers_and_counts_rtp_from_sipp(
    pjsua_peer: Callable[..., PjsuaPeer], tmp_path: Path
) -> None:
    peer = pjsua_peer("answer", "--calls", "1")
    tone = write_ulaw_tone(tmp_path / "tone.ul")
    run = run_sipp_uac(tmp_path, peer.sip_address, hold_ms=1500, rtp_file=tone, timeout=20)
    assert run.stats.successful == 1
    events = peer.wait_done(15)
    [end] = [e for e in events if e["event"] == "call_end"]
    assert end["connected"] and end["last_status"] == 200
    assert end["rtp_rx_packets"] >= 25  # 50 packets/s for 1.5 s, sampled while up
    assert events[-1] == {"event": "done", "timed_out": False, "calls_ended": 1}
    assert _gone(peer.process.pid)


def test_pjsua_calls_sipp_echo_uas(sipp_uas: Callable[..., SippUas], tmp_path: Path) -> None:
    pytest.importorskip("pjsua2")
    uas = sipp_uas("answer", rtp_echo=True)
    events = run_pjsua_call(tmp_path, f"sip:service@{uas.address[0]}:{uas.address[1]}", hold=1.5)
    [end] = [e for e in events if e["event"] == "call_end"]
    assert end["connected"] and end["rtp_tx_packets"] >= 25
    assert end["rtp_rx_packets"] >= 25  # our own tone, echoed by sipp
    states = [e["state"] for e in events if e["event"] == "state"]
    assert "CONFIRMED" in states and states[-1] == "DISCONNECTED"
