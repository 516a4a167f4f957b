"""The engine flags its own results when it falls behind (docs/protocol.md, generator)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sipswarm.engine.media_engine import ClockStats
from sipswarm.engine.overload import GeneratorHealth

from .engine_harness import Collector, assignment, check_items, endpoint, make_engine


def stats(lag: float | None, late: float | None, skipped: int = 0) -> ClockStats:
    return ClockStats(1, 50, None, late, late, None, lag, skipped)


class Feed:
    def __init__(self) -> None:
        self.next = stats(None, None)

    def __call__(self) -> ClockStats:
        return self.next


def test_intervals_are_judged_against_the_documented_limits() -> None:
    feed = Feed()
    health = GeneratorHealth(None, feed, lambda: 0.0)  # type: ignore[arg-type]
    feed.next = stats(19.9, 9.9)
    assert not health.close_interval(1.0).overloaded  # at the limits: fine
    feed.next = stats(25.0, 12.0)
    assert health.close_interval(2.0).overloaded  # loop lag p99 > 20 ms
    feed.next = stats(1.0, 12.5)
    assert health.close_interval(3.0).overloaded  # send lateness p99 > 10 ms, twice in a row
    assert health.recent[-2].overloaded, "the first interval of the streak counts too"
    feed.next = stats(None, None)
    assert not health.close_interval(4.0).overloaded  # nothing measured
    assert health.block_since(3.0) == {
        "loop_lag_ms_p99": None, "send_lateness_ms_p99": None, "skipped_ticks": 0,
        "overloaded": False,
    }  # fmt: skip
    assert health.block_since(1.5) == {
        "loop_lag_ms_p99": 25.0, "send_lateness_ms_p99": 12.5, "skipped_ticks": 0,
        "overloaded": True,
    }  # fmt: skip
    assert health.overload_between(3.5, 10.0) is None
    feed.next = stats(2.0, 1.0, skipped=40)  # one long stall: sends dropped, p99s fine
    assert health.close_interval(5.0).overloaded
    assert health.overload_between(4.5, 10.0) is not None
    worst = health.overload_between(0.0, 10.0)
    assert worst is not None and worst.loop_lag_p99_ms == 25.0
    assert "generator overloaded (loop lag p99 25 ms" in worst.describe()
    assert health.loop_lag_p99_ms == 2.0  # the last interval, for the heartbeat


def test_one_late_interval_alone_is_not_an_overload() -> None:
    """A single stall (a burst of call set-ups) shows in jitter, not as a verdict."""
    feed = Feed()
    health = GeneratorHealth(None, feed, lambda: 0.0)  # type: ignore[arg-type]
    for t, late in ((1.0, 1.0), (2.0, 14.0), (3.0, 1.0), (4.0, 14.0)):
        feed.next = stats(0.5, late)
        assert not health.close_interval(t).overloaded
    assert health.overload_between(0.0, 10.0) is None
    assert health.block_since(0.0)["send_lateness_ms_p99"] == 14.0
    feed.next = stats(0.5, 11.0)
    assert health.close_interval(5.0).overloaded
    assert [i.overloaded for i in health.recent] == [False, False, False, True, True]


@pytest.mark.timeout(30)
def test_blocked_loop_during_a_call_turns_success_into_warnings() -> None:
    async def main() -> Collector:
        items = Collector()
        engine = make_engine(items)
        try:
            rx = endpoint("o/rx", "receiver", user="rx", duration_s=30, expected_calls=1)
            await engine.start_assignment(assignment("o", rx))
            contact = await items.contact("o/rx")
            tx = endpoint("o/tx", "caller", target=contact, duration_s=3)
            await engine.start_assignment(assignment("o", tx))
            await items.wait_for(lambda: "INCALL" in items.phases("o/tx"))
            await asyncio.sleep(0.5)
            # the test hook: a 150 ms stall of the event loop in mid-call (RTP sends late)
            engine.loop.call_soon(time.sleep, 0.15)
            await asyncio.wait_for(engine.wait_idle(), 20)
        finally:
            await engine.close()
        return items

    items = asyncio.run(main())
    check_items(items.items)
    for eid in ("o/tx", "o/rx"):
        out = items.outcome(eid)
        assert out["outcome"] == "COMPLETED_WITH_WARNINGS", out
        assert out["reason"].startswith("generator overloaded (loop lag p99"), out
    blocks: list[dict[str, Any]] = [m["generator"] for m in items.of("metrics")]
    assert blocks and set(blocks[0]) == {
        "loop_lag_ms_p99", "send_lateness_ms_p99", "skipped_ticks", "overloaded",
    }  # fmt: skip
    assert any(b["overloaded"] for b in blocks) and not all(b["overloaded"] for b in blocks)
