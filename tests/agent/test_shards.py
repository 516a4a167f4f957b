"""The sharded backend: split by capacity, merge items, survive a dead shard."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sipswarm.agent.assignment import validate_assignment
from sipswarm.agent.config import AgentConfig
from sipswarm.agent.shards import (
    MetricsMerger,
    ShardedBackend,
    shard_config,
    split_assignment,
    split_ports,
)
from sipswarm.errors import ResourceError

from .conftest import run
from .scripted_backend import assign_frame

ROOT = Path(__file__).resolve().parents[2]


def config(tmp_path: Path, max_endpoints: int = 10) -> AgentConfig:
    return AgentConfig(
        controller_url="ws://127.0.0.1:1/v1/worker",
        token="t",
        name="shard-test",
        worker_id="w-shards",
        state_dir=tmp_path,
        max_endpoints=max_endpoints,
        rtp_port_range=(30000, 30999),
        shards=2,
    )


def spec(n: int, aid: str = "a-1", run_id: str = "r-1") -> Any:
    result, problems = validate_assignment(assign_frame(aid, run_id, n), held_media=())
    assert result is not None, problems
    return result


def test_ports_split_into_disjoint_even_ranges() -> None:
    assert split_ports((20000, 39999), 2, 0) == (20000, 29999)
    assert split_ports((20000, 39999), 2, 1) == (30000, 39999)
    assert split_ports((20001, 20010), 3, 2) == (20006, 20007)
    with pytest.raises(ResourceError, match="RTP_PORT_RANGE 20000-20002 is too small"):
        split_ports((20000, 20002), 3, 0)


def test_shard_config_shares_endpoints(tmp_path: Path) -> None:
    shares = [shard_config(config(tmp_path, 11), 2, i).max_endpoints for i in (0, 1)]
    assert shares == [6, 5]


def test_assignment_spread_by_free_capacity() -> None:
    parts = split_assignment(spec(6), [4, 2])
    assert [len(p.endpoints) if p else 0 for p in parts] == [4, 2]
    ids = [e.endpoint_id for p in parts if p for e in p.endpoints]
    assert sorted(ids) == sorted(e.endpoint_id for e in spec(6).endpoints)
    parts = split_assignment(spec(2), [0, 5])
    assert parts[0] is None and parts[1] is not None
    with pytest.raises(ResourceError, match="3 endpoints free, 4 requested"):
        split_assignment(spec(4), [1, 2])


def test_metrics_merged_per_run_and_interval() -> None:
    out: list[dict[str, Any]] = []
    merger = MetricsMerger(out.append, lambda run_id: 1000)
    sample = {"kind": "metrics", "run_id": "r", "ts": 5100, "endpoints": [{"endpoint_id": "a"}]}
    merger.add(0, sample, holders={0, 1}, now=0.0)
    assert out == []
    merger.add(1, {**sample, "ts": 5200, "endpoints": [{"endpoint_id": "b"}]}, {0, 1}, 0.1)
    assert len(out) == 1 and out[0]["ts"] == 5200
    assert [e["endpoint_id"] for e in out[0]["endpoints"]] == ["a", "b"]
    merger.add(0, {**sample, "ts": 6100}, holders={0, 1}, now=1.0)
    merger.flush(1.1)
    assert len(out) == 1, "waits for the other shard"
    merger.flush(1.4)
    assert len(out) == 2 and out[1]["ts"] == 6100


def test_merged_generator_block_is_the_worst_shard() -> None:
    out: list[dict[str, Any]] = []
    merger = MetricsMerger(out.append, lambda run_id: 1000)

    def sample(shard: int, gen: dict[str, Any] | None) -> None:
        item = {"kind": "metrics", "run_id": "r", "ts": 5100, "endpoints": [], "generator": gen}
        merger.add(shard, item, holders={0, 1, 2}, now=0.0)

    sample(
        0,
        {
            "loop_lag_ms_p99": 1.5,
            "send_lateness_ms_p99": 0.8,
            "skipped_ticks": 0,
            "overloaded": False,
        },
    )
    sample(
        1,
        {
            "loop_lag_ms_p99": 25.0,
            "send_lateness_ms_p99": None,
            "skipped_ticks": 3,
            "overloaded": True,
        },
    )
    sample(2, None)  # a shard whose media clock has not started
    assert out[0]["generator"] == {
        "loop_lag_ms_p99": 25.0,
        "send_lateness_ms_p99": 0.8,
        "skipped_ticks": 3,
        "overloaded": True,
    }


async def _collect(backend: ShardedBackend, out: list[dict[str, Any]]) -> None:
    await backend.start(tune_gc=False)
    try:
        await backend.start_assignment(spec(6))
        await asyncio.wait_for(backend.wait_idle(), 10)
    finally:
        await backend.close()


def test_two_shard_processes_each_carry_part_of_one_assignment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    out: list[dict[str, Any]] = []
    backend = ShardedBackend(config(tmp_path), out.append, "tests.agent.shard_factories:short", 2)
    run(_collect(backend, out))
    finished = [i for i in out if i["kind"] == "finished"]
    assert len(finished) == 1, "one merged finished per assignment"
    assert finished[0]["endpoints"] == 6 and finished[0]["outcomes"] == {"SUCCESS": 6}
    outcomes = [i["endpoint_id"] for i in out if i["kind"] == "outcome"]
    assert sorted(outcomes) == sorted(e.endpoint_id for e in spec(6).endpoints)
    metrics = [i for i in out if i["kind"] == "metrics"]
    assert metrics, "metrics samples flow through"
    merged = [m for m in metrics if len(m["endpoints"]) == 6]
    assert merged, "samples of the same interval from both shards are merged into one item"
    assert out.index(finished[0]) == len(out) - 1, "finished comes last"


def test_dead_shard_closes_its_endpoints_with_oserror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    out: list[dict[str, Any]] = []
    backend = ShardedBackend(config(tmp_path), out.append, "tests.agent.shard_factories:endless", 2)

    async def scenario() -> None:
        await backend.start(tune_gc=False)
        try:
            await backend.start_assignment(spec(6))
            victim = backend._shards[0].proc
            assert victim is not None
            await asyncio.sleep(0.3)
            os.kill(victim.pid, signal.SIGKILL)
            for _ in range(100):
                if sum(1 for i in out if i["kind"] == "outcome") >= 3:
                    break
                await asyncio.sleep(0.1)
            await backend.cancel_run("r-1", "user")
            await asyncio.wait_for(backend.wait_idle(), 10)
            for _ in range(100):
                if backend._shards[0].alive and backend._shards[0].ready.is_set():
                    break
                await asyncio.sleep(0.1)
            assert backend._shards[0].alive, "a replacement shard was started"
        finally:
            await backend.close()

    run(scenario())
    outcomes = Counter(i["outcome"] for i in out if i["kind"] == "outcome")
    assert outcomes == {"OSERROR": 3, "CANCELLED": 3}
    reasons = {i["reason"] for i in out if i["kind"] == "outcome" and i["outcome"] == "OSERROR"}
    assert reasons == {"engine shard 0 died (exit status -9)"}
    finished = [i for i in out if i["kind"] == "finished"]
    assert len(finished) == 1
    assert finished[0]["outcomes"] == {"OSERROR": 3, "CANCELLED": 3}
    closed = [i for i in out if i["kind"] == "phase" and i["phase"] == "CLOSED"]
    assert len(closed) == 6


def test_capacity_reserved_until_the_shard_confirms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A status frame that crossed a start on the pipe must not promise the same room twice."""
    monkeypatch.chdir(ROOT)
    out: list[dict[str, Any]] = []
    backend = ShardedBackend(config(tmp_path), out.append, "tests.agent.shard_factories:endless", 2)

    async def scenario() -> None:
        await backend.start(tune_gc=False)
        try:
            assert backend.free_endpoints() == 10
            first = asyncio.ensure_future(backend.start_assignment(spec(6, "a-1", "r-1")))
            await asyncio.sleep(0)  # the start frames are written, not yet confirmed
            for shard in backend._shards:  # stale status frames, sent before the start
                backend._on_status(shard, ("status", {**shard.status, "free": 5}))
            assert backend.free_endpoints() == 4
            await first
            assert backend.free_endpoints() == 4
            with pytest.raises(ResourceError, match="4 endpoints free, 5 requested"):
                await backend.start_assignment(spec(5, "a-2", "r-2"))
            await backend.start_assignment(spec(4, "a-3", "r-3"))
            await backend.cancel_run("r-1", "user")
            await backend.cancel_run("r-3", "user")
            await asyncio.wait_for(backend.wait_idle(), 10)
        finally:
            await backend.close()

    run(scenario())


def test_problem_only_when_every_live_shard_has_one(tmp_path: Path) -> None:
    backend = ShardedBackend(config(tmp_path), lambda item: None, "unused:factory", 2)
    for shard in backend._shards:
        shard.alive = True
        shard.ready.set()
    backend._shards[0].status["problem"] = "no free RTP port pair in 30000-30499"
    assert backend.problem() is None, "shard 1 can still run endpoints"
    backend._shards[1].status["problem"] = "no free RTP port pair in 30500-30999"
    assert backend.problem() == (
        "shard 0: no free RTP port pair in 30000-30499; "
        "shard 1: no free RTP port pair in 30500-30999"
    )
    backend._shards[1].status["problem"] = None
    assert backend.problem() is None


SUPERVISOR_GC_PROBE = """
import asyncio, gc, sys
from pathlib import Path
from sipswarm.agent.config import AgentConfig
from sipswarm.agent.shards import ShardedBackend

async def main(tune):
    config = AgentConfig(controller_url="ws://127.0.0.1:1/v1/worker", token="t", name="gc",
                         worker_id="w-gc", state_dir=Path(sys.argv[1]), max_endpoints=2,
                         rtp_port_range=(30000, 30999), shards=1)
    backend = ShardedBackend(config, lambda item: None, "tests.agent.shard_factories:short", 1)
    await backend.start(tune_gc=tune)
    print(gc.get_threshold()[0], gc.get_freeze_count() > 0)
    await backend.close()

print(gc.get_threshold()[0], gc.get_freeze_count() > 0)
for tune in (False, True):
    asyncio.run(main(tune))
"""


def test_supervisor_collects_like_a_shard_once_its_shards_run(tmp_path: Path) -> None:
    """The process that starts shards is the supervisor: it freezes its start-up heap
    and raises the young-generation threshold as each shard does (default 700)."""
    done = subprocess.run(
        [sys.executable, "-c", SUPERVISOR_GC_PROBE, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    default, untuned, tuned = done.stdout.split("\n")[:3]
    assert untuned == default and default.endswith(" False")
    assert tuned == "50000 True"
