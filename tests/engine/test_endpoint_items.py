"""The items of one call, pinned as JSON text (key order included).

The caller's and the receiver's items of a signalling-only call between two endpoints of
one engine are compared, serialised, with a literal: every key, its order and the type of
every value. Only what changes from run to run (epoch ms, durations, the contact's
port and user) is replaced by its type before the comparison.
With ``trace: all`` every trace item has the PROTOCOL.md keys in their order.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from .engine_harness import Collector, assignment, check_items, endpoint, make_engine

pytestmark = pytest.mark.timeout(30)

_TIMES = {"ts", "invite_ts", "ringing_ts", "answer_ts", "bye_ts"}
_DURATIONS = {"pdd_ms", "ttr_ms", "setup_ms", "duration_ms"}


def _shape(item: dict[str, Any]) -> str:
    """``item`` as JSON with its run-dependent values replaced by their type."""
    out: dict[str, Any] = {}
    for key, value in item.items():
        if key in _TIMES:
            assert type(value) is int, (key, value)
            value = "<int>"
        elif key in _DURATIONS:
            assert type(value) is float, (key, value)
            value = "<float>"
        elif key == "contact":
            value = re.sub(r"sip:[^@]+@127\.0\.0\.1:\d+", "sip:<user>@127.0.0.1:<port>", value)
        out[key] = value
    return json.dumps(out)


def _phase(eid: str, phase: str) -> str:
    return (
        f'{{"kind": "phase", "run_id": "pin", "endpoint_id": "{eid}", "ts": "<int>", '
        f'"phase": "{phase}"}}'
    )


def _call(eid: str, direction: str) -> str:
    return (
        f'{{"kind": "call", "run_id": "pin", "endpoint_id": "{eid}", "direction": '
        f'"{direction}", "final_code": 200, "result": "answered", "invite_ts": "<int>", '
        '"ringing_ts": "<int>", "answer_ts": "<int>", "first_rtp_ts": null, "bye_ts": "<int>", '
        '"pdd_ms": "<float>", "ttr_ms": "<float>", "setup_ms": "<float>", "ttfm_ms": null, '
        '"duration_ms": "<float>"}'
    )


def _outcome(eid: str) -> str:
    return (
        f'{{"kind": "outcome", "run_id": "pin", "endpoint_id": "{eid}", "ts": "<int>", '
        '"outcome": "SUCCESS", "final_code": 200, "reason": "completed"}'
    )


def _registered(eid: str) -> str:
    return (
        f'{{"kind": "phase", "run_id": "pin", "endpoint_id": "{eid}", "ts": "<int>", '
        '"phase": "REGISTERED", "contact": "sip:<user>@127.0.0.1:<port>"}'
    )


def _expected(eid: str, direction: str) -> list[str]:
    """The caller hangs up (DISCONNECTING, then the call item at the 200 to its BYE);
    the receiver gets the BYE (the call item, then DISCONNECTING)."""
    ending = [_phase(eid, "DISCONNECTING"), _call(eid, direction)]
    return [
        _phase(eid, "INITIALIZING"),
        _registered(eid),
        *(_phase(eid, p) for p in ("CALLING", "RINGING", "NEGOTIATING", "INCALL")),
        *(ending if direction == "out" else ending[::-1]),
        _phase(eid, "CLOSED"),
        _outcome(eid),
    ]


def _signalling_only(ep: dict[str, Any]) -> dict[str, Any]:
    ep["media"]["rtp"] = False
    return ep


_TRACE_KEYS = ["kind", "run_id", "endpoint_id", "ts", "dir", "transport", "local", "remote",
               "message"]  # fmt: skip


@pytest.mark.parametrize("trace", ["none", "all"])
def test_a_calls_items_are_pinned_as_json(trace: str) -> None:
    async def main() -> Collector:
        items = Collector()
        engine = make_engine(items)
        try:
            rx = endpoint("pin/rx", "receiver", user="bob", duration_s=5, expected_calls=1)
            await engine.start_assignment(assignment("pin", _signalling_only(rx), trace=trace))
            contact = await items.contact("pin/rx")
            tx = endpoint("pin/tx", "caller", target=contact, duration_s=0.2)
            await engine.start_assignment(assignment("pin", _signalling_only(tx), trace=trace))
            await asyncio.wait_for(engine.wait_idle(), 15)
        finally:
            await engine.close()
        return items

    items = asyncio.run(main())
    check_items(items.items)
    for eid, direction in (("pin/tx", "out"), ("pin/rx", "in")):
        mine = [i for i in items.items if i.get("endpoint_id") == eid]
        got = [_shape(i) for i in mine if i["kind"] != "trace"]
        traces = [i for i in mine if i["kind"] == "trace"]
        assert len(traces) == (7 if trace == "all" else 0), eid  # INVITE 100 180 200 ACK BYE 200
        assert all(list(t) == _TRACE_KEYS and type(t["ts"]) is int for t in traces)
        assert got == _expected(eid, direction), eid
    outcomes = {i["assignment_id"]: i["outcomes"] for i in items.of("finished")}
    assert list(outcomes.values()) == [{"SUCCESS": 1}, {"SUCCESS": 1}]
