"""assign validation: every problem listed with its path, its fix and its endpoint."""

from __future__ import annotations

import copy
from typing import Any

from sipswarm.agent.assignment import AssignmentSpec, validate_assignment
from sipswarm.protocol import Role, SourceKind, SrtpMode, TraceMode, Transport

SHA = "a" * 64


def endpoint(i: int, role: str = "caller") -> dict[str, Any]:
    return {
        "endpoint_id": f"r-7/callers/{i}",
        "group": "callers",
        "role": role,
        "start_offset_ms": 10 * i,
        "account": {
            "username": f"10{i:02d}",
            "password": "secret",
            "auth_username": None,
            "realm": None,
            "display_name": None,
        },
        "registrar": {
            "domain": "pbx.example.com",
            "host": "127.0.0.1",
            "port": 5060,
            "transport": "udp",
            "outbound_proxy": None,
            "register": True,
            "expires_s": 300,
        },
        "call": {
            "target": "sip:2000@pbx.example.com",
            "duration_s": 30,
            "ring_timeout_s": 30,
            "answer_delay_ms": 0,
        },
        "media": {
            "codecs": ["PCMU", "pcma"],
            "ptime_ms": 20,
            "source": {"kind": "tone", "frequency_hz": 1000},
            "srtp": "off",
            "dscp": 46,
        },
        "actions": [{"at_s": 10, "do": "dtmf", "digits": "12#"}],
    }


def assign(n: int = 4) -> dict[str, Any]:
    return {
        "type": "assign",
        "assignment_id": "a-19",
        "run_id": "r-7",
        "start_at": 1763900005000,
        "settings": {"trace": "all", "metrics_interval_ms": 1000},
        "endpoints": [endpoint(i) for i in range(n)],
    }


def test_valid_assign_becomes_plain_frozen_dataclasses() -> None:
    spec, problems = validate_assignment(assign(), held_media=set())
    assert problems == []
    assert isinstance(spec, AssignmentSpec)
    assert spec.assignment_id == "a-19" and spec.run_id == "r-7"
    assert spec.start_at_ms == 1763900005000 and spec.trace is TraceMode.ALL
    ep = spec.endpoints[3]
    assert ep.endpoint_id == "r-7/callers/3" and ep.role is Role.CALLER
    assert ep.start_offset_ms == 30 and ep.registrar.port == 5060
    assert ep.registrar.transport is Transport.UDP and ep.registrar.register is True
    assert ep.media.codecs == ("PCMU", "PCMA")  # canonical spelling
    assert ep.media.source.kind is SourceKind.TONE and ep.media.srtp is SrtpMode.OFF
    assert ep.actions[0].digits == "12#"
    assert spec.endpoint_ids == {f"r-7/callers/{i}" for i in range(4)}


def test_receiver_without_call_and_defaults_are_accepted() -> None:
    raw = assign(1)
    ep = raw["endpoints"][0]
    ep["role"] = "receiver"
    for key in ("call", "media", "actions", "start_offset_ms", "group"):
        del ep[key]
    del raw["settings"], raw["start_at"]
    spec, problems = validate_assignment(raw, held_media=set())
    assert problems == [] and spec is not None
    assert spec.endpoints[0].call is None and spec.start_at_ms is None
    assert spec.endpoints[0].media.codecs == ("PCMU", "PCMA")
    assert spec.metrics_interval_ms == 1000


def test_every_problem_is_listed_with_path_fix_and_endpoint() -> None:
    raw = assign(6)
    eps = raw["endpoints"]
    eps[3]["registrar"]["port"] = 70000
    eps[3]["media"]["dscp"] = 99
    eps[0]["call"]["target"] = None
    eps[1]["media"]["codecs"] = ["PCMU", "G729"]
    eps[1]["media"]["ptime_ms"] = 25
    eps[2]["media"]["source"] = {"kind": "file", "sha256": SHA}
    eps[2]["media"]["srtp"] = "zrtp"
    eps[4]["endpoint_id"] = "r-7/callers/5"
    eps[4]["actions"] = [{"at_s": 40, "do": "dtmf", "digits": "x"}, {"do": "hold"}]
    raw["settings"]["trace"] = "verbose"
    spec, problems = validate_assignment(raw, held_media={"b" * 64})
    assert spec is None
    expected = [
        "endpoints[3].registrar.port must be 1-65535, got 70000 (endpoint r-7/callers/3)",
        "endpoints[3].media.dscp must be 0-63, got 99 (endpoint r-7/callers/3)",
        "endpoints[0].call.target is required for a caller",
        "endpoints[1].media.codecs[1] 'G729' is not supported; use one of PCMU",
        "endpoints[1].media.ptime_ms must be a multiple of 10 ms, got 25",
        "endpoints[2].media.srtp must be 'off', 'sdes' or 'dtls', got \"zrtp\"",
        "endpoints[5].endpoint_id 'r-7/callers/5' repeats endpoints[4]",
        "endpoints[4].actions[0].digits must be 1-64 of 0-9 * # A-D for dtmf, got 'x'",
        "endpoints[4].actions[0].at_s 40.0 comes after the call ends (call.duration_s 30.0)",
        "endpoints[4].actions[1].at_s or on: exactly one of them must be set",
        "settings.trace must be 'all', 'failures' or 'none', got \"verbose\"",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in problems), (line, problems)
    assert len(problems) == len(expected)


def test_hold_resume_hangup_and_on_triggers_are_accepted() -> None:
    raw = assign(1)
    raw["endpoints"][0]["actions"] = [
        {"at_s": 1, "do": "hold"},
        {"at_s": 2.5, "do": "resume"},
        {"on": "hold_received", "do": "dtmf", "digits": "9"},
        {"on": "resume_received", "do": "hold"},
        {"on": "dtmf_received", "match_digits": "12#", "do": "hangup"},
        {"on": "dtmf_received", "do": "dtmf", "digits": "0"},
    ]
    spec, problems = validate_assignment(raw, held_media=set())
    assert problems == [] and spec is not None
    acts = spec.endpoints[0].actions
    assert [a.do.value for a in acts] == ["hold", "resume", "dtmf", "hold", "hangup", "dtmf"]
    assert acts[4].match_digits == "12#" and acts[4].on is not None and acts[4].at_s is None


def test_unknown_or_misused_actions_are_refused_listing_what_runs() -> None:
    raw = assign(2)
    raw["endpoints"][0]["actions"] = [
        {"at_s": 1, "do": "transfer"},
        {"on": "answered", "do": "hold"},
    ]
    raw["endpoints"][1]["actions"] = [
        {"on": "dtmf_received", "do": "hangup", "digits": "5"},
        {"at_s": 1, "do": "hangup", "match_digits": "5"},
        {"on": "dtmf_received", "do": "hangup", "match_digits": "x"},
    ]
    spec, problems = validate_assignment(raw, held_media=set())
    assert spec is None
    first, second = " (endpoint r-7/callers/0)", " (endpoint r-7/callers/1)"
    assert problems == [
        "endpoints[0].actions[0].do must be 'hold', 'resume', 'dtmf' or 'hangup', got"
        ' "transfer"' + first,
        "endpoints[0].actions[1].on must be 'dtmf_received', 'hold_received' or"
        " 'resume_received', got \"answered\"" + first,
        "endpoints[1].actions[0].digits is what a dtmf action plays; do 'hangup' plays none"
        " (to fire on received digits use match_digits with on: dtmf_received)" + second,
        "endpoints[1].actions[1].match_digits must be 1-64 of 0-9 * # A-D and needs on:"
        " dtmf_received, got '5'" + second,
        "endpoints[1].actions[2].match_digits must be 1-64 of 0-9 * # A-D and needs on:"
        " dtmf_received, got 'x'" + second,
    ]


def test_file_source_must_be_held() -> None:
    raw = assign(1)
    raw["endpoints"][0]["media"]["source"] = {"kind": "file", "sha256": SHA}
    spec, problems = validate_assignment(raw, held_media=set())
    assert spec is None
    assert problems == [
        f"endpoints[0].media.source.sha256 {SHA} is not a media file this worker holds;"
        " send it with a media frame before the assign (endpoint r-7/callers/0)"
    ]
    spec, problems = validate_assignment(raw, held_media={SHA})
    assert problems == [] and spec is not None and spec.endpoints[0].media.source.sha256 == SHA


def test_header_problems_and_non_object_endpoints() -> None:
    spec, problems = validate_assignment(
        {
            "assignment_id": "",
            "run_id": 5,
            "start_at": "soon",
            "endpoints": [7, copy.deepcopy(endpoint(0))],
        },
        held_media=(),
    )
    assert spec is None
    assert problems == [
        "assignment_id must be a non-empty string, got ''",
        "run_id must be a non-empty string, got 5",
        "start_at must be epoch milliseconds (integer) or null, got 'soon'",
        "endpoints[0] must be an endpoint object, got int",
    ]
    assert validate_assignment({"assignment_id": "a", "run_id": "r"}, ())[1] == [
        "endpoints is required and must be a list of endpoint objects"
    ]
    assert validate_assignment({"assignment_id": "a", "run_id": "r", "endpoints": []}, ())[1] == [
        "endpoints must list at least one endpoint"
    ]


def test_missing_nested_fields_name_their_paths() -> None:
    raw = assign(1)
    del raw["endpoints"][0]["account"]["username"]
    del raw["endpoints"][0]["registrar"]
    raw["endpoints"][0]["role"] = "observer"
    _, problems = validate_assignment(raw, ())
    assert sorted(problems) == sorted(
        [
            "endpoints[0].role must be 'caller' or 'receiver', got \"observer\""
            " (endpoint r-7/callers/0)",
            "endpoints[0].account.username is required (endpoint r-7/callers/0)",
            "endpoints[0].registrar is required (endpoint r-7/callers/0)",
        ]
    )
