"""Hold and resume by re-INVITE, and ``on`` triggers, between two sipswarm endpoints."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.peers.pjsua import pjsua_available, start_pjsua

from .engine_harness import Collector, assignment, check_items, endpoint, make_engine

pytestmark = pytest.mark.timeout(40)

HOLD_AT, RESUME_AT = 0.5, 2.0


def _phase_ts(items: Collector, eid: str, phase: str) -> int:
    [item] = [i for i in items.of("phase", eid) if i["phase"] == phase]
    return int(item["ts"])


def _received(items: Collector, eid: str) -> list[tuple[float, int]]:
    """(seconds after INCALL, packets received) of ``eid`` from the metrics items."""
    t0 = _phase_ts(items, eid, "INCALL")
    out = []
    for m in items.of("metrics"):
        for e in m["endpoints"]:
            if e["endpoint_id"] == eid and e.get("recv", {}).get("packets_received") is not None:
                out.append(((m["ts"] - t0) / 1000, e["recv"]["packets_received"]))
    return out


def _traced(items: Collector, eid: str, direction: str, first_line: str) -> list[str]:
    return [
        t["message"]
        for t in items.of("trace", eid)
        if t["dir"] == direction and t["message"].startswith(first_line)
    ]


def test_hold_stops_the_far_end_and_resume_restarts_it_with_triggers() -> None:
    async def main() -> tuple[Collector, dict[str, float]]:
        items = Collector()
        engine = make_engine(items)
        try:
            rx = endpoint("h1/rx", "receiver", user="held", duration_s=20, expected_calls=1)
            # on resume the receiver plays 123; the caller hangs up when it hears them
            rx["actions"] = [{"on": "resume_received", "do": "dtmf", "digits": "123"}]
            await engine.start_assignment(assignment("h1", rx))
            contact = await items.contact("h1/rx")
            tx = endpoint("h1/tx", "caller", target=contact, duration_s=20)
            tx["actions"] = [
                {"at_s": HOLD_AT, "do": "hold"},
                {"at_s": RESUME_AT, "do": "resume"},
                {"on": "dtmf_received", "match_digits": "123", "do": "hangup"},
            ]
            await engine.start_assignment(assignment("h1", tx))
            await asyncio.wait_for(engine.wait_idle(), 20)
            counters = engine.counters()
        finally:
            await engine.close()
        return items, counters

    items, counters = asyncio.run(main())
    check_items(items.items)
    for eid in ("h1/tx", "h1/rx"):
        assert items.outcome(eid)["outcome"] == "SUCCESS", items.outcome(eid)
    [call] = items.of("call", "h1/tx")
    # hung up by the dtmf_received trigger soon after the resume, not at duration_s
    assert RESUME_AT * 1000 < call["duration_ms"] < RESUME_AT * 1000 + 3000, call

    # the caller's re-INVITEs: sendonly then sendrecv, same o= id, version +1 each time
    reinvites = _traced(items, "h1/tx", "out", "INVITE ")[1:]
    assert len(reinvites) == 2
    assert "a=sendonly" in reinvites[0] and "a=sendrecv" in reinvites[1]
    origins = [line for m in reinvites for line in m.splitlines() if line.startswith("o=")]
    ids, versions = {o.split()[1] for o in origins}, [int(o.split()[2]) for o in origins]
    assert len(ids) == 1 and versions == [1, 2], origins
    answers = [m for m in _traced(items, "h1/rx", "out", "SIP/2.0 200") if "v=0" in m]
    assert any("a=recvonly" in m for m in answers), "hold answered recvonly (RFC 3264 6.1)"

    # RTP from the receiver stops during hold and comes back after resume
    samples = _received(items, "h1/tx")
    before = [n for t, n in samples if t < HOLD_AT - 0.1]
    held = [n for t, n in samples if HOLD_AT + 0.4 < t < RESUME_AT - 0.05]
    after = [n for t, n in samples if t > RESUME_AT + 0.2]
    assert before and held and after, samples
    assert max(held) - min(held) <= 2, samples  # nothing (but a packet in flight)
    assert min(held) > max(before) and max(after) > max(held) + 5, samples

    assert counters["actions_hold_sent_total"] == 1
    assert counters["actions_resume_sent_total"] == 1
    assert counters["actions_hold_received_total"] == 1
    assert counters["actions_resume_received_total"] == 1
    assert counters["actions_dtmf_sent_total"] == 1
    assert counters["actions_dtmf_digits_received_total"] >= 3


def test_hold_received_trigger_hangs_up_from_the_held_side() -> None:
    async def main() -> Collector:
        items = Collector()
        engine = make_engine(items)
        try:
            rx = endpoint("h2/rx", "receiver", user="held2", duration_s=20, expected_calls=1)
            rx["actions"] = [{"on": "hold_received", "do": "hangup"}]
            await engine.start_assignment(assignment("h2", rx))
            contact = await items.contact("h2/rx")
            tx = endpoint("h2/tx", "caller", target=contact, duration_s=20)
            tx["actions"] = [{"at_s": 0.3, "do": "hold"}]
            await engine.start_assignment(assignment("h2", tx))
            await asyncio.wait_for(engine.wait_idle(), 20)
        finally:
            await engine.close()
        return items

    items = asyncio.run(main())
    check_items(items.items)
    for eid in ("h2/tx", "h2/rx"):
        assert items.outcome(eid)["outcome"] == "SUCCESS", items.outcome(eid)
    [call] = items.of("call", "h2/rx")
    assert 300 <= call["duration_ms"] < 3000, call
    assert _traced(items, "h2/rx", "out", "BYE "), "the held receiver sent the BYE"


@pytest.mark.peers
@pytest.mark.skipif(not pjsua_available(), reason="pjsua2 not installed")
@pytest.mark.parametrize("srtp", ["off", "sdes"])
def test_pjsua_answers_hold_recvonly_and_stops_sending(tmp_path: Path, srtp: str) -> None:
    peer = start_pjsua(tmp_path, "answer", "--calls", "1", *(["--srtp"] if srtp == "sdes" else []))
    try:
        host, port = peer.sip_address

        async def main() -> Collector:
            items = Collector()
            engine = make_engine(items)
            try:
                tx = endpoint("h4/tx", "caller", target=f"sip:pjsua@{host}:{port}", duration_s=3)
                tx["media"]["srtp"] = srtp
                tx["actions"] = [{"at_s": 0.5, "do": "hold"}, {"at_s": 1.8, "do": "resume"}]
                await engine.start_assignment(assignment("h4", tx))
                await asyncio.wait_for(engine.wait_idle(), 20)
            finally:
                await engine.close()
            return items

        items = asyncio.run(main())
        events = peer.wait_done(15)
    finally:
        peer.stop()
    check_items(items.items)
    assert items.outcome("h4/tx")["outcome"] == "SUCCESS", items.outcome("h4/tx")
    answers = [m for m in _traced(items, "h4/tx", "in", "SIP/2.0 200") if "v=0" in m]
    hold_ok = [m for m in answers if "CSeq: 2 INVITE" in m]
    assert hold_ok and "a=recvonly" in hold_ok[0], answers  # RFC 3264 6.1
    samples = _received(items, "h4/tx")
    held = [n for t, n in samples if 0.9 < t < 1.75]
    after = [n for t, n in samples if t > 2.1]
    assert held and after and max(held) - min(held) <= 2, samples
    assert max(after) > max(held) + 5, samples
    [end] = [e for e in events if e["event"] == "call_end"]
    assert end["connected"] and end["rtp_rx_loss"] == 0, end
