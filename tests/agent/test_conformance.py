"""PROTOCOL.md conformance of a real ``sipswarm agent`` process: connection, hello,
heartbeat, tolerance of unknown and bad frames, assign_result.

Every test drives the worker through tests/agent/harness.py (a controller
speaking PROTOCOL.md) on loopback, with debug logs, and checks at the end
that the token never appeared in the worker's output. Endpoints are direct
(``register: false``) so no PBX is needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import assign, endpoint, run

from .conformance import (
    PROTOCOL_STATUSES,
    REFUSAL_REASONS,
    RecordingHarness,
    agent_runner,
    is_epoch_ms,
    is_number,
    log_events,
    wait_connected,
    wav_bytes,
)

HELLO_KEYS = {
    "type", "protocol", "worker_id", "name", "version", "status", "capacity", "labels", "media",
    "resume",
}  # fmt: skip
HEARTBEAT_KEYS = {
    "type", "ts", "status", "active_endpoints", "free_endpoints", "cpu_percent",
    "memory_percent", "loop_lag_ms_p99",
}  # fmt: skip


def check_hello(hello: dict[str, Any], token: str) -> None:
    assert set(hello) >= HELLO_KEYS, f"hello lacks {HELLO_KEYS - set(hello)}"
    assert hello["type"] == "hello" and hello["protocol"] == 1
    assert isinstance(hello["worker_id"], str) and hello["worker_id"]
    assert isinstance(hello["version"], str) and hello["version"]
    assert hello["status"] in PROTOCOL_STATUSES
    cap = hello["capacity"]
    assert set(cap) >= {"max_endpoints", "cpus", "memory_mb"}
    assert all(isinstance(cap[k], int) and cap[k] > 0 for k in ("max_endpoints", "cpus"))
    assert isinstance(cap["memory_mb"], int) and cap["memory_mb"] > 0
    assert isinstance(hello["labels"], dict) and isinstance(hello["media"], list)
    assert token not in json.dumps(hello)


def check_heartbeat(hb: dict[str, Any]) -> None:
    assert set(hb) >= HEARTBEAT_KEYS, f"heartbeat lacks {HEARTBEAT_KEYS - set(hb)}"
    assert is_epoch_ms(hb["ts"]), hb
    assert hb["status"] in PROTOCOL_STATUSES
    for key in ("active_endpoints", "free_endpoints"):
        assert isinstance(hb[key], int) and not isinstance(hb[key], bool) and hb[key] >= 0, hb
    for key in ("cpu_percent", "memory_percent", "loop_lag_ms_p99"):
        assert is_number(hb[key]) and hb[key] >= 0, hb


def test_upgrade_hello_heartbeat_and_identity_across_restarts(tmp_path: Path) -> None:
    """Bearer + sipswarm.v1 + permessage-deflate; every hello/heartbeat key and type;
    heartbeats at welcome.heartbeat_interval_s; worker_id and media kept over a restart;
    resume null on a fresh start."""
    media = wav_bytes()
    sha = hashlib.sha256(media).hexdigest()

    async def scenario() -> None:
        ctl = RecordingHarness(heartbeat_interval_s=0.4)
        await ctl.start()
        try:
            with agent_runner(tmp_path) as agents:
                proc = agents.start(ctl, WORKER_NAME="edge-1", WORKER_LABELS="region=eu-west")
                await wait_connected(ctl, proc)
                await ctl.wait_for(lambda: len(ctl.heartbeats) >= 6, timeout=10)
                await ctl.send(
                    {"type": "media", "sha256": sha, "name": "a.wav", "size": len(media)}
                )
                await ctl.send(media)
                await ctl.wait_for(lambda: (tmp_path / "state" / "media" / f"{sha}.wav").exists())
                request, response = ctl.upgrades[0]
                first = ctl.hellos[0]
                beats = list(ctl.heartbeats)
                proc.popen.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.popen.wait, 20) == 0
                again = agents.start(ctl)  # same STATE_DIR, no WORKER_ID
                await wait_connected(ctl, again, sessions=2)
                second = ctl.hellos[1]
        finally:
            await ctl.stop()
        assert request["Authorization"] == f"Bearer {ctl.token}"
        assert "sipswarm.v1" in request["Sec-WebSocket-Protocol"]
        assert response["Sec-WebSocket-Protocol"] == "sipswarm.v1"
        assert "permessage-deflate" in request["Sec-WebSocket-Extensions"]
        assert "permessage-deflate" in response["Sec-WebSocket-Extensions"]
        check_hello(first, ctl.token)
        assert first["name"] == "edge-1" and first["labels"] == {"region": "eu-west"}
        assert first["status"] == "ONLINE" and first["resume"] is None and first["media"] == []
        assert first["capacity"]["max_endpoints"] == 20
        for _, hb in beats:
            check_heartbeat(hb)
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(beats)]
        assert 0.25 < statistics.median(gaps) < 0.8, gaps  # welcome said 0.4 s
        check_hello(second, ctl.token)
        assert second["worker_id"] == first["worker_id"]
        assert second["resume"] is None, "a new process starts a new stream"
        assert second["media"] == [sha]

    run(scenario(), 60)


def test_worker_id_from_environment_wins(tmp_path: Path) -> None:
    async def scenario() -> None:
        ctl = RecordingHarness()
        await ctl.start()
        try:
            with agent_runner(tmp_path) as agents:
                proc = agents.start(ctl, WORKER_ID="w-fixed-7")
                await wait_connected(ctl, proc)
        finally:
            await ctl.stop()
        assert ctl.hellos[0]["worker_id"] == "w-fixed-7"

    run(scenario(), 40)


def test_unknown_and_bad_frames_are_never_fatal(tmp_path: Path) -> None:
    """Unknown types/fields ignored and logged once; a stray binary frame and non-JSON
    text are answered with ``error`` (in_reply_to, detail); the session stays up; a frame
    over 16 MiB makes the library close the connection (1009) and the worker reconnects."""

    async def scenario() -> None:
        ctl = RecordingHarness(heartbeat_interval_s=0.3)
        await ctl.start()
        try:
            with agent_runner(tmp_path) as agents:
                proc = agents.start(ctl)
                await wait_connected(ctl, proc)
                for _ in range(3):
                    await ctl.send({"type": "frobnicate", "x": 1})
                    await ctl.send({"type": "ack", "seq": 0, "colour": "blue"})
                    await ctl.send({"type": "cancel", "run_id": "nope", "reason": "user", "z": 2})
                await ctl.send(b"\x00\x01 not media")
                assert ctl.ws is not None
                await ctl.ws.send("{not json")
                await ctl.ws.send("[1, 2]")
                await ctl.ws.send('{"no_type": 1}')
                await ctl.wait_for(lambda: len(ctl.of_type("error")) >= 4)
                beats = len(ctl.heartbeats)
                await ctl.wait_for(lambda: len(ctl.heartbeats) >= beats + 2)
                assert len(ctl.hellos) == 1 and proc.running()
                await ctl.ws.send("x" * (16 * 1024 * 1024 + 1))
                await ctl.wait_for(lambda: len(ctl.hellos) == 2, timeout=15)
                errors = ctl.of_type("error")
                events = log_events(proc)
        finally:
            await ctl.stop()
        assert ctl.close_codes[0] == 1009, ctl.close_codes  # message too big (library)
        for err in errors:
            assert isinstance(err["in_reply_to"], str) and err["in_reply_to"]
            assert isinstance(err["detail"], str) and err["detail"]
        by_reply = {e["in_reply_to"] for e in errors}
        assert "media" in by_reply  # the stray binary frame
        assert any("not JSON" in e["detail"] for e in errors)
        assert any("JSON object" in e["detail"] for e in errors)
        assert any("type" in e["detail"] for e in errors)
        noted = [e.get("what") for e in events if "ignored" in str(e.get("event"))]
        assert noted.count("type:frobnicate") == 1, noted
        assert sum(1 for w in noted if w and "colour" in w) == 1, noted
        assert sum(1 for w in noted if w and "cancel.z" in w) == 1, noted
        assert not [w for w in noted if w and "JSON" in w], (
            "a rejected frame is not an ignored field"
        )

    run(scenario(), 60)


def receivers(run_id: str, n: int, idle_s: float = 60, start: int = 0) -> list[dict[str, Any]]:
    return [
        endpoint(
            f"{run_id}/receivers/{i}",
            "receiver",
            str(1700 + i),
            call={"duration_s": 30, "idle_timeout_s": idle_s},
        )
        for i in range(start, start + n)
    ]


def results(ctl: RecordingHarness, aid: str) -> list[dict[str, Any]]:
    return [r for r in ctl.of_type("assign_result") if r["assignment_id"] == aid]


def test_assign_results_reasons_and_idempotency(tmp_path: Path) -> None:
    """Every assign answered; invalid lists every problem and starts nothing; capacity says
    free and requested; a clash of endpoint ids is duplicate; a repeated assignment_id is
    accepted again and changes nothing, also after that assignment finished."""

    async def scenario() -> None:
        ctl = RecordingHarness(heartbeat_interval_s=0.3)
        await ctl.start()
        try:
            with agent_runner(tmp_path) as agents:
                proc = agents.start(ctl, MAX_ENDPOINTS="4")
                await wait_connected(ctl, proc)
                bad = receivers("r-bad", 2)
                bad[0]["role"] = "juggler"
                bad[1]["registrar"]["port"] = 70000
                del bad[1]["account"]
                await ctl.send(assign("a-bad", "r-bad", bad))
                await ctl.send(assign("a-big", "r-big", receivers("r-big", 5)))
                ok = assign("a-ok", "r-ok", receivers("r-ok", 2, idle_s=2))
                ok["endpoints"][0]["unknown_knob"] = True
                await ctl.send(ok)
                await ctl.wait_for(lambda: results(ctl, "a-ok"))
                await ctl.send(ok)
                await ctl.send(assign("a-dup", "r-ok", receivers("r-ok", 1)))
                await ctl.wait_for(lambda: results(ctl, "a-dup") and len(results(ctl, "a-ok")) == 2)
                await ctl.wait_for(lambda: ctl.items_of("finished"), timeout=15)
                await ctl.send(ok)
                await ctl.wait_for(lambda: len(results(ctl, "a-ok")) == 3)
                await asyncio.sleep(1.5)  # would be long enough for a restart to show
                events = log_events(proc)
        finally:
            await ctl.stop()
        for r in ctl.of_type("assign_result"):
            assert r["accepted"] or r["reason"] in REFUSAL_REASONS, r
        (bad_r,) = results(ctl, "a-bad")
        assert not bad_r["accepted"] and bad_r["reason"] == "invalid"
        for where in ("role", "registrar.port", "account"):
            assert where in bad_r["detail"], bad_r["detail"]
        assert not [i for i in ctl.items if i.get("run_id") == "r-bad"], "invalid assign started"
        (big,) = results(ctl, "a-big")
        assert big["reason"] == "capacity" and big["detail"] == "4 endpoints free, 5 requested"
        assert [r["accepted"] for r in results(ctl, "a-ok")] == [True, True, True]
        (dup,) = results(ctl, "a-dup")
        assert not dup["accepted"] and dup["reason"] == "duplicate", dup
        starts = [i for i in ctl.items_of("phase") if i["phase"] == "INITIALIZING"]
        assert len(starts) == 2 and len(ctl.items_of("finished")) == 1
        assert len(ctl.items_of("outcome")) == 2
        noted = [e.get("what") for e in events if "ignored" in str(e.get("event"))]
        assert noted.count("assign.endpoints.unknown_knob") == 1, noted

    run(scenario(), 60)


def test_token_absent_from_every_log_line_even_when_refused(tmp_path: Path) -> None:
    """A refused token (401) and a debug log: the token is nowhere in the output."""

    async def scenario() -> None:
        ctl = RecordingHarness()
        await ctl.start()
        try:
            with agent_runner(tmp_path) as agents:
                proc = agents.start(ctl, token="wrong-token-Zq81")
                await ctl.wait_for(lambda: ctl.attempts, timeout=15)
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                assert proc.running()
        finally:
            await ctl.stop()

    run(scenario(), 40)
