"""Signalling-only calls (``media.rtp: false``, docs/protocol.md): SDP, validation, real peers.

The unit part checks the SDP bytes and :class:`CallMedia` with no loop; the peer part runs
the engine against Kamailio (digest auth) and SIPp's UAS on 127.0.0.1 and checks that the
call completes, that the process bound no RTP socket while in the call (and, as the
control, that it does with ``rtp`` true), and that no media figures are reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from sipswarm.agent.assignment import validate_assignment
from sipswarm.engine.call_media import DISCARD_PORT, CallMedia
from sipswarm.errors import NegotiationError
from sipswarm.media.codecs import Codec, codec_by_name
from sipswarm.media.sdp import answered_media, apply_answer, build_answer, build_offer, parse_sdp
from tests.peers.kamailio import Kamailio
from tests.peers.sipp import SippUas, run_sipp_register

from .engine_harness import Collector, assignment, check_items, endpoint, make_engine


def _media(rtp: bool, srtp: str = "off") -> CallMedia:
    def never(*args: Any) -> Any:
        raise AssertionError("a signalling-only leg must not open or close RTP")

    return CallMedia(never, never, never, srtp=srtp, rtp=rtp, random_bytes=lambda n: b"k" * n)


PCMU, PCMA = codec_by_name("PCMU"), codec_by_name("PCMA")


# -- SDP and CallMedia, no loop ----------------------------------------------------------------


def test_signalling_only_offer_is_inactive_on_the_discard_port_with_the_codecs() -> None:
    media = _media(rtp=False)
    assert media.open_port() == DISCARD_PORT == 9
    offer = build_offer(media.local("127.0.0.1", DISCARD_PORT, [PCMU, PCMA], 20), session_id=7)
    assert offer.serialise() == (
        b"v=0\r\no=sipswarm 7 0 IN IP4 127.0.0.1\r\ns=sipswarm\r\nc=IN IP4 127.0.0.1\r\n"
        b"t=0 0\r\nm=audio 9 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n"
        b"a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        b"a=fmtp:101 0-16\r\na=ptime:20\r\na=rtcp:9\r\na=inactive\r\n"
    )
    assert media.metrics() is None


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("codecs", [[PCMU], [PCMA, PCMU]], ids=["PCMU", "PCMA+PCMU"])
def test_a_remembered_offer_is_the_built_offer_with_each_calls_session_id(
    address: str, codecs: list[Codec]
) -> None:
    for session_id in (1, 1_700_000_000_123, 42):  # the first builds, the others reuse
        media = _media(rtp=False)
        local = media.local(address, DISCARD_PORT, codecs, 30)
        sdp, body = media.offer(local, session_id)
        assert body == build_offer(local, session_id=session_id).serialise()
        assert f" {session_id} 0 IN IP".encode() in body
        assert [m.port for m in sdp.media] == [DISCARD_PORT]


@pytest.mark.parametrize(("rtp", "srtp"), [(True, "off"), (False, "sdes")])
def test_offers_with_a_port_or_keys_per_call_are_built_per_call(rtp: bool, srtp: str) -> None:
    bodies = set()
    for port in (40000, 40002):
        media = CallMedia(lambda *a: None, lambda *a: None, lambda *a: None, srtp=srtp, rtp=rtp)
        local = media.local("127.0.0.1", port, [PCMU], 20)
        sdp, body = media.offer(local, 5)
        assert body == sdp.serialise() and body == build_offer(local, session_id=5).serialise()
        bodies.add(body)
    assert len(bodies) == 2  # the RTP port, or the SDES keys, differ per leg


def test_a_real_leg_opens_nothing_without_await_and_offers_sendrecv() -> None:
    media = _media(rtp=True)
    assert media.open_port() is None  # the caller must await open()
    local = media.local("127.0.0.1", 40002, [PCMU], 20)
    assert local.direction == "sendrecv" and local.port == 40002 and local.rtcp_port is None


def test_signalling_only_answer_to_a_sendrecv_offer_is_inactive_and_negotiation_holds() -> None:
    peer = build_offer(_media(rtp=True).local("127.0.0.2", 30000, [PCMA, PCMU], 20), session_id=1)
    media = _media(rtp=False)
    answer = build_answer(peer, media.local("127.0.0.1", 9, [PCMU], 20, offer=False), session_id=2)
    body = answer.serialise()
    assert b"m=audio 9 RTP/AVP 0 101\r\n" in body and b"a=inactive\r\n" in body  # RFC 3264 6.1
    agreed = answered_media(peer, answer)
    assert agreed.codec.name == "PCMU" and not agreed.sending and not agreed.receiving
    media.start(agreed)  # kept, nothing started (the opener would raise)
    assert media.negotiated is agreed and not media.started and media.metrics() is None
    assert media.stop(answered=True) is None  # no "no RTP received" warning


def test_signalling_only_caller_applies_a_sendrecv_answer_without_sending() -> None:
    media = _media(rtp=False)
    offer = build_offer(media.local("127.0.0.1", 9, [PCMU], 20), session_id=3)
    answer = parse_sdp(
        b"v=0\r\no=- 1 1 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\nt=0 0\r\n"
        b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
    agreed = apply_answer(offer, answer)
    assert agreed.direction == "inactive" and agreed.remote_rtp == ("127.0.0.3", 6000)


def test_signalling_only_still_refuses_an_offer_without_a_common_codec() -> None:
    peer = build_offer(_media(rtp=True).local("127.0.0.2", 30000, [PCMA], 20), session_id=1)
    with pytest.raises(NegotiationError, match="no acceptable audio stream"):
        build_answer(peer, _media(rtp=False).local("127.0.0.1", 9, [PCMU], 20, offer=False),
                     session_id=2)  # fmt: skip


def test_signalling_only_with_sdes_stays_savp_with_keys() -> None:
    local = _media(rtp=False, srtp="sdes").local("127.0.0.1", 9, [PCMU], 20)
    assert local.proto == "RTP/SAVP" and local.crypto and local.direction == "inactive"


def _raw(media: dict[str, Any], actions: list[dict[str, Any]]) -> dict[str, Any]:
    ep = endpoint("v/1", "caller", target="sip:x@127.0.0.1")
    ep["media"].update(media)
    ep["actions"] = actions
    return {"assignment_id": "a", "run_id": "r", "endpoints": [ep]}


def test_assignment_takes_media_rtp_and_refuses_actions_that_need_media() -> None:
    spec, problems = validate_assignment(_raw({"rtp": False}, [{"at_s": 0.5, "do": "hangup"}]), ())
    assert spec is not None and spec.endpoints[0].media.rtp is False, problems
    spec, _ = validate_assignment(_raw({}, []), ())
    assert spec is not None and spec.endpoints[0].media.rtp is True  # absent: today's calls
    actions = [{"at_s": 0.2, "do": "hold"}, {"on": "dtmf_received", "do": "hangup"}]
    spec, problems = validate_assignment(_raw({"rtp": False}, actions), ())
    assert spec is None and len(problems) == 2
    assert "actions[0] hold needs media; with media.rtp false" in problems[0]
    assert "actions[1] on: dtmf_received needs media" in problems[1]


# -- the engine against real peers ------------------------------------------------------------


def _udp_ports() -> set[int]:
    """Local ports of this process's UDP sockets."""
    return {c.laddr.port for c in psutil.Process().net_connections(kind="udp") if c.laddr}


def _sip_ports(items: Collector) -> set[int]:
    """The engine's SIP socket ports, as its trace items name them."""
    return {int(t["local"].rsplit(":", 1)[1]) for t in items.of("trace")}


def _call_through(steps: list[list[dict[str, Any]]], caller: str, *, wait: str | None = None
                  ) -> tuple[Collector, list[int]]:  # fmt: skip
    """Run the steps as assignments; return the items and the UDP ports the engine had
    bound at the caller's INCALL besides its SIP sockets (its RTP and RTCP sockets)."""

    async def main() -> tuple[Collector, list[int]]:
        items = Collector()
        engine = make_engine(items)
        before = _udp_ports()
        try:
            for i, step in enumerate(steps):
                await engine.start_assignment(assignment("so", *step, trace="all"))
                if i == 0 and wait is not None:
                    await items.contact(wait)
            await items.wait_for(lambda: "INCALL" in items.phases(caller), 15)
            bound = sorted(_udp_ports() - before - _sip_ports(items))
            await asyncio.wait_for(engine.wait_idle(), 20)
        finally:
            await engine.close()
        return items, bound

    items, bound = asyncio.run(main())
    check_items(items.items)
    return items, bound


def _signalling_only(ep: dict[str, Any], rtp: bool = False) -> dict[str, Any]:
    ep["media"]["rtp"] = rtp
    return ep


def _kam(kam: Kamailio, eid: str, role: str, user: str, **kw: Any) -> dict[str, Any]:
    host, port = kam.address("udp")
    return endpoint(eid, role, user=user, password=kam.password(user), host=host, port=port,
                    register=True, **kw)  # fmt: skip


@pytest.mark.peers
@pytest.mark.timeout(60)
@pytest.mark.parametrize("rtp", [False, True], ids=["signalling-only", "control-with-rtp"])
def test_call_through_kamailio_to_sipp_uas_binds_no_rtp_socket(
    rtp: bool, kamailio: Kamailio, sipp_uas: Callable[..., SippUas], tmp_path: Path
) -> None:
    uas = sipp_uas("answer", rtp_echo=True)  # echoes what comes: the control gets RTP back
    callee = "1871" if rtp else "1870"
    reg = run_sipp_register(tmp_path, kamailio.address("udp"),
                            [(callee, kamailio.password(callee))], uas.address)  # fmt: skip
    assert reg.returncode == 0, reg.log
    tx = _kam(kamailio, "so/tx", "caller", "1872", target=f"sip:{callee}@127.0.0.1",
              duration_s=0.5)  # fmt: skip
    items, bound = _call_through([[_signalling_only(tx, rtp)]], "so/tx")
    out = items.outcome("so/tx")
    assert out["outcome"] == "SUCCESS", out
    [call] = items.of("call", "so/tx")
    assert call["final_code"] == 200 and call["result"] == "answered"
    invite = next(t["message"] for t in items.of("trace", "so/tx")
                  if t["dir"] == "out" and t["message"].startswith("INVITE ")
                  and "Proxy-Authorization" in t["message"])  # fmt: skip
    entries = [e for m in items.of("metrics") for e in m["endpoints"]]
    if rtp:  # the control: the same call with media binds its pair and reports media
        assert len(bound) == 2 and "a=sendrecv" in invite and call["first_rtp_ts"] is not None
        assert any("send" in e for e in entries)
        return
    assert bound == [], bound
    assert "m=audio 9 RTP/AVP" in invite and "a=inactive" in invite
    assert call["first_rtp_ts"] is None and call["ttfm_ms"] is None
    assert entries and all(set(e) == {"endpoint_id", "phase"} for e in entries)


@pytest.mark.peers
@pytest.mark.timeout(60)
def test_signalling_only_caller_and_receiver_through_kamailio(kamailio: Kamailio) -> None:
    rx = _signalling_only(_kam(kamailio, "so/rx", "receiver", "1873", duration_s=10,
                               expected_calls=1))  # fmt: skip
    tx = _signalling_only(_kam(kamailio, "so/tx", "caller", "1874",
                               target="sip:1873@127.0.0.1", duration_s=0.3))  # fmt: skip
    items, bound = _call_through([[rx], [tx]], "so/tx", wait="so/rx")
    assert bound == []
    for eid in ("so/rx", "so/tx"):
        assert items.outcome(eid)["outcome"] == "SUCCESS", items.outcome(eid)
        [call] = items.of("call", eid)
        assert call["final_code"] == 200 and call["first_rtp_ts"] is None
        assert "INCALL" in items.phases(eid)
    answer = next(t["message"] for t in items.of("trace", "so/rx")
                  if t["dir"] == "out" and t["message"].startswith("SIP/2.0 200")
                  and "m=audio" in t["message"])  # fmt: skip
    assert "m=audio 9 RTP/AVP 0 101" in answer and "a=inactive" in answer


@pytest.mark.timeout(30)
def test_signalling_only_receiver_still_answers_488_to_an_offer_it_cannot_take() -> None:
    async def main() -> Collector:
        items = Collector()
        engine = make_engine(items)
        try:
            rx = _signalling_only(endpoint("n/rx", "receiver", user="2001", codecs=["PCMU"],
                                           expected_calls=1))  # fmt: skip
            await engine.start_assignment(assignment("neg", rx, trace="none"))
            contact = await items.contact("n/rx")
            tx = _signalling_only(endpoint("n/tx", "caller", target=contact, codecs=["PCMA"]))
            await engine.start_assignment(assignment("neg", tx, trace="none"))
            await asyncio.wait_for(engine.wait_idle(), 15)
        finally:
            await engine.close()
        return items

    items = asyncio.run(main())
    assert items.outcome("n/rx")["outcome"] == "NEGOTIATION_FAILED"
    tx = items.outcome("n/tx")
    assert tx["outcome"] == "NEGOTIATION_FAILED" and tx["final_code"] == 488, tx
