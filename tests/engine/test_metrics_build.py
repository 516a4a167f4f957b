"""MetricsBuilder: a run's metrics item built a slice at a time, in order, without the closed."""

from __future__ import annotations

import asyncio
from typing import Any

from sipswarm.engine.metrics_build import SLICE, MetricsBuilder


class Ep:
    def __init__(self, n: int) -> None:
        self.n = n
        self.closed = False
        self.built = 0

    def metrics_entry(self) -> dict[str, Any]:
        self.built += 1
        return {"endpoint_id": f"e{self.n}"}


def _builder(out: list[dict[str, Any]]) -> MetricsBuilder[Ep]:
    return MetricsBuilder(asyncio.get_running_loop(), out.append, lambda ep: not ep.closed)


def _head(run: str = "r", ts: int = 1000) -> dict[str, Any]:
    return {"kind": "metrics", "run_id": run, "ts": ts, "generator": None}


async def _built_in_slices_the_loop_runs_between_them() -> None:
    out: list[dict[str, Any]] = []
    eps = [Ep(i) for i in range(SLICE * 2 + 7)]
    seen_between: list[int] = []
    builder = _builder(out)
    builder.start(_head(), eps)
    assert sum(ep.built for ep in eps) == SLICE  # the first slice at once, no more
    asyncio.get_running_loop().call_soon(lambda: seen_between.append(sum(e.built for e in eps)))
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen_between == [SLICE * 2]  # another callback ran between the second and third slice
    assert len(out) == 1
    assert [e["endpoint_id"] for e in out[0]["endpoints"]] == [f"e{i}" for i in range(len(eps))]
    assert out[0]["ts"] == 1000 and out[0]["kind"] == "metrics"


async def _complete_emits_now_and_leaves_out_endpoints_closed_meanwhile() -> None:
    out: list[dict[str, Any]] = []
    eps = [Ep(i) for i in range(SLICE * 3)]
    builder = _builder(out)
    builder.start(_head(), eps)
    eps[SLICE + 1].closed = True  # closes after the item was started, before its slice
    eps[0].closed = True  # already built: its entry stays (it was open when sampled)
    builder.complete("r")
    out.append({"kind": "finished"})  # what the engine emits right after complete()
    await asyncio.sleep(0.01)
    assert [o["kind"] for o in out] == ["metrics", "finished"]  # nothing emitted later
    ids = [e["endpoint_id"] for e in out[0]["endpoints"]]
    assert len(ids) == SLICE * 3 - 1 and f"e{SLICE + 1}" not in ids and "e0" in ids


async def _next_interval_finishes_the_previous_item_first() -> None:
    out: list[dict[str, Any]] = []
    eps = [Ep(i) for i in range(SLICE + 1)]
    builder = _builder(out)
    builder.start(_head(ts=1000), eps)
    builder.start(_head(ts=2000), eps)
    await asyncio.sleep(0.01)
    assert [o["ts"] for o in out] == [1000, 2000]
    assert all(len(o["endpoints"]) == SLICE + 1 for o in out)


async def _runs_are_independent_and_empty_items_are_not_sent() -> None:
    out: list[dict[str, Any]] = []
    builder = _builder(out)
    closed = Ep(1)
    closed.closed = True
    builder.start(_head(run="a"), [Ep(0)])
    builder.start(_head(run="b"), [closed])
    builder.start(_head(run="c"), [])
    builder.complete_all()
    assert [(o["run_id"], len(o["endpoints"])) for o in out] == [("a", 1)]


def test_built_in_slices_the_loop_runs_between_them() -> None:
    asyncio.run(_built_in_slices_the_loop_runs_between_them())


def test_complete_emits_now_and_leaves_out_endpoints_closed_meanwhile() -> None:
    asyncio.run(_complete_emits_now_and_leaves_out_endpoints_closed_meanwhile())


def test_next_interval_finishes_the_previous_item_first() -> None:
    asyncio.run(_next_interval_finishes_the_previous_item_first())


def test_runs_are_independent_and_empty_items_are_not_sent() -> None:
    asyncio.run(_runs_are_independent_and_empty_items_are_not_sent())
