"""Parsing of network input (never raises), serialisation and JSON Schema export."""

from __future__ import annotations

import json
import sys
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from sipswarm.protocol.enums import MAX_FRAME_BYTES, PROTOCOL_VERSION, SUBPROTOCOL
from sipswarm.protocol.models import (
    Ack,
    Assign,
    AssignEnvelope,
    AssignResult,
    CallItem,
    Cancel,
    ControllerFrame,
    DataFrame,
    Drain,
    ErrorFrame,
    FinishedItem,
    GapItem,
    Heartbeat,
    Hello,
    Item,
    MediaAnnounce,
    MetricsItem,
    OutcomeItem,
    PhaseItem,
    RegistrationItem,
    TraceItem,
    UnknownFrame,
    Welcome,
    WorkerFrame,
)

_CONTROLLER_MODELS: dict[str, type[BaseModel]] = {
    "welcome": Welcome,
    "ack": Ack,
    "media": MediaAnnounce,
    "cancel": Cancel,
    "drain": Drain,
}
_WORKER_MODELS: dict[str, type[BaseModel]] = {
    "hello": Hello,
    "heartbeat": Heartbeat,
    "assign_result": AssignResult,
    "data": DataFrame,
    "error": ErrorFrame,
}


def describe_errors(exc: ValidationError, prefix: str = "", suffix: str = "") -> list[str]:
    """Turn pydantic errors into ``path message, got value`` lines (STYLE.md rule 12)."""
    lines = []
    for err in exc.errors(include_url=False):
        path = _join_path(prefix, err["loc"])
        lines.append(f"{path} {_error_message(err)}{suffix}")
    return lines


def _join_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("function-after", "tagged-union") and not str(part).startswith(
            "function-"
        ):
            out += f".{part}" if out else str(part)
    return out or "(frame)"


def _error_message(err: Any) -> str:
    kind = err["type"]
    if kind == "missing":
        return "is required"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    msg = str(err["msg"]).replace("Input should be", "must be")
    if kind == "string_pattern_mismatch":
        msg = "must be 64 lower-case hex digits (sha256)"
    return f"{msg}, got {_short(err.get('input'))}"


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def load_json_object(raw: str | bytes) -> tuple[dict[str, Any] | None, list[str]]:
    """Decode one text frame to a JSON object; never raises on bad input."""
    if len(raw) > MAX_FRAME_BYTES:
        return None, [f"frame of {len(raw)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit"]
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, [f"frame is not JSON: {exc}"]
    if not isinstance(obj, dict):
        return None, [f"frame must be a JSON object, got {type(obj).__name__}"]
    if not isinstance(obj.get("type"), str):
        return None, ["frame.type is required and must be a string"]
    return obj, []


def unknown_fields(model: type[BaseModel], obj: dict[str, Any]) -> list[str]:
    """Top-level keys of ``obj`` that ``model`` does not know (ignored; log them once)."""
    return sorted(k for k in obj if k not in model.model_fields)


def unknown_paths(model: type[BaseModel], obj: Any, prefix: str) -> list[str]:
    """Keys of ``obj`` unknown to ``model`` at any depth, as index-free paths.

    ``unknown_paths(Assign, raw, "assign")`` gives e.g.
    ``["assign.endpoints.knob"]``: one path per field, however many endpoints
    carry it, so that the caller logs each unknown field once (PROTOCOL.md).
    """
    if not isinstance(obj, dict):
        return []
    known: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        known[name] = info.annotation
        if info.alias:
            known[info.alias] = info.annotation
    found: set[str] = set()
    for key, value in obj.items():
        if key not in known:
            found.add(f"{prefix}.{key}")
            continue
        nested = _nested_model(known[key])
        values = value if isinstance(value, list) else [value]
        for child in values if nested is not None else []:
            found.update(unknown_paths(nested, child, f"{prefix}.{key}"))  # type: ignore[arg-type]
    return sorted(found)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X | None``, ``list[X]`` or ``Annotated[X, ...]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _parse_with(
    models: dict[str, type[BaseModel]], raw: str | bytes | dict[str, Any]
) -> tuple[Any, list[str]]:
    obj, problems = (raw, []) if isinstance(raw, dict) else load_json_object(raw)
    if obj is None:
        return None, problems
    kind = obj.get("type")
    if not isinstance(kind, str):
        return None, ["frame.type is required and must be a string"]
    model = models.get(kind)
    if model is None:
        return UnknownFrame(type=kind), []
    try:
        return model.model_validate(obj), [
            f"{kind}.{k} ignored" for k in unknown_fields(model, obj)
        ]
    except ValidationError as exc:
        return None, describe_errors(exc, prefix=kind)


def parse_controller_frame(
    raw: str | bytes | dict[str, Any],
) -> tuple[ControllerFrame | None, list[str]]:
    """Parse a frame received by a worker. Never raises.

    Returns ``(frame, notes)`` where notes name ignored unknown fields, or
    ``(None, problems)`` when the frame cannot be used (answer it with an
    :class:`ErrorFrame`). ``assign`` comes back as :class:`AssignEnvelope`.
    """
    obj, problems = (raw, []) if isinstance(raw, dict) else load_json_object(raw)
    if obj is None:
        return None, problems
    if obj.get("type") == "assign":
        aid = obj.get("assignment_id")
        if not isinstance(aid, str) or not aid.strip():
            return None, [f"assign.assignment_id must be a non-empty string, got {_short(aid)}"]
        return AssignEnvelope(assignment_id=aid, raw=obj), []
    frame, notes = _parse_with(_CONTROLLER_MODELS, obj)
    return frame, notes


def parse_worker_frame(raw: str | bytes | dict[str, Any]) -> tuple[WorkerFrame | None, list[str]]:
    """Parse a frame received by a controller; same contract as :func:`parse_controller_frame`."""
    frame, notes = _parse_with(_WORKER_MODELS, raw)
    return frame, notes


_ITEM_MODELS: dict[str, type[BaseModel]] = {
    "phase": PhaseItem,
    "registration": RegistrationItem,
    "call": CallItem,
    "metrics": MetricsItem,
    "trace": TraceItem,
    "outcome": OutcomeItem,
    "finished": FinishedItem,
    "gap": GapItem,
}


def parse_item(obj: Any) -> tuple[Item | None, list[str]]:
    """Parse one ``data`` item; an unknown ``kind`` gives ``(None, ["unknown item kind ..."])``."""
    if not isinstance(obj, dict):
        return None, [f"item must be a JSON object, got {type(obj).__name__}"]
    kind = obj.get("kind")
    model = _ITEM_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        return None, [f"unknown item kind {_short(kind)} ignored"]
    try:
        item: Item = model.model_validate(obj)  # type: ignore[assignment]
        return item, []
    except ValidationError as exc:
        return None, describe_errors(exc, prefix=str(kind))


def dump_frame(frame: BaseModel) -> str:
    """Serialise an outbound frame to compact JSON text (enums as their values)."""
    return frame.model_dump_json(by_alias=True)


# --------------------------------------------------------------------------- schema


def json_schema() -> dict[str, Any]:
    """JSON Schema of every frame and item, keyed by direction and name."""
    groups: dict[str, dict[str, type[BaseModel]]] = {
        "worker_to_controller": dict(_WORKER_MODELS),
        "controller_to_worker": {**_CONTROLLER_MODELS, "assign": Assign},
        "items": dict(_ITEM_MODELS),
    }
    return {
        "$comment": f"sipswarm worker protocol {PROTOCOL_VERSION} (subprotocol {SUBPROTOCOL})",
        **{
            group: {name: model.model_json_schema() for name, model in models.items()}
            for group, models in groups.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m sipswarm.protocol --schema``: print the JSON Schema."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["--schema"]:
        print("usage: python -m sipswarm.protocol --schema", file=sys.stderr)
        return 2
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0
