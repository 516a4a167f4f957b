"""The controller link against a real websockets controller on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path

from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from sipswarm import __version__
from sipswarm.agent.datastream import DataStream
from sipswarm.agent.link import Backoff, ControllerLink

from .conftest import FAST, controller, make_config, run, running_worker
from .harness import ControllerHarness
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
            assert times[3] - times[0] >= 0.3, times  # paced by the welcome (3 x 0.15 s)
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


def test_cut_then_resume_replays_unacked_frames_every_seq_exactly_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        script = Script(hold_s=1.2, metrics_every_s=0.02)
        async with (
            controller(auto_ack=False, forget_unacked_on_drop=True) as ctl,
            running_worker(tmp_path, ctl, script) as w,
        ):
            await ctl.wait_for(lambda: ctl.ws is not None)
            await ctl.send(assign_frame(n=1))
            state = await ctl.wait_for(
                lambda: ctl.streams and len(ctl.stream_state().held) >= 4 and ctl.stream_state()
            )
            await ctl.ack_all()  # the controller keeps these
            await ctl.wait_for(lambda: len(state.unacked) >= 3)  # these it will lose
            lost = set(state.unacked)
            ctl.auto_ack = True
            ctl.drop()
            await ctl.wait_for(lambda: len(ctl.hellos) == 2)
            resume = ctl.hellos[1]["resume"]
            assert resume["stream"] == ctl.hellos[0]["stream"] == w.supervisor.stream.stream_id
            assert resume["last_seq"] >= max(lost)
            await ctl.wait_for(lambda: ctl.items_of("finished"), timeout=10)
            await ctl.wait_for(lambda: w.supervisor.stream.all_acked)
            last = w.supervisor.stream.last_seq
            assert sorted(state.held) == list(range(1, last + 1))  # no gap
            replayed = state.arrivals.count
            assert all(replayed(s) == 2 for s in lost)  # the lost ones came again, once
            assert all(replayed(s) == 1 for s in range(1, last + 1) if s not in lost)
            kinds = [i["kind"] for i in ctl.items]
            assert kinds.count("outcome") == 1 and "gap" not in kinds

    run(scenario())


def test_controller_down_buffer_bound_drops_metrics_and_sends_gap(tmp_path: Path) -> None:
    async def scenario() -> None:
        script = Script(hold_s=1.0, metrics_every_s=0.01, metrics_pad=200)
        async with (
            controller() as ctl,
            running_worker(tmp_path, ctl, script, data_buffer_bytes=8000) as w,
        ):
            await ctl.wait_for(lambda: ctl.ws is not None)
            await ctl.send(assign_frame(n=2))
            await ctl.wait_for(lambda: ctl.items_of("metrics"))
            ctl.refuse_status = 503
            ctl.drop()
            await ctl.wait_for(lambda: w.backend.active_endpoints() == 0, timeout=5)
            assert w.supervisor.stream.counters.dropped_items > 0
            assert w.supervisor.stream.buffered_bytes <= 8000 + 2000
            ctl.refuse_status = None
            await ctl.wait_for(lambda: ctl.items_of("finished"), timeout=5)
            gaps = ctl.items_of("gap")
            assert gaps and gaps[0]["run_id"] == "r-1"
            assert (
                sum(g["dropped_items"] for g in gaps) == w.supervisor.stream.counters.dropped_items
            )
            assert gaps[0]["from_ts"] <= gaps[0]["to_ts"]
            kinds = [i["kind"] for i in ctl.items]
            assert kinds.count("outcome") == 2 and kinds.count("phase") == 6  # never dropped
            assert any(code == 503 for _, code in ctl.attempts)

    run(scenario())


def test_bad_token_gets_401_status_error_and_slow_retries(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with controller() as ctl, running_worker(tmp_path, ctl, token="wrong-token") as w:
            await ctl.wait_for(lambda: len(ctl.attempts) >= 3, timeout=5)
            times = [t for t, code in ctl.attempts if code == 401]
            # 0.6 s apart as the worker waits; loose bound: the server stamps arrival times
            assert all(b - a >= 0.45 for a, b in itertools.pairwise(times)), times
            assert w.supervisor.status.value == "ERROR"
            assert "HTTP 401" in (w.supervisor.detail or "")
            assert not ctl.hellos
            ctl.token = "wrong-token"  # the operator fixes the token on the controller side
            await ctl.wait_for(lambda: ctl.hellos, timeout=3)
            assert ctl.hellos[0]["status"] == "ONLINE" and w.supervisor.status.value == "ONLINE"

    run(scenario())


def test_orphan_timeout_cancels_runs_and_keeps_their_data(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            controller(orphan_timeout_s=0.3) as ctl,
            running_worker(tmp_path, ctl, Script(hold_s=None)) as w,
        ):
            await ctl.wait_for(lambda: ctl.ws is not None)
            await ctl.send(assign_frame(n=2))
            await ctl.wait_for(lambda: ctl.of_type("assign_result"))
            ctl.refuse_status = 503
            ctl.drop()
            await ctl.wait_for(lambda: w.backend.cancelled, timeout=5)
            assert w.backend.cancelled == [("r-1", "orphaned")]
            assert not ctl.items_of("outcome")
            ctl.refuse_status = None
            outcomes = await ctl.wait_for(
                lambda: len(ctl.items_of("outcome")) == 2 and ctl.items_of("outcome")
            )
            assert {(o["outcome"], o["reason"]) for o in outcomes} == {("CANCELLED", "orphaned")}
            await ctl.wait_for(lambda: ctl.items_of("finished"))

    run(scenario())


def test_reconnect_within_orphan_timeout_keeps_runs_alive(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            controller(orphan_timeout_s=2) as ctl,
            running_worker(tmp_path, ctl, Script(hold_s=None)) as w,
        ):
            await ctl.wait_for(lambda: ctl.ws is not None)
            await ctl.send(assign_frame(n=1))
            await ctl.wait_for(lambda: ctl.of_type("assign_result"))
            ctl.drop()
            await ctl.wait_for(lambda: len(ctl.hellos) == 2)
            await asyncio.sleep(2.3)
            assert w.backend.cancelled == [] and w.backend.active_endpoints() == 1

    run(scenario())


def test_backoff_doubles_with_jitter_and_401_waits_the_minimum() -> None:
    backoff = Backoff(1.0, 30.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    for n, d in enumerate(delays):
        cap = min(30.0, 2.0**n)
        assert cap / 2 <= d <= cap
    backoff.reset()
    assert backoff.next_delay() <= 1.0

    class Recorder:
        def connect_failed(self, status: int | None, detail: str) -> None:
            self.seen = (status, detail)

    async def scenario() -> None:
        handler = Recorder()
        cfg = make_config(Path("/nonexistent"), ControllerHarness(), timings=FAST)
        link = ControllerLink(cfg, DataStream("u"), handler, rng=random.Random(1))  # type: ignore[arg-type]
        delays = link._reconnect_delays()
        assert next(delays) < FAST.unauthorized_retry_s
        response = Response(401, "Unauthorized", Headers(), b"")
        assert link._process_exception(InvalidStatus(response)) is None  # retried
        assert handler.seen[0] == 401 and "WORKER_TOKEN" in handler.seen[1]
        assert next(delays) >= FAST.unauthorized_retry_s
        assert link._process_exception(OSError("refused")) is None
        assert next(delays) < FAST.unauthorized_retry_s
        bug = TypeError("bug")
        assert link._process_exception(bug) is bug  # a bug is not retried forever

    run(scenario())
