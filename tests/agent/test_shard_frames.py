"""The shard pipe's frames: what the supervisor and its shards pickle to each other."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import pickle
import re
from pathlib import Path
from typing import Any

import pytest

from sipswarm.agent.assignment import validate_assignment
from sipswarm.agent.config import AgentConfig
from sipswarm.agent.shard_process import encode_frame, read_frame

from .scripted_backend import assign_frame


def decode(frame: bytes) -> Any:
    size = int.from_bytes(frame[:4], "big")
    assert size == len(frame) - 4
    return pickle.loads(frame[4:])


@dataclasses.dataclass(frozen=True, slots=True)
class Plain:
    name: str
    count: int = 0


@dataclasses.dataclass(slots=True)
class Checked:
    value: int
    calls: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.calls.append(self.value)  # re-running it on load would be visible


@dataclasses.dataclass(slots=True)
class Derived:
    value: int
    doubled: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.doubled = 2 * self.value


@dataclasses.dataclass
class Loose:
    value: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Named:
    value: int
    label: str = "x"


class Colour(enum.Enum):
    RED = "red"


def test_start_frame_round_trips_the_assignment(tmp_path: Path) -> None:
    spec, problems = validate_assignment(assign_frame("a-1", "r-1", 3), held_media=())
    assert spec is not None, problems
    config = AgentConfig(
        controller_url="ws://127.0.0.1:1/v1/worker",
        token="t",
        name="frames",
        worker_id="w",
        state_dir=tmp_path,
    )
    assert decode(encode_frame(("start", spec))) == ("start", spec)
    assert decode(encode_frame(("config", config))) == ("config", config)


def test_slotted_dataclasses_load_without_walking_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reason for the pipe's own pickling rule: ``slots=True`` dataclasses used to
    unpickle through ``dataclasses._dataclass_setstate``, a ``fields()`` walk per
    object (six per endpoint of a ``start`` frame)."""
    spec, _ = validate_assignment(assign_frame("a-1", "r-1", 2), held_media=())
    frame = encode_frame(("start", spec))

    def no_fields(obj: Any) -> Any:
        raise AssertionError("fields() walked while loading a frame")

    monkeypatch.setattr(dataclasses, "fields", no_fields)
    assert decode(frame)[1].endpoints[1].endpoint_id == spec.endpoints[1].endpoint_id


def test_other_objects_pickle_as_pickle_does() -> None:
    loose, checked, derived, named = Loose(1), Checked(7), Derived(4), Named(value=2)
    frame = ("x", Plain("a"), loose, checked, derived, Colour.RED, Colour, re.compile("a+"), 1j)
    back = decode(encode_frame((*frame, named)))
    assert back[:3] == ("x", Plain("a"), loose)
    assert back[9] == named  # keyword-only fields cannot be passed positionally
    assert back[3].calls == [7]  # state restored, __post_init__ not run again
    assert (back[4].value, back[4].doubled) == (4, 8)
    assert back[5] is Colour.RED and back[6] is Colour
    assert back[7].pattern == "a+" and back[8] == 1j


def test_item_frames_are_plain_pickle() -> None:
    items = [
        {"kind": "phase", "run_id": "r", "endpoint_id": "e/1", "ts": 1, "phase": "CALLING"},
        {"kind": "outcome", "run_id": "r", "endpoint_id": "e/1", "ts": 2, "reason": None},
    ]
    frame = encode_frame(("items", items))
    assert frame[4:] == pickle.dumps(("items", items), protocol=pickle.HIGHEST_PROTOCOL)


def test_read_frame_reads_what_encode_frame_wrote() -> None:
    async def read_all(data: bytes) -> list[Any]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        out = []
        while (frame := await read_frame(reader)) is not None:
            out.append(frame)
        return out

    frames = [("ready", {"free": 1}), ("items", [{"kind": "phase"}]), ("closed",)]
    data = b"".join(encode_frame(f) for f in frames)
    assert asyncio.run(read_all(data)) == frames
    assert asyncio.run(read_all(data[:-1])) == frames[:2]  # a cut frame is the end
