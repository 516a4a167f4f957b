"""Wire models of the worker protocol, version 1 (PROTOCOL.md; docs/protocol.md).

Theory of operation
-------------------
Every frame on the control WebSocket is one JSON object with a string ``type``.
This module holds one pydantic v2 model per frame type and per ``data`` item
``kind``, in both directions, plus the enums they use. Models ignore unknown
fields (``extra="ignore"``) so that a newer peer never breaks an older one.

Network input is parsed with :func:`parse_controller_frame` (worker side) or
:func:`parse_worker_frame` (controller side) and :func:`parse_item`; they
never raise: they return ``(model, notes)`` or ``(None, problems)``. A frame
of an unknown ``type`` parses to :class:`UnknownFrame` so that the caller can
log it once and carry on.

An ``assign`` is the one frame whose validation must list *every* problem
with its path and fix; the parser therefore returns it as
:class:`AssignEnvelope` (its id plus the raw object) and
:func:`sipswarm.agent.assignment.validate_assignment` turns it into plain
frozen dataclasses (STYLE.md rule 7). The nested models below
(:class:`Assign`, :class:`AssignEndpoint`, ...) are what a controller builds
and what the JSON Schema documents.

Outbound frames are built with the models and serialised with
:func:`dump_frame`. ``python -m sipswarm.protocol --schema`` prints the JSON
Schema of everything (see :func:`json_schema`).

Modules: :mod:`.enums` (constants, enums), :mod:`.models` (frames, items),
:mod:`.parse` (never-raising parsers, serialisation, schema).
"""

from __future__ import annotations

from sipswarm.protocol.enums import (
    KNOWN_CODECS,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    ActionKind,
    ActionTrigger,
    CallResult,
    Direction,
    Outcome,
    Phase,
    RefusalReason,
    Role,
    SourceKind,
    SrtpMode,
    TraceMode,
    Transport,
    WorkerStatus,
    call_result_for,
)
from sipswarm.protocol.models import (
    ITEM_KINDS,
    Account,
    Ack,
    Action,
    Assign,
    AssignEndpoint,
    AssignEnvelope,
    AssignResult,
    AssignSettings,
    CallItem,
    CallSettings,
    Cancel,
    Capacity,
    ControllerFrame,
    DataFrame,
    Drain,
    EndpointMetrics,
    EpochMs,
    ErrorFrame,
    FinishedItem,
    GapItem,
    Heartbeat,
    Hello,
    Item,
    MediaAnnounce,
    MediaSettings,
    MediaSource,
    MetricsItem,
    NonEmpty,
    OutcomeItem,
    PhaseItem,
    Port,
    RecvStats,
    Registrar,
    RegistrationItem,
    RemoteStats,
    Resume,
    SendStats,
    Sha256,
    TraceItem,
    UnknownFrame,
    Welcome,
    WorkerFrame,
)
from sipswarm.protocol.parse import (
    describe_errors,
    dump_frame,
    json_schema,
    load_json_object,
    main,
    parse_controller_frame,
    parse_item,
    parse_worker_frame,
    unknown_fields,
    unknown_paths,
)

__all__ = [
    "ITEM_KINDS",
    "KNOWN_CODECS",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "SUBPROTOCOL",
    "Account",
    "Ack",
    "Action",
    "ActionKind",
    "ActionTrigger",
    "Assign",
    "AssignEndpoint",
    "AssignEnvelope",
    "AssignResult",
    "AssignSettings",
    "CallItem",
    "CallResult",
    "CallSettings",
    "Cancel",
    "Capacity",
    "ControllerFrame",
    "DataFrame",
    "Direction",
    "Drain",
    "EndpointMetrics",
    "EpochMs",
    "ErrorFrame",
    "FinishedItem",
    "GapItem",
    "Heartbeat",
    "Hello",
    "Item",
    "MediaAnnounce",
    "MediaSettings",
    "MediaSource",
    "MetricsItem",
    "NonEmpty",
    "Outcome",
    "OutcomeItem",
    "Phase",
    "PhaseItem",
    "Port",
    "RecvStats",
    "RefusalReason",
    "Registrar",
    "RegistrationItem",
    "RemoteStats",
    "Resume",
    "Role",
    "SendStats",
    "Sha256",
    "SourceKind",
    "SrtpMode",
    "TraceItem",
    "TraceMode",
    "Transport",
    "UnknownFrame",
    "Welcome",
    "WorkerFrame",
    "WorkerStatus",
    "call_result_for",
    "describe_errors",
    "dump_frame",
    "json_schema",
    "load_json_object",
    "main",
    "parse_controller_frame",
    "parse_item",
    "parse_worker_frame",
    "unknown_fields",
    "unknown_paths",
]
