"""Wire models: literal frames in, models or problems out; never an exception."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sipswarm.protocol import (
    Ack,
    AssignEnvelope,
    AssignResult,
    CallResult,
    Capacity,
    DataFrame,
    Hello,
    MetricsItem,
    Outcome,
    Phase,
    PhaseItem,
    RefusalReason,
    Resume,
    UnknownFrame,
    Welcome,
    WorkerStatus,
    call_result_for,
    dump_frame,
    parse_controller_frame,
    parse_item,
    parse_worker_frame,
)


def test_welcome_with_unknown_field_parses_and_notes_it() -> None:
    raw = (
        '{"type": "welcome", "session": "s-42", "heartbeat_interval_s": 5,'
        ' "orphan_timeout_s": 120, "acked_seq": 1839, "future": 1}'
    )
    frame, notes = parse_controller_frame(raw)
    assert frame == Welcome(
        session="s-42", heartbeat_interval_s=5, orphan_timeout_s=120, acked_seq=1839
    )
    assert notes == ["welcome.future ignored"]


def test_welcome_acked_seq_null_means_nothing_known() -> None:
    frame, _ = parse_controller_frame('{"type":"welcome","acked_seq":null}')
    assert isinstance(frame, Welcome) and frame.acked_seq is None


def test_unknown_type_is_tolerated() -> None:
    frame, problems = parse_controller_frame('{"type": "reboot", "now": true}')
    assert frame == UnknownFrame(type="reboot") and problems == []


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\xff\xfe", "frame is not JSON"),
        ("[1, 2]", "frame must be a JSON object, got list"),
        ('{"seq": 1}', "frame.type is required"),
        ('{"type": "ack"}', "ack.seq is required"),
        ('{"type": "ack", "seq": "x"}', "ack.seq must be a valid integer"),
        ('{"type": "assign", "run_id": "r"}', "assign.assignment_id must be a non-empty string"),
        (
            '{"type": "media", "sha256": "AB", "name": "a.wav", "size": 3}',
            'media.sha256 must be 64 lower-case hex digits (sha256), got "AB"',
        ),
    ],
)
def test_bad_frames_give_problems_not_exceptions(raw: str | bytes, problem: str) -> None:
    frame, problems = parse_controller_frame(raw)
    assert frame is None
    assert any(p.startswith(problem) for p in problems), problems


def test_assign_comes_back_as_envelope_with_raw_object() -> None:
    frame, _ = parse_controller_frame('{"type":"assign","assignment_id":"a-19","endpoints":[]}')
    assert isinstance(frame, AssignEnvelope)
    assert frame.assignment_id == "a-19" and frame.raw["endpoints"] == []


def test_hello_serialises_as_protocol_md_shows() -> None:
    hello = Hello(
        worker_id="w-7f3a",
        name="edge-1",
        version="0.1.0",
        status=WorkerStatus.ONLINE,
        capacity=Capacity(max_endpoints=500, cpus=2, memory_mb=24000),
        labels={"region": "eu-west"},
        media=[],
        resume=Resume(stream="u", last_seq=1842),
    )
    obj = json.loads(dump_frame(hello))
    assert obj == {
        "type": "hello",
        "protocol": 1,
        "worker_id": "w-7f3a",
        "name": "edge-1",
        "version": "0.1.0",
        "status": "ONLINE",
        "capacity": {"max_endpoints": 500, "cpus": 2, "memory_mb": 24000},
        "labels": {"region": "eu-west"},
        "media": [],
        "resume": {"stream": "u", "last_seq": 1842},
        "stream": None,
    }
    back, notes = parse_worker_frame(dump_frame(hello))
    assert back == hello and notes == []


def test_assign_result_and_data_round_trip() -> None:
    res = AssignResult(assignment_id="a", accepted=False, reason=RefusalReason.CAPACITY, detail="x")
    assert json.loads(dump_frame(res))["reason"] == "capacity"
    frame, _ = parse_worker_frame('{"type":"data","seq":3,"items":[{"kind":"phase"}]}')
    assert isinstance(frame, DataFrame) and frame.seq == 3
    frame, _ = parse_worker_frame(dump_frame(Ack(seq=1)))
    assert isinstance(frame, UnknownFrame)  # ack is controller-to-worker


def test_items_parse_by_kind_and_report_bad_fields() -> None:
    item, problems = parse_item(
        {
            "kind": "phase",
            "run_id": "r",
            "endpoint_id": "e",
            "ts": 1,
            "phase": "REGISTERED",
            "contact": "sip:1000@127.0.0.1:5062",
        }
    )
    assert isinstance(item, PhaseItem) and item.phase is Phase.REGISTERED and not problems
    item, problems = parse_item(
        {
            "kind": "metrics",
            "run_id": "r",
            "ts": 1,
            "endpoints": [{"endpoint_id": "e", "phase": "INCALL", "send": {"packets_sent": 5}}],
        }
    )
    assert isinstance(item, MetricsItem) and item.endpoints[0].send is not None
    item, problems = parse_item({"kind": "outcome", "run_id": "r", "endpoint_id": "e"})
    assert item is None and "outcome.ts is required" in problems
    assert parse_item({"kind": "weird"}) == (None, ['unknown item kind "weird" ignored'])
    assert parse_item("x")[0] is None


def test_phase_order_is_forward_only() -> None:
    assert Phase.INITIALIZING.can_go_to(Phase.INCALL)
    assert not Phase.INCALL.can_go_to(Phase.RINGING)
    assert not Phase.CLOSED.can_go_to(Phase.CLOSED)


def test_outcome_severity_and_replacement() -> None:
    assert [Outcome.SUCCESS.severity, Outcome.COMPLETED_WITH_WARNINGS.severity] == [0, 1]
    assert Outcome.CANCELLED.severity == 5 and Outcome.OSERROR.severity == 10
    assert Outcome.SUCCESS.replaced_by(Outcome.CANCELLED) is Outcome.CANCELLED
    assert Outcome.TIMEOUT.replaced_by(Outcome.CANCELLED) is Outcome.TIMEOUT
    assert Outcome.TIMEOUT.replaced_by(Outcome.CALL_FAILED) is Outcome.TIMEOUT


@pytest.mark.parametrize(
    ("code", "result"),
    [
        (200, "answered"),
        (486, "busy"),
        (600, "busy"),
        (403, "rejected"),
        (603, "rejected"),
        (408, "timeout"),
        (None, "timeout"),
        (487, "cancelled"),
        (480, "unavailable"),
        (503, "unavailable"),
        (404, "failed"),
        (500, "failed"),
    ],
)
def test_call_result_for_codes(code: int | None, result: str) -> None:
    assert call_result_for(code) is CallResult(result)


def test_schema_command_prints_every_frame_and_item() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sipswarm.protocol", "--schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    schema = json.loads(out)
    assert set(schema["worker_to_controller"]) == {
        "hello",
        "heartbeat",
        "assign_result",
        "data",
        "error",
    }
    assert set(schema["controller_to_worker"]) == {
        "welcome",
        "ack",
        "media",
        "assign",
        "cancel",
        "drain",
    }
    assert len(schema["items"]) == 8
    reg = schema["controller_to_worker"]["assign"]["$defs"]["Registrar"]["properties"]
    assert "register" in reg
