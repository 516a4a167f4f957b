"""assign/cancel/drain/media handling and the health endpoint, over a real connection."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import wave
from pathlib import Path

from sipswarm._native import NATIVE

from .conftest import controller, run, running_worker
from .scripted_backend import Script, assign_frame


def wav_bytes(channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(8000)
        w.writeframes(b"\x01" * (channels * width * 800))
    return buf.getvalue()


def test_invalid_assign_lists_every_problem_and_starts_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with controller() as ctl, running_worker(tmp_path, ctl) as w:
            await ctl.wait_for(lambda: ctl.ws is not None)
            frame = assign_frame(n=4)
            frame["endpoints"][3]["registrar"]["port"] = 70000
            frame["endpoints"][1]["call"]["target"] = None
            frame["endpoints"][2]["media"]["codecs"] = ["G729"]
            await ctl.send(frame)
            (result,) = await ctl.wait_for(lambda: ctl.of_type("assign_result"))
            assert result["accepted"] is False and result["reason"] == "invalid"
            detail = result["detail"]
            assert (
                "endpoints[3].registrar.port must be 1-65535, got 70000 (endpoint r-1/callers/3)"
                in detail
            )
            assert "endpoints[1].call.target is required for a caller" in detail
            assert "endpoints[2].media.codecs[0] 'G729' is not supported" in detail
            assert w.backend.started == []
            # nothing held: the same id, now valid, is accepted
            await ctl.send(assign_frame(n=1))
            await ctl.wait_for(lambda: len(ctl.of_type("assign_result")) == 2)
            assert ctl.of_type("assign_result")[1]["accepted"] is True

    run(scenario())


def test_repeated_assignment_id_is_idempotent_and_overlap_is_duplicate(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with controller() as ctl, running_worker(tmp_path, ctl, Script(hold_s=None)) as w:
            await ctl.wait_for(lambda: ctl.ws is not None)
            await ctl.send(assign_frame(n=2))
            await ctl.send(assign_frame(n=2))
            await ctl.send(assign_frame(aid="a-2", n=3))  # same run, endpoints 0-1 overlap
            results = await ctl.wait_for(
                lambda: len(ctl.of_type("assign_result")) == 3 and ctl.of_type("assign_result")
            )
            assert [r["accepted"] for r in results] == [True, True, False]
            assert results[2]["reason"] == "duplicate"
            assert "r-1/callers/0" in results[2]["detail"]
            assert len(w.backend.started) == 1
            phases = ctl.items_of("phase")
            await asyncio.sleep(0.1)
            assert len(ctl.items_of("phase")) == len(phases) == 4  # nothing started twice

    run(scenario())


def test_capacity_refusal_says_free_and_requested(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with controller() as ctl, running_worker(tmp_path, ctl, max_endpoints=2) as w:
            await ctl.wait_for(lambda: ctl.ws is not None)
            await ctl.send(assign_frame(n=3))
            (result,) = await ctl.wait_for(lambda: ctl.of_type("assign_result"))
            assert result == {
                "type": "assign_result",
                "assignment_id": "a-1",
                "accepted": False,
                "reason": "capacity",
                "detail": "2 endpoints free, 3 requested",
            }
            assert w.backend.started == []

    run(scenario())


def test_cancel_closes_the_run_with_cancelled(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with controller() as ctl, running_worker(tmp_path, ctl, Script(hold_s=None)) as w:
            await ctl.wait_for(lambda: ctl.ws is not None)
            await ctl.send(assign_frame(n=2))
            await ctl.wait_for(lambda: ctl.of_type("assign_result"))
            await ctl.send({"type": "cancel", "run_id": "r-1", "reason": "user"})
            await ctl.wait_for(lambda: ctl.items_of("finished"))
            assert w.backend.cancelled == [("r-1", "user")]
            assert {o["outcome"] for o in ctl.items_of("outcome")} == {"CANCELLED"}
            assert ctl.items_of("finished")[0]["outcomes"] == {"CANCELLED": 2}

    run(scenario())


def test_drain_finishes_runs_flushes_data_closes_and_exits_0(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with controller() as ctl, running_worker(tmp_path, ctl, Script(hold_s=0.5)) as w:
            await ctl.wait_for(lambda: ctl.ws is not None)
            await ctl.send(assign_frame(n=2))
            await ctl.wait_for(lambda: ctl.of_type("assign_result"))
            await ctl.send({"type": "drain"})
            await ctl.wait_for(lambda: any(h["status"] == "DRAINING" for _, h in ctl.heartbeats))
            await ctl.send(assign_frame(aid="a-2", run="r-2", n=1))
            results = await ctl.wait_for(
                lambda: len(ctl.of_type("assign_result")) == 2 and ctl.of_type("assign_result")
            )
            assert results[1]["reason"] == "draining"
            assert await w.exit_code() == 0
            assert ctl.items_of("finished") and w.supervisor.stream.all_acked
            assert ctl.close_codes[-1] == 1000 and w.backend.closed
            assert {o["outcome"] for o in ctl.items_of("outcome")} == {"SUCCESS"}

    run(scenario())


def test_media_is_checked_stored_listed_and_usable(tmp_path: Path) -> None:
    async def scenario() -> None:
        good = wav_bytes()
        sha = hashlib.sha256(good).hexdigest()
        stereo = wav_bytes(channels=2)
        async with controller() as ctl, running_worker(tmp_path, ctl) as w:
            await ctl.wait_for(lambda: ctl.ws is not None)
            await ctl.send({"type": "media", "sha256": sha, "name": "a.wav", "size": len(good)})
            await ctl.send(good)
            bad_sha = hashlib.sha256(stereo).hexdigest()
            await ctl.send(
                {"type": "media", "sha256": bad_sha, "name": "s.wav", "size": len(stereo)}
            )
            await ctl.send(stereo)
            await ctl.send({"type": "media", "sha256": "0" * 64, "name": "x.wav", "size": 3})
            await ctl.send(b"abc")
            await ctl.send(b"orphan binary")
            errors = await ctl.wait_for(
                lambda: len(ctl.of_type("error")) == 3 and ctl.of_type("error")
            )
            assert all(e["in_reply_to"] == "media" for e in errors)
            assert "2 channel(s) of 16 bits" in errors[0]["detail"]
            assert "sha256 of the received file is" in errors[1]["detail"]
            assert "without a preceding media frame" in errors[2]["detail"]
            assert (tmp_path / "media" / f"{sha}.wav").read_bytes() == good
            assert w.supervisor.media.held() == [sha]
            frame = assign_frame(n=1)
            frame["endpoints"][0]["media"]["source"] = {"kind": "file", "sha256": sha}
            await ctl.send(frame)
            (result,) = await ctl.wait_for(lambda: ctl.of_type("assign_result"))
            assert result["accepted"] is True
            ctl.drop()
            await ctl.wait_for(lambda: len(ctl.hellos) == 2)
            assert ctl.hellos[1]["media"] == [sha]

    run(scenario())


def test_unknown_types_and_fields_are_ignored_bad_frames_answered(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with controller() as ctl, running_worker(tmp_path, ctl) as w:
            await ctl.wait_for(lambda: ctl.ws is not None)
            await ctl.send({"type": "future_thing", "x": 1})
            await ctl.send({"type": "ack", "seq": 0, "extra": True})
            await ctl.ws.send("not json")  # type: ignore[union-attr]
            await ctl.send({"type": "cancel"})
            errors = await ctl.wait_for(
                lambda: len(ctl.of_type("error")) == 2 and ctl.of_type("error")
            )
            assert errors[0]["in_reply_to"] == "unknown" and "not JSON" in errors[0]["detail"]
            assert errors[1] == {
                "type": "error",
                "in_reply_to": "cancel",
                "detail": "cancel.run_id is required",
            }
            assert w.supervisor.link.connected and len(ctl.hellos) == 1

    run(scenario())


async def http_get(port: int, path: str) -> tuple[str, dict[str, str], str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = (await reader.read()).decode()
    writer.close()
    head, _, body = raw.partition("\r\n\r\n")
    status, *lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status, headers, body


def test_health_and_metrics_endpoints(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with controller() as ctl, running_worker(tmp_path, ctl, Script(hold_s=None)) as w:
            await ctl.wait_for(lambda: ctl.ws is not None)
            await ctl.send(assign_frame(n=3))
            await ctl.wait_for(lambda: ctl.of_type("assign_result"))
            port = w.agent.health.port
            status, headers, body = await http_get(port, "/health")
            assert status == "HTTP/1.1 200 OK" and headers["Content-Type"] == "application/json"
            health = json.loads(body)
            assert health["status"] == "ONLINE" and health["connected"] is True
            assert health["active_endpoints"] == 3 and health["free_endpoints"] == 7
            assert health["version"] and health["worker_id"] == "w-test"
            assert health["rtp_path"] == ("c" if NATIVE else "python")
            status, headers, body = await http_get(port, "/metrics")
            assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert 'sipswarm_endpoints{phase="REGISTERED"} 3' in body
            assert 'sipswarm_worker_status{status="ONLINE"} 1' in body
            assert "sipswarm_loop_lag_p99_ms " in body and "sipswarm_data_buffer_bytes " in body
            assert "sipswarm_calls_total 0" in body
            assert (await http_get(port, "/nope"))[0] == "HTTP/1.1 404 Not Found"

    run(scenario())
