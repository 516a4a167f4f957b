"""The controller link against a real websockets controller on 127.0.0.1."""

from __future__ import annotations

import itertools
from pathlib import Path

from sipswarm import __version__

from .conftest import controller, run, running_worker
from .scripted_backend import Script, assign_frame


def test_hello_then_heartbeats_at_the_welcome_interval(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with controller(heartbeat_interval_s=0.15) as ctl, running_worker(tmp_path, ctl):
            await ctl.wait_for(lambda: len(ctl.heartbeats) >= 4)
            hello = ctl.hellos[0]
            assert hello["type"] == "hello" and hello["protocol"] == 1
            assert hello["worker_id"] == "w-test" and hello["name"] == "test-worker"
            assert hello["version"] == __version__ and hello["status"] == "ONLINE"
            assert hello["capacity"]["max_endpoints"] == 10
            assert hello["capacity"]["cpus"] >= 1 and hello["capacity"]["memory_mb"] > 0
            assert hello["media"] == [] and hello["resume"] is None
            assert isinstance(hello["stream"], str)
            times = [t for t, _ in ctl.heartbeats[:4]]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert all(g >= 0.1 for g in gaps), gaps  # paced by the welcome, not flooding
            hb = ctl.heartbeats[-1][1]
            assert hb["status"] == "ONLINE"
            assert hb["active_endpoints"] == 0 and hb["free_endpoints"] == 10
            assert 0 <= hb["cpu_percent"] <= 100 and 0 < hb["memory_percent"] <= 100
            assert hb["loop_lag_ms_p99"] >= 0 and isinstance(hb["ts"], int)

    run(scenario())


def test_upgrade_carries_subprotocol_and_bearer_token(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with controller() as ctl, running_worker(tmp_path, ctl):
            await ctl.wait_for(lambda: ctl.ws is not None)
            assert ctl.ws is not None and ctl.ws.subprotocol == "sipswarm.v1"
            assert ctl.ws.request is not None
            assert ctl.ws.request.headers["Authorization"] == f"Bearer {ctl.token}"

    run(scenario())


def test_assign_runs_and_items_arrive_in_order_with_acks(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with controller() as ctl, running_worker(tmp_path, ctl, Script(hold_s=0.2)) as w:
            await ctl.wait_for(lambda: ctl.ws is not None)
            await ctl.send(assign_frame(n=2))
            result = await ctl.wait_for(lambda: ctl.of_type("assign_result"))
            assert result == [
                {
                    "type": "assign_result",
                    "assignment_id": "a-1",
                    "accepted": True,
                    "reason": None,
                    "detail": None,
                }
            ]
            await ctl.wait_for(lambda: ctl.items_of("finished"))
            kinds = [i["kind"] for i in ctl.items]
            assert kinds.count("phase") == 6 and kinds.count("outcome") == 2
            assert kinds[-1] == "finished"
            reg = [i for i in ctl.items_of("phase") if i["phase"] == "REGISTERED"]
            assert reg[0]["contact"] == "sip:1000@127.0.0.1"
            state = ctl.stream_state()
            assert sorted(state.held) == list(range(1, max(state.held) + 1))
            await ctl.wait_for(lambda: w.supervisor.stream.all_acked)

    run(scenario())
