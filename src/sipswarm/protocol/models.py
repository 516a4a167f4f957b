"""Pydantic models of every frame and ``data`` item of the worker protocol (PROTOCOL.md).

Models ignore unknown fields (``extra="ignore"``) so that a newer peer never
breaks an older one, and are frozen. Worker-side parsing goes through
:mod:`sipswarm.protocol.parse`, never ``model_validate`` on raw network input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sipswarm.protocol.enums import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
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
)

# --------------------------------------------------------------------------- field types


def _between(lo: float, hi: float) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if not lo <= v <= hi:
            raise ValueError(f"must be {lo}-{hi}, got {v}")
        return v

    return check


def _non_empty(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


Port = Annotated[int, AfterValidator(_between(1, 65535))]
NonEmpty = Annotated[str, AfterValidator(_non_empty)]
EpochMs = Annotated[int, Field(description="Unix epoch milliseconds (wall clock)")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="lower-case hex sha256")]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- worker -> controller


class Capacity(_Wire):
    max_endpoints: int
    cpus: int
    memory_mb: int


class Resume(_Wire):
    stream: str
    last_seq: int


class Hello(_Wire):
    """First frame after every (re)connect. Then wait for :class:`Welcome`."""

    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    worker_id: str
    name: str
    version: str
    status: WorkerStatus
    capacity: Capacity
    labels: dict[str, str] = Field(default_factory=dict)
    media: list[str] = Field(default_factory=list)
    resume: Resume | None = None
    stream: str | None = None
    """Extension (docs/protocol.md): this process's stream uuid, in every hello."""


class Heartbeat(_Wire):
    """Sent every ``welcome.heartbeat_interval_s``. Fields past ``loop_lag_ms_p99`` are extras."""

    type: Literal["heartbeat"] = "heartbeat"
    ts: EpochMs
    status: WorkerStatus
    active_endpoints: int
    free_endpoints: int
    cpu_percent: float
    memory_percent: float
    loop_lag_ms_p99: float
    detail: str | None = None
    data_unacked_frames: int | None = None
    data_buffer_bytes: int | None = None
    data_dropped_items: int | None = None


class AssignResult(_Wire):
    """Answer to every ``assign``."""

    type: Literal["assign_result"] = "assign_result"
    assignment_id: str
    accepted: bool
    reason: RefusalReason | None = None
    detail: str | None = None


class DataFrame(_Wire):
    """One frame of the ordered, acknowledged data stream; parse items with ``parse_item``."""

    type: Literal["data"] = "data"
    seq: int
    items: list[dict[str, Any]]


class ErrorFrame(_Wire):
    """Answer to a frame the receiver could not accept."""

    type: Literal["error"] = "error"
    in_reply_to: str
    detail: str


# --------------------------------------------------------------------------- data items


class PhaseItem(_Wire):
    kind: Literal["phase"] = "phase"
    run_id: str
    endpoint_id: str
    ts: EpochMs
    phase: Phase
    contact: str | None = None


class RegistrationItem(_Wire):
    kind: Literal["registration"] = "registration"
    run_id: str
    endpoint_id: str
    ts: EpochMs
    status_code: int | None
    register_ms: float | None
    expires_granted_s: int | None


class CallItem(_Wire):
    kind: Literal["call"] = "call"
    run_id: str
    endpoint_id: str
    direction: Direction
    final_code: int | None
    result: CallResult
    invite_ts: EpochMs | None = None
    ringing_ts: EpochMs | None = None
    answer_ts: EpochMs | None = None
    first_rtp_ts: EpochMs | None = None
    bye_ts: EpochMs | None = None
    pdd_ms: float | None = None
    ttr_ms: float | None = None
    setup_ms: float | None = None
    ttfm_ms: float | None = None
    duration_ms: float | None = None


class SendStats(_Wire):
    packets_sent: int | None = None
    bytes_sent: int | None = None
    packets_sent_rate_ps: float | None = None
    bytes_sent_rate_bps: float | None = None
    rtcp_sr_sent: int | None = None


class RecvStats(_Wire):
    packets_received: int | None = None
    bytes_received: int | None = None
    packets_recv_rate_ps: float | None = None
    bytes_recv_rate_bps: float | None = None
    packets_lost: int | None = None
    fraction_lost: float | None = None
    jitter_ms: float | None = None
    rtt_ms: float | None = None
    duplicate_packets: int | None = None
    out_of_order_packets: int | None = None
    sequence_number_gaps: int | None = None
    ssrc_switches: int | None = None
    r_factor: float | None = None
    mos: float | None = None


class RemoteStats(_Wire):
    """Extra (docs/protocol.md): what the far end reports about our stream in RTCP RR."""

    packets_lost: int | None = None
    fraction_lost: float | None = None
    jitter_ms: float | None = None


class EndpointMetrics(_Wire):
    endpoint_id: str
    phase: Phase
    send: SendStats | None = None
    recv: RecvStats | None = None
    remote: RemoteStats | None = None


class GeneratorBlock(_Wire):
    """Extra (docs/protocol.md): was the worker itself keeping up in this interval?"""

    loop_lag_ms_p99: float | None = None
    send_lateness_ms_p99: float | None = None
    skipped_ticks: int = 0
    overloaded: bool = False


class MetricsItem(_Wire):
    kind: Literal["metrics"] = "metrics"
    run_id: str
    ts: EpochMs
    endpoints: list[EndpointMetrics]
    generator: GeneratorBlock | None = None  # extra, see GeneratorBlock


class TraceItem(_Wire):
    kind: Literal["trace"] = "trace"
    run_id: str
    endpoint_id: str
    ts: EpochMs
    dir: Direction
    transport: str
    local: str
    remote: str
    message: str


class OutcomeItem(_Wire):
    kind: Literal["outcome"] = "outcome"
    run_id: str
    endpoint_id: str
    ts: EpochMs
    outcome: Outcome
    final_code: int | None = None
    reason: str | None = None


class FinishedItem(_Wire):
    kind: Literal["finished"] = "finished"
    run_id: str
    assignment_id: str
    ts: EpochMs
    endpoints: int
    outcomes: dict[str, int]


class GapItem(_Wire):
    """Metrics (and, per docs/protocol.md, trace) items dropped from the replay buffer."""

    kind: Literal["gap"] = "gap"
    run_id: str
    from_ts: EpochMs
    to_ts: EpochMs
    dropped_items: int
    dropped_kinds: dict[str, int] = Field(default_factory=dict)


Item = Annotated[
    PhaseItem
    | RegistrationItem
    | CallItem
    | MetricsItem
    | TraceItem
    | OutcomeItem
    | FinishedItem
    | GapItem,
    Field(discriminator="kind"),
]
ITEM_KINDS = ("phase", "registration", "call", "metrics", "trace", "outcome", "finished", "gap")

# --------------------------------------------------------------------------- controller -> worker


class Welcome(_Wire):
    """Answer to ``hello``; the worker then replays everything after ``acked_seq``."""

    type: Literal["welcome"] = "welcome"
    session: str | None = None
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    orphan_timeout_s: float = Field(default=120.0, gt=0)
    acked_seq: int | None = None


class Ack(_Wire):
    type: Literal["ack"] = "ack"
    seq: int


class MediaAnnounce(_Wire):
    """Text half of ``media``: exactly one binary frame with the file follows."""

    type: Literal["media"] = "media"
    sha256: Sha256
    name: str
    size: Annotated[int, Field(ge=0, le=MAX_FRAME_BYTES)]


class Cancel(_Wire):
    type: Literal["cancel"] = "cancel"
    run_id: str
    reason: str = "user"


class Drain(_Wire):
    type: Literal["drain"] = "drain"


class AssignSettings(_Wire):
    trace: TraceMode = TraceMode.ALL
    metrics_interval_ms: Annotated[int, AfterValidator(_between(100, 60000))] = 1000


class Account(_Wire):
    username: NonEmpty
    password: str | None = None
    auth_username: str | None = None
    realm: str | None = None
    display_name: str | None = None


class Registrar(_Wire):
    domain: NonEmpty
    host: str | None = None
    port: Port | None = None
    transport: Transport = Transport.UDP
    outbound_proxy: str | None = None
    register_: bool = Field(default=True, alias="register")
    expires_s: Annotated[int, AfterValidator(_between(10, 86400))] = 300


class CallSettings(_Wire):
    target: str | None = None
    duration_s: Annotated[float, AfterValidator(_between(0.1, 86400))] = 30.0
    ring_timeout_s: Annotated[float, AfterValidator(_between(1, 600))] = 30.0
    answer_delay_ms: Annotated[int, AfterValidator(_between(0, 600000))] = 0
    # worker extension (docs/protocol.md): how long a receiver waits to be called
    idle_timeout_s: Annotated[float, AfterValidator(_between(1, 86400))] | None = None
    # worker extension (docs/protocol.md): a receiver closes after this many calls ended
    expected_calls: Annotated[int, AfterValidator(_between(1, 1_000_000))] | None = None


class MediaSource(_Wire):
    kind: SourceKind
    frequency_hz: Annotated[float, AfterValidator(_between(20, 20000))] | None = None
    sha256: str | None = None


class MediaSettings(_Wire):
    codecs: list[str] = Field(default_factory=lambda: ["PCMU", "PCMA"])
    ptime_ms: Annotated[int, AfterValidator(_between(10, 120))] = 20
    source: MediaSource = Field(default_factory=lambda: MediaSource(kind=SourceKind.TONE))
    srtp: SrtpMode = SrtpMode.OFF
    dscp: Annotated[int, AfterValidator(_between(0, 63))] = 46
    # worker extension (docs/protocol.md): false = signalling-only calls (SDP inactive, no RTP)
    rtp: bool = True


class Action(_Wire):
    at_s: Annotated[float, AfterValidator(_between(0, 86400))] | None = None
    on: ActionTrigger | None = None
    do: ActionKind
    digits: str | None = None
    match_digits: str | None = None
    """Worker extension: with ``on: dtmf_received``, the digits that fire the action."""


class AssignEndpoint(_Wire):
    endpoint_id: NonEmpty
    group: str = ""
    role: Role
    start_offset_ms: Annotated[int, AfterValidator(_between(0, 86400000))] = 0
    account: Account
    registrar: Registrar
    call: CallSettings | None = None
    media: MediaSettings = Field(default_factory=MediaSettings)
    actions: list[Action] = Field(default_factory=list)


class Assign(_Wire):
    """The full ``assign`` frame, as a controller builds it and the JSON Schema shows it."""

    type: Literal["assign"] = "assign"
    assignment_id: NonEmpty
    run_id: NonEmpty
    start_at: EpochMs | None = None
    settings: AssignSettings = Field(default_factory=AssignSettings)
    endpoints: list[AssignEndpoint]


class AssignEnvelope(_Wire):
    """What :func:`parse_controller_frame` returns for ``assign``: id and raw object.

    Next: ``validate_assignment(envelope.raw, held_media)`` from
    :mod:`sipswarm.agent.assignment`, which lists every problem.
    """

    type: Literal["assign"] = "assign"
    assignment_id: NonEmpty
    raw: dict[str, Any]


class UnknownFrame(_Wire):
    """A frame whose ``type`` this version does not know: log once, ignore."""

    type: str


ControllerFrame = Welcome | Ack | MediaAnnounce | AssignEnvelope | Cancel | Drain | UnknownFrame
WorkerFrame = Hello | Heartbeat | AssignResult | DataFrame | ErrorFrame | UnknownFrame
