"""Every spec class of agent/assignment.py survives the shard frame (pickle) equal to itself.

The supervisor hands each engine shard its assignment as a pickle frame
(agent/shard_process.py); whatever makes that cheap (a by-value reducer, a
``__reduce__``) must carry every field. Each class is found by scanning the module,
and each field gets its own distinct value, so a class or a field added later and
left out of the pickled form fails here. Equal settings of several endpoints are
one object, before and after the frame (agent/assignment.py module doc).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import pickle
from typing import Any

import pytest

from sipswarm.agent import assignment as assignment_module
from sipswarm.agent.assignment import validate_assignment
from sipswarm.agent.shard_process import encode_frame, read_frame

SPEC_CLASSES = sorted(
    (
        cls
        for _, cls in inspect.getmembers(assignment_module, inspect.isclass)
        if dataclasses.is_dataclass(cls) and cls.__module__ == assignment_module.__name__
    ),
    key=lambda cls: cls.__name__,
)


def _through_frame(value: Any) -> Any:
    async def read() -> Any:
        reader = asyncio.StreamReader()
        reader.feed_data(encode_frame(("start", value)))
        reader.feed_eof()
        frame = await read_frame(reader)
        assert frame is not None
        return frame[1]

    return asyncio.run(read())


def test_every_spec_class_is_found() -> None:
    names = {cls.__name__ for cls in SPEC_CLASSES}
    assert {"AssignmentSpec", "EndpointSpec", "MediaSpec", "CallSpec"} <= names, names


@pytest.mark.parametrize("cls", SPEC_CLASSES, ids=lambda cls: cls.__name__)
def test_a_spec_with_every_field_set_round_trips(cls: type) -> None:
    fields = dataclasses.fields(cls)
    spec = cls(*(f"{cls.__name__}.{f.name}" for f in fields))  # a distinct value per field
    for copy in (pickle.loads(pickle.dumps(spec)), _through_frame(spec)):
        assert type(copy) is cls and copy == spec
        for f in fields:
            assert getattr(copy, f.name) == f"{cls.__name__}.{f.name}", f.name


def test_a_validated_assignment_round_trips_through_a_frame() -> None:
    raw = {
        "assignment_id": "a-1",
        "run_id": "r-1",
        "start_at": 1_700_000_000_000,
        "settings": {"trace": "failures", "metrics_interval_ms": 500},
        "endpoints": [
            {
                "endpoint_id": "r-1/callers/0",
                "group": "callers",
                "role": "caller",
                "start_offset_ms": 250,
                "account": {"username": "1000", "password": "pw", "display_name": "One"},
                "registrar": {"domain": "pbx.test", "host": "127.0.0.1", "port": 5070,
                              "transport": "tcp", "register": True, "expires_s": 120},
                "call": {"target": "sip:2000@pbx.test", "duration_s": 2.5,
                         "ring_timeout_s": 9, "answer_delay_ms": 0},
                "media": {"codecs": ["pcma", "PCMU"], "ptime_ms": 30,
                          "source": {"kind": "tone", "frequency_hz": 440}, "srtp": "sdes",
                          "dscp": 46},
                "actions": [{"at_s": 1.0, "do": "dtmf", "digits": "12#"}],
            }
        ],
    }  # fmt: skip
    spec, problems = validate_assignment(raw, ())
    assert spec is not None, problems
    copy = _through_frame(spec)
    assert copy == spec and copy.endpoints[0].media.codecs == ("PCMA", "PCMU")
    assert copy.endpoints[0].role is spec.endpoints[0].role  # enums stay the members


def _endpoint(i: int, target: str = "sip:2000@pbx.test", ptime: int = 20) -> dict[str, Any]:
    return {
        "endpoint_id": f"r-1/callers/{i}",
        "group": "callers",
        "role": "caller",
        "start_offset_ms": 10 * i,
        "account": {"username": f"{1000 + i}", "password": "pw"},
        "registrar": {"domain": "pbx.test", "host": "127.0.0.1", "port": 5070},
        "call": {"target": target, "duration_s": 2.5},
        "media": {"codecs": ["PCMU"], "ptime_ms": ptime, "source": {"kind": "tone"}},
        "actions": [{"at_s": 1.0, "do": "hangup"}],
    }


def test_equal_settings_are_one_object_and_stay_one_through_a_frame() -> None:
    raw = {
        "assignment_id": "a-2",
        "run_id": "r-1",
        "endpoints": [_endpoint(0), _endpoint(1), _endpoint(2, "sip:3000@pbx.test", 40)],
    }
    spec, problems = validate_assignment(raw, ())
    assert spec is not None, problems
    for copy in (spec, _through_frame(spec)):
        a, b, c = copy.endpoints
        assert a.registrar is b.registrar is c.registrar
        assert a.call is b.call and a.media is b.media and a.actions is b.actions
        assert a.media.source is c.media.source and a.actions is c.actions
        assert a.account is not b.account and a.account.username == "1000"
        assert c.call is not None and c.call.target == "sip:3000@pbx.test"
        assert a.call is not None and a.call.target == "sip:2000@pbx.test"
        assert (a.media.ptime_ms, c.media.ptime_ms) == (20, 40)
        assert a.media.source.frequency_hz == 1000.0 and a.actions[0].at_s == 1.0
    one, _ = validate_assignment({**raw, "endpoints": [_endpoint(2, "sip:3000@pbx.test", 40)]}, ())
    assert one is not None and one.endpoints[0] == spec.endpoints[2]  # equal to one built alone
