"""Two sipswarm endpoints of one engine call each other directly (no registrar)."""

from __future__ import annotations

import asyncio
import time

import pytest

from .engine_harness import Collector, assignment, check_items, endpoint, make_engine

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    "per_endpoint", [False, True], ids=["shared-socket", "socket-per-endpoint"]
)
def test_direct_call_between_two_endpoints(per_endpoint: bool) -> None:
    async def main() -> Collector:
        items = Collector()
        engine = make_engine(items, socket_per_endpoint=per_endpoint)
        try:
            await engine.start_assignment(
                assignment(
                    "r1", endpoint("r1/rx", "receiver", user="bob", duration_s=5, expected_calls=1)
                )
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


def test_cancel_run_closes_every_endpoint_within_5_s() -> None:
    async def main() -> tuple[Collector, float]:
        items = Collector()
        engine = make_engine(items)
        try:
            await engine.start_assignment(
                assignment("r2", endpoint("r2/rx", "receiver", user="rx", duration_s=60))
            )
            contact = await items.contact("r2/rx")
            await engine.start_assignment(
                assignment(
                    "r2",
                    endpoint("r2/tx", "caller", target=contact, duration_s=60),
                    endpoint("r2/late", "caller", target=contact, offset_ms=60_000),
                )
            )
            await items.wait_for(lambda: "INCALL" in items.phases("r2/tx"))
            t0 = time.monotonic()
            await engine.cancel_run("r2", "user")
            took = time.monotonic() - t0
            assert engine.active_endpoints() == 0
        finally:
            await engine.close()
        return items, took

    items, took = asyncio.run(main())
    check_items(items.items)
    assert took < 5.0
    for eid in ("r2/tx", "r2/rx", "r2/late"):
        out = items.outcome(eid)
        assert out["outcome"] == "CANCELLED" and "user" in out["reason"], out
    assert items.phases("r2/late") == ["CLOSED"]  # never started
    assert "DISCONNECTING" in items.phases("r2/tx")
    finished = items.of("finished")
    assert sum(f["endpoints"] for f in finished) == 3
    assert any(f["outcomes"] == {"CANCELLED": 2} for f in finished)


def test_dtmf_action_is_sent_and_busy_second_call_gets_486() -> None:
    async def main() -> Collector:
        items = Collector()
        engine = make_engine(items)
        try:
            await engine.start_assignment(
                assignment(
                    # two callers come: the second, refused busy, counts as a call
                    "r3",
                    endpoint("r3/rx", "receiver", user="rx3", duration_s=3, expected_calls=2),
                )
            )
            contact = await items.contact("r3/rx")
            caller = endpoint("r3/tx", "caller", target=contact, duration_s=2)
            caller["actions"] = [{"at_s": 0.5, "do": "dtmf", "digits": "12#"}]
            second = endpoint("r3/tx2", "caller", target=contact, offset_ms=300)
            await engine.start_assignment(assignment("r3", caller, second))
            await asyncio.wait_for(engine.wait_idle(), 15)
            # RFC 4733: 3 digits, each several packets plus 3 end packets
            assert engine.counters()["rtp_dtmf_packets_sent_total"] >= 3 * 4
        finally:
            await engine.close()
        return items

    items = asyncio.run(main())
    check_items(items.items)
    assert items.outcome("r3/tx")["outcome"] == "SUCCESS", items.outcome("r3/tx")
    busy = items.outcome("r3/tx2")
    assert busy["outcome"] == "CALL_FAILED" and busy["final_code"] == 486
