"""PROTOCOL.md conformance, faults and statuses: 401 at the upgrade, jittered backoff,
ERROR when the worker cannot run endpoints, the replay buffer bound and its ``gap``.

Real ``sipswarm agent`` processes, except the buffer bound: an in-process worker with
the real EndpointEngine backend, so that the bound can be a few KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

from sipswarm.agent.main import build_agent
from sipswarm.engine.engine import engine_backend_factory
from tests.e2e.conftest import assign, assign_pairs, endpoint, rtp_range, run

from .conformance import (
    RecordingHarness,
    agent_runner,
    health_port,
    is_epoch_ms,
    wait_connected,
)
from .conftest import make_config


def get_health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
        body: dict[str, Any] = json.loads(resp.read())
        return body


def test_401_is_not_retried_within_a_minute_and_sets_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        ctl = RecordingHarness()
        await ctl.start()
        try:
            with agent_runner(tmp_path) as agents:
                proc = agents.start(ctl, token="not-the-token-77")
                await ctl.wait_for(lambda: ctl.attempts, timeout=15)
                await ctl.wait_for(lambda: _health_or_none(proc), timeout=5)
                await asyncio.sleep(4)  # the first backoff delays are 0.5-1 s and 1-2 s
                health = await asyncio.to_thread(get_health, health_port(proc))
        finally:
            await ctl.stop()
        assert [status for _, status in ctl.attempts] == [401]
        assert health["status"] == "ERROR" and "WORKER_TOKEN" in health["detail"], health
        assert health["connected"] is False

    run(scenario(), 40)


def _health_or_none(proc: Any) -> bool:
    with contextlib.suppress(AssertionError):
        return bool(health_port(proc))
    return False


def test_reconnect_backoff_doubles_from_1_s_with_jitter(tmp_path: Path) -> None:
    async def scenario() -> None:
        ctl = RecordingHarness(refuse_status=503)
        await ctl.start()
        try:
            with agent_runner(tmp_path) as agents:
                agents.start(ctl)
                await ctl.wait_for(lambda: len(ctl.attempts) >= 4, timeout=25)
        finally:
            await ctl.stop()
        times = [t for t, _ in ctl.attempts[:4]]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        for i, gap in enumerate(gaps):
            d = 2.0**i  # 1 s, 2 s, 4 s; each delay drawn in [d/2, d]
            assert d / 2 - 0.05 <= gap <= d + 1.0, (i, gaps)

    run(scenario(), 40)


def test_error_while_no_rtp_port_can_be_bound_then_online(tmp_path: Path) -> None:
    """Every port of RTP_PORT_RANGE held by another process: hello and heartbeats say
    ERROR with a detail, /health too, assigns are refused capacity; ONLINE once freed."""
    low = int(rtp_range(8).split("-")[0])
    held = []
    for port in range(low, low + 8):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", port))
        held.append(sock)

    async def scenario() -> None:
        ctl = RecordingHarness(heartbeat_interval_s=0.3)
        await ctl.start()
        try:
            with agent_runner(tmp_path) as agents:
                proc = agents.start(ctl, RTP_PORT_RANGE=f"{low}-{low + 7}", MAX_ENDPOINTS="4")
                await wait_connected(ctl, proc)
                recv = endpoint("r-err/receivers/0", "receiver", "1770", call={"duration_s": 5})
                await ctl.send(assign("a-err", "r-err", [recv]))
                await ctl.wait_for(lambda: ctl.of_type("assign_result"))
                health = await asyncio.to_thread(get_health, health_port(proc))
                for sock in held:
                    sock.close()
                mark = len(ctl.heartbeats)
                await ctl.wait_for(
                    lambda: [h for _, h in ctl.heartbeats[mark:] if h["status"] == "ONLINE"]
                )
        finally:
            await ctl.stop()
            for sock in held:
                sock.close()
        assert ctl.hellos[0]["status"] == "ERROR"
        first = ctl.heartbeats[0][1]
        assert first["status"] == "ERROR" and "RTP_PORT_RANGE" in first["detail"], first
        (res,) = ctl.of_type("assign_result")
        assert not res["accepted"] and res["reason"] == "capacity", res
        assert "RTP" in res["detail"]
        assert health["status"] == "ERROR" and health["detail"]

    run(scenario(), 40)


def test_buffer_bound_drops_metrics_oldest_first_with_a_gap(tmp_path: Path) -> None:
    """Controller away while a call runs, 24 KiB bound: metrics are dropped and a gap
    item says which run and when; phases, calls, outcomes and finished all arrive."""

    async def scenario() -> None:
        ctl = RecordingHarness(heartbeat_interval_s=0.5)
        await ctl.start()
        config = make_config(
            tmp_path,
            ctl,
            sip_bind_address="127.0.0.1",
            rtp_port_range=tuple(int(p) for p in rtp_range(40).split("-")),
            data_buffer_bytes=24 * 1024,
        )
        agent = build_agent(config, engine_backend_factory)
        task = asyncio.create_task(agent.run(install_signals=False))
        try:
            await ctl.wait_for(lambda: ctl.ws is not None and ctl.heartbeats, timeout=10)
            ids = await assign_pairs(ctl, "r-gap", 2, duration_s=3)
            ctl.refuse_status = 503
            ctl.drop()
            away_from = time.time() * 1000
            await asyncio.sleep(4)
            ctl.refuse_status = None
            await ctl.wait_for(lambda: len(ctl.items_of("finished")) == 2, timeout=20)
            assert not task.done()
        finally:
            agent.supervisor.request_drain("test")
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 10)
            await ctl.stop()
        gaps = ctl.items_of("gap")
        assert gaps, "no gap item"
        for gap in gaps:
            assert gap["run_id"] == "r-gap" and gap["dropped_items"] > 0
            assert is_epoch_ms(gap["from_ts"]) and gap["from_ts"] <= gap["to_ts"]
        assert max(g["to_ts"] for g in gaps) >= away_from
        assert "metrics" in gaps[0]["dropped_kinds"]
        outcomes = {o["endpoint_id"] for o in ctl.items_of("outcome")}
        assert outcomes == set(ids)
        closed = {p["endpoint_id"] for p in ctl.items_of("phase") if p["phase"] == "CLOSED"}
        assert closed == set(ids) and len(ctl.items_of("call")) == 4
        # oldest first: what survived of the away time is its end, not its start
        kept = [m["ts"] for m in ctl.items_of("metrics") if m["ts"] >= away_from]
        assert not kept or min(kept) > min(g["from_ts"] for g in gaps)

    run(scenario(), 60)
