"""Endpoints of the EndpointEngine against real peers: Kamailio (digest auth) and SIPp UAS.

Every peer runs on 127.0.0.1 on ports the kernel chose; every test is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.peers.kamailio import Kamailio
from tests.peers.sipp import SippUas

from .engine_harness import Collector, assignment, check_items, endpoint, make_engine

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]


def run(endpoints_by_step: list[list[dict[str, Any]]], *, trace: str = "all",
        wait_contact: str | None = None, limit: float = 30) -> Collector:  # fmt: skip
    """Start each step's endpoints as one assignment (waiting for ``wait_contact`` after
    the first step), then wait until the engine is idle."""

    async def main() -> Collector:
        items = Collector()
        engine = make_engine(items)
        try:
            for i, step in enumerate(endpoints_by_step):
                await engine.start_assignment(assignment("run", *step, trace=trace))
                if i == 0 and wait_contact is not None:
                    await items.contact(wait_contact)
            await asyncio.wait_for(engine.wait_idle(), limit)
        finally:
            await engine.close()
        return items

    items = asyncio.run(main())
    check_items(items.items)
    return items


def kam_endpoint(kam: Kamailio, eid: str, role: str, user: str, **kw: Any) -> dict[str, Any]:
    host, port = kam.address("udp")
    kw.setdefault("password", kam.password(user))
    return endpoint(eid, role, user=user, host=host, port=port, register=True, **kw)


def test_registration_through_kamailio_succeeds_and_unregisters(kamailio: Kamailio) -> None:
    items = run([[kam_endpoint(kamailio, "r/1", "receiver", "1100", idle_timeout_s=1)]])
    regs = items.of("registration", "r/1")
    assert regs[0]["status_code"] == 200 and regs[0]["expires_granted_s"] == 60
    assert regs[0]["register_ms"] is not None and regs[0]["register_ms"] >= 0
    assert regs[-1]["status_code"] == 200 and regs[-1]["expires_granted_s"] == 0  # unregister
    assert items.phases("r/1") == ["INITIALIZING", "REGISTERED", "DISCONNECTING", "CLOSED"]
    out = items.outcome("r/1")
    assert out["outcome"] == "TIMEOUT" and "not called within 1 s" in out["reason"]
    assert kamailio.contacts("1100") == []


def test_wrong_password_is_registration_failed_with_the_code(kamailio: Kamailio) -> None:
    ep = kam_endpoint(kamailio, "r/bad", "caller", "1101", password="wrong", target="sip:x@h")
    items = run([[ep]], trace="failures")
    out = items.outcome("r/bad")
    assert out["outcome"] == "REGISTRATION_FAILED" and out["final_code"] in (401, 403)
    assert items.of("registration", "r/bad")[0]["status_code"] in (401, 403)
    assert items.phases("r/bad") == ["INITIALIZING", "CLOSED"]
    traces = items.of("trace", "r/bad")  # failures: kept and sent because it failed
    assert traces and traces[0]["message"].startswith("REGISTER ")


def test_two_endpoints_call_through_kamailio_with_auth(kamailio: Kamailio) -> None:
    # the receiver closes by itself once nobody called for 3 s after its call: SUCCESS
    rx = kam_endpoint(kamailio, "r/rx", "receiver", "1500", duration_s=10, idle_timeout_s=3)
    tx = kam_endpoint(kamailio, "r/tx", "caller", "1001", target="sip:1500@127.0.0.1",
                      duration_s=2.5)  # fmt: skip
    items = run([[rx], [tx]], wait_contact="r/rx", trace="none")
    for eid in ("r/rx", "r/tx"):
        assert items.outcome(eid)["outcome"] == "SUCCESS", items.outcome(eid)
        [call] = items.of("call", eid)
        assert call["final_code"] == 200 and call["first_rtp_ts"] is not None
    assert not items.of("trace")
    # the last entry of each while in call (between calls a receiver's gauges are null)
    media = {
        e["endpoint_id"]: e
        for m in items.of("metrics")
        for e in m["endpoints"]
        if "recv" in e and e["recv"]["mos"] is not None
    }
    for eid in ("r/rx", "r/tx"):
        recv = media[eid]["recv"]
        assert recv["packets_received"] > 50 and recv["mos"] is not None and recv["mos"] > 4.0
    [tx_call] = items.of("call", "r/tx")
    assert tx_call["setup_ms"] is not None and tx_call["pdd_ms"] <= tx_call["setup_ms"]


def uas_target(uas: SippUas) -> str:
    return f"sip:service@{uas.address[0]}:{uas.address[1]}"


def test_sipp_busy_is_call_failed_486(sipp_uas: Callable[..., SippUas]) -> None:
    uas = sipp_uas("busy")
    items = run([[endpoint("b/1", "caller", target=uas_target(uas))]])
    [call] = items.of("call", "b/1")
    assert call["final_code"] == 486 and call["result"] == "busy"
    out = items.outcome("b/1")
    assert out["outcome"] == "CALL_FAILED" and out["final_code"] == 486


def test_sipp_ringing_is_cancelled_on_ring_timeout(sipp_uas: Callable[..., SippUas]) -> None:
    uas = sipp_uas("ring")
    items = run([[endpoint("c/1", "caller", target=uas_target(uas), ring_timeout_s=1)]])
    [call] = items.of("call", "c/1")
    assert call["final_code"] == 487 and call["result"] == "cancelled"
    assert call["ringing_ts"] is not None and call["answer_ts"] is None
    out = items.outcome("c/1")
    assert out["outcome"] == "TIMEOUT" and "ring_timeout_s" in out["reason"]
    assert "RINGING" in items.phases("c/1") and "INCALL" not in items.phases("c/1")


def test_sipp_rtp_echo_has_no_loss_and_high_mos(sipp_uas: Callable[..., SippUas]) -> None:
    uas = sipp_uas("answer", rtp_echo=True)
    items = run([[endpoint("e/1", "caller", target=uas_target(uas), duration_s=3)]])
    assert items.outcome("e/1")["outcome"] == "SUCCESS", items.outcome("e/1")
    recv = [e["recv"] for m in items.of("metrics") for e in m["endpoints"] if "recv" in e]
    assert recv[-1]["packets_received"] > 80
    assert all(r["packets_lost"] == 0 for r in recv)
    assert min(r["mos"] for r in recv if r["mos"] is not None) >= 4.3
