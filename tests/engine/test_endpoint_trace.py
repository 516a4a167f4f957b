"""``trace: failures`` holds the first 50 and the last 150 items of an endpoint."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sipswarm.engine.trace_buffer import HEAD, TAIL, FailureTrace

from .engine_harness import Collector, assignment, endpoint, make_engine


def test_holds_first_50_and_last_150_in_order() -> None:
    buf = FailureTrace()
    for n in range(HEAD + TAIL + 60):
        buf.add({"n": n})
    kept = [i["n"] for i in buf.items()]
    assert (HEAD, TAIL) == (50, 150)
    assert kept == list(range(50)) + list(range(110, 260))
    assert buf.dropped == 60 and len(buf) == 200
    buf.clear()
    assert buf.items() == [] and buf.dropped == 0


def test_fewer_than_the_bound_are_all_kept() -> None:
    buf = FailureTrace()
    for n in range(120):
        buf.add({"n": n})
    assert [i["n"] for i in buf.items()] == list(range(120)) and buf.dropped == 0


@pytest.mark.timeout(30)
def test_failed_endpoint_emits_its_bounded_trace_before_its_outcome() -> None:
    """A caller refused busy (486) ends CALL_FAILED: its held trace comes out, in order,
    before its outcome; the endpoints that ended SUCCESS emit none."""

    async def main() -> Collector:
        items = Collector()
        engine = make_engine(items)
        try:
            rx = endpoint("t/rx", "receiver", user="rx", duration_s=2, expected_calls=1)
            await engine.start_assignment(assignment("t", rx, trace="failures"))
            contact = await items.contact("t/rx")
            await engine.start_assignment(
                assignment("t", endpoint("t/tx", "caller", target=contact, duration_s=1.5),
                           trace="failures")
            )  # fmt: skip
            await items.wait_for(lambda: "INCALL" in items.phases("t/tx"))
            busy = endpoint("t/busy", "caller", user="busy", target=contact)
            await engine.start_assignment(assignment("t", busy, trace="failures"))
            await asyncio.wait_for(engine.wait_idle(), 20)
        finally:
            await engine.close()
        return items

    items = asyncio.run(main())
    assert not items.of("trace", "t/rx") and not items.of("trace", "t/tx")
    traces: list[dict[str, Any]] = items.of("trace", "t/busy")
    assert traces and traces[0]["message"].startswith("INVITE ")
    assert any(t["message"].startswith("SIP/2.0 486") for t in traces)
    kinds = [i["kind"] for i in items.items if i.get("endpoint_id") == "t/busy"]
    assert kinds.index("outcome") > max(i for i, k in enumerate(kinds) if k == "trace")
    assert items.outcome("t/busy")["outcome"] == "CALL_FAILED"
    # held as raw records, built at close: the same item as trace: all sends at once
    keys = ["kind", "run_id", "endpoint_id", "ts", "dir", "transport", "local", "remote",
            "message"]  # fmt: skip
    assert all(list(t) == keys and t["transport"] == "UDP" for t in traces)
    stamps = [t["ts"] for t in traces]
    assert all(type(ts) is int for ts in stamps) and stamps == sorted(stamps)
    assert stamps[-1] <= items.outcome("t/busy")["ts"]
    assert {t["dir"] for t in traces} == {"in", "out"}
    assert all(t["local"].startswith("127.0.0.1:") for t in traces)
