"""Two sipswarm endpoints of one engine call each other directly (no registrar)."""

from __future__ import annotations

import asyncio

import pytest

from .engine_harness import Collector, assignment, check_items, endpoint, make_engine

pytestmark = pytest.mark.timeout(30)


def test_direct_call_between_two_endpoints() -> None:
    async def main() -> Collector:
        items = Collector()
        engine = make_engine(items)
        try:
            await engine.start_assignment(
                assignment("r1", endpoint("r1/rx", "receiver", user="bob", duration_s=5))
            )
            contact = await items.contact("r1/rx")
            await engine.start_assignment(
                assignment("r1", endpoint("r1/tx", "caller", target=contact, duration_s=1.5))
            )
            await asyncio.wait_for(engine.wait_idle(), 15)
        finally:
            await engine.close()
        return items

    items = asyncio.run(main())
    check_items(items.items)
    for eid in ("r1/tx", "r1/rx"):
        assert items.phases(eid) == [
            "INITIALIZING", "REGISTERED", "CALLING", "RINGING", "NEGOTIATING", "INCALL",
            "DISCONNECTING", "CLOSED",
        ], (eid, items.phases(eid))  # fmt: skip
        assert items.outcome(eid)["outcome"] == "SUCCESS", items.outcome(eid)
    [out] = items.of("call", "r1/tx")
    [inc] = items.of("call", "r1/rx")
    assert out["direction"] == "out" and inc["direction"] == "in"
    assert out["final_code"] == 200 and out["result"] == "answered"
    assert 1300 <= out["duration_ms"] <= 2500
    assert out["first_rtp_ts"] is not None and inc["first_rtp_ts"] is not None
    assert len(items.of("finished")) == 2
    media = [e for m in items.of("metrics") for e in m["endpoints"] if "recv" in e]
    assert media and max(e["recv"]["packets_received"] for e in media) > 20
