"""Receivers take calls one after another (docs/protocol.md, "Endpoint behaviour")."""

from __future__ import annotations

import asyncio

import pytest

from .engine_harness import Collector, assignment, check_items, endpoint, make_engine

pytestmark = pytest.mark.timeout(40)


def run_calls(receiver: dict[str, object], callers: int, gap_ms: int) -> Collector:
    """One receiver, then ``callers`` callers ``gap_ms`` apart calling it (0.6 s calls)."""

    async def main() -> Collector:
        items = Collector()
        engine = make_engine(items)
        try:
            await engine.start_assignment(assignment("m", receiver))
            contact = await items.contact("m/rx")
            txs = [
                endpoint(f"m/tx{i}", "caller", user=f"tx{i}", target=contact, duration_s=0.6,
                         offset_ms=i * gap_ms)
                for i in range(callers)
            ]  # fmt: skip
            if txs:
                await engine.start_assignment(assignment("m", *txs))
            await asyncio.wait_for(engine.wait_idle(), 25)
        finally:
            await engine.close()
        return items

    items = asyncio.run(main())
    check_items(items.items)  # phases still forward only, every key as documented
    return items


def rx_counters(items: Collector, part: str, key: str) -> list[int]:
    return [
        e[part][key]
        for m in items.of("metrics")
        for e in m["endpoints"]
        if e["endpoint_id"] == "m/rx" and part in e
    ]


def test_receiver_answers_three_calls_in_turn_then_idles_out_with_success() -> None:
    rx = endpoint("m/rx", "receiver", user="rx", duration_s=30, idle_timeout_s=1.5)
    items = run_calls(rx, 3, 1200)
    for i in range(3):
        assert items.outcome(f"m/tx{i}")["outcome"] == "SUCCESS", items.outcome(f"m/tx{i}")
    calls = items.of("call", "m/rx")
    assert [c["result"] for c in calls] == ["answered"] * 3
    assert all(c["direction"] == "in" and c["first_rtp_ts"] is not None for c in calls)
    assert (
        calls[0]["bye_ts"] <= calls[1]["invite_ts"] <= calls[1]["bye_ts"] <= calls[2]["invite_ts"]
    )
    # one pass through the phases; the later calls are told by their call items
    assert items.phases("m/rx") == [
        "INITIALIZING", "REGISTERED", "CALLING", "RINGING", "NEGOTIATING", "INCALL",
        "CLOSED",
    ]  # fmt: skip
    out = items.outcome("m/rx")
    assert out["outcome"] == "SUCCESS", out
    # closed by the idle timeout, counted from the end of the last call
    assert out["ts"] - calls[2]["bye_ts"] >= 1400
    # counters are cumulative over the calls (new RTP session per call): never go back
    received = rx_counters(items, "recv", "packets_received")
    assert received == sorted(received) and received[-1] > 2 * 30
    sent = rx_counters(items, "send", "packets_sent")
    assert sent == sorted(sent) and sent[-1] > 2 * 30


def test_expected_calls_closes_right_after_the_last_call() -> None:
    rx = endpoint("m/rx", "receiver", user="rx", duration_s=30, expected_calls=2)
    items = run_calls(rx, 2, 1000)
    calls = items.of("call", "m/rx")
    assert [c["result"] for c in calls] == ["answered", "answered"]
    out = items.outcome("m/rx")
    assert out["outcome"] == "SUCCESS", out
    assert out["ts"] - calls[1]["bye_ts"] < 500  # not the 300 s default idle timeout
    assert items.phases("m/rx")[-2:] == ["DISCONNECTING", "CLOSED"]  # the last BYE


def test_receiver_never_called_times_out() -> None:
    rx = endpoint("m/rx", "receiver", user="rx", idle_timeout_s=1, expected_calls=3)
    items = run_calls(rx, 0, 0)
    out = items.outcome("m/rx")
    assert out["outcome"] == "TIMEOUT" and "not called within 1 s" in out["reason"], out
