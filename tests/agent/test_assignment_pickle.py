"""Every spec class of agent/assignment.py survives the shard frame (pickle) equal to itself.

The supervisor hands each engine shard its assignment as a pickle frame
(agent/shard_process.py); whatever makes that cheap (a by-value reducer, a
``__reduce__``) must carry every field. Each class is found by scanning the module,
and each field gets its own distinct value, so a class or a field added later and
left out of the pickled form fails here.
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
