"""An ``assign`` frame, validated, as plain frozen dataclasses (STYLE.md rule 7).

Theory of operation
-------------------
:func:`validate_assignment` takes the raw JSON object of an ``assign`` and the
set of media files the worker holds, and returns either an
:class:`AssignmentSpec` and no problems, or ``None`` and EVERY problem found
(PROTOCOL.md: "with every problem listed in detail; nothing starts"). To find
them all it validates the header and each endpoint separately with the
pydantic models of :mod:`sipswarm.protocol`, then runs the cross-field checks
(a caller needs ``call.target``, a ``file`` source needs a held sha256,
endpoint ids are unique, codecs are known, ...) on every endpoint that parsed.
Each problem names its path, what was wrong and the endpoint it belongs to::

    endpoints[3].registrar.port must be 1-65535, got 70000 (endpoint r-7/callers/3)

The engine consumes :class:`AssignmentSpec`; it never sees pydantic.

Equal parts are one object: the endpoints of a group usually share their
registrar, call, media and actions settings, and the specs are frozen, so
each distinct value is built once per assignment and shared. The pickled
frame that carries the assignment to an engine shard then holds each once
too (pickle writes an object seen before as a reference), which is what
makes a caller run's per-endpoint frame cost small on both sides.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from sipswarm.protocol import (
    KNOWN_CODECS,
    Action,
    ActionKind,
    ActionTrigger,
    AssignEndpoint,
    AssignSettings,
    MediaSource,
    Role,
    SourceKind,
    SrtpMode,
    TraceMode,
    Transport,
    describe_errors,
)

MAX_ENDPOINTS_PER_ASSIGN = 100_000
DEFAULT_TONE_HZ = 1000.0
_DTMF_DIGITS = re.compile(r"^[0-9*#A-Da-d]{1,64}$")
_URI = re.compile(r"^(sips?|tel):\S+$")
_HOSTPORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")
_CODECS_BY_LOWER = {c.lower(): c for c in KNOWN_CODECS}


@dataclass(frozen=True, slots=True)
class AccountSpec:
    username: str
    password: str | None
    auth_username: str | None
    realm: str | None
    display_name: str | None


@dataclass(frozen=True, slots=True)
class RegistrarSpec:
    domain: str
    host: str | None
    port: int | None
    transport: Transport
    outbound_proxy: str | None
    register: bool
    expires_s: int


@dataclass(frozen=True, slots=True)
class CallSpec:
    """``target`` is None for a receiver; durations in seconds, delays in ms as on the wire."""

    target: str | None
    duration_s: float
    ring_timeout_s: float
    answer_delay_ms: int
    idle_timeout_s: float | None = None
    """Worker extension: a receiver not called within it ends TIMEOUT (docs/protocol.md)."""
    expected_calls: int | None = None
    """Worker extension: a receiver closes once this many calls ended (docs/protocol.md)."""


@dataclass(frozen=True, slots=True)
class SourceSpec:
    kind: SourceKind
    frequency_hz: float | None
    sha256: str | None


@dataclass(frozen=True, slots=True)
class MediaSpec:
    codecs: tuple[str, ...]
    """Canonical spelling (``KNOWN_CODECS``), in the controller's order of preference."""
    ptime_ms: int
    source: SourceSpec
    srtp: SrtpMode
    dscp: int
    rtp: bool = True
    """False: signalling-only calls (docs/protocol.md, ``media.rtp``)."""


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """Either ``at_s`` (seconds after answer) or ``on`` (an event) is set, never both."""

    do: ActionKind
    at_s: float | None
    on: ActionTrigger | None
    digits: str | None
    match_digits: str | None = None
    """``on: dtmf_received`` only: fire when the digits received end with these (upper case)."""


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    endpoint_id: str
    group: str
    role: Role
    start_offset_ms: int
    account: AccountSpec
    registrar: RegistrarSpec
    call: CallSpec | None
    media: MediaSpec
    actions: tuple[ActionSpec, ...]


@dataclass(frozen=True, slots=True)
class AssignmentSpec:
    """A validated ``assign``: what the backend's ``start_assignment`` receives."""

    assignment_id: str
    run_id: str
    start_at_ms: int | None
    """Epoch ms; None means start now. Endpoint i starts at start_at + its start_offset_ms."""
    trace: TraceMode
    metrics_interval_ms: int
    endpoints: tuple[EndpointSpec, ...]

    @property
    def endpoint_ids(self) -> frozenset[str]:
        return frozenset(e.endpoint_id for e in self.endpoints)


# --------------------------------------------------------------------------- validation


def validate_assignment(
    raw: Mapping[str, Any], held_media: Collection[str]
) -> tuple[AssignmentSpec | None, list[str]]:
    """Validate the raw ``assign`` object; return ``(spec, [])`` or ``(None, every problem)``.

    ``held_media`` is the set of sha256 the worker's media store holds. Next:
    answer ``assign_result`` (``reason: invalid`` and the problems joined in
    ``detail`` when None), else check capacity and call the backend.
    """
    problems: list[str] = []
    header = _validate_header(raw, problems)
    endpoints_raw = raw.get("endpoints")
    if not isinstance(endpoints_raw, list):
        problems.append("endpoints is required and must be a list of endpoint objects")
        endpoints_raw = []
    elif not endpoints_raw:
        problems.append("endpoints must list at least one endpoint")
    elif len(endpoints_raw) > MAX_ENDPOINTS_PER_ASSIGN:
        problems.append(
            f"endpoints lists {len(endpoints_raw)}, at most {MAX_ENDPOINTS_PER_ASSIGN} per assign"
            "; split the run into several assignments"
        )
        endpoints_raw = []
    specs: list[EndpointSpec] = []
    seen: dict[str, int] = {}
    shared: dict[tuple[Any, ...], Any] = {}  # equal sub-specs: one object (module doc)
    for index, ep_raw in enumerate(endpoints_raw):
        eid = ep_raw.get("endpoint_id") if isinstance(ep_raw, dict) else None
        first = seen.setdefault(eid, index) if isinstance(eid, str) else index
        if first != index:
            problems.append(
                f"endpoints[{index}].endpoint_id {eid!r} repeats endpoints[{first}]"
                "; endpoint ids must be unique"
            )
        spec = _validate_endpoint(index, ep_raw, held_media, problems, shared)
        if spec is not None:
            specs.append(spec)
    if problems or header is None:
        return None, problems
    assignment_id, run_id, start_at, settings = header
    return (
        AssignmentSpec(
            assignment_id=assignment_id,
            run_id=run_id,
            start_at_ms=start_at,
            trace=settings.trace,
            metrics_interval_ms=settings.metrics_interval_ms,
            endpoints=tuple(specs),
        ),
        [],
    )


def _validate_header(
    raw: Mapping[str, Any], problems: list[str]
) -> tuple[str, str, int | None, AssignSettings] | None:
    ok = True
    ids = []
    for name in ("assignment_id", "run_id"):
        value = raw.get(name)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{name} must be a non-empty string, got {value!r}")
            ok = False
        ids.append(value if isinstance(value, str) else "")
    start_at = raw.get("start_at")
    if start_at is not None and (
        not isinstance(start_at, int) or isinstance(start_at, bool) or start_at < 0
    ):
        problems.append(f"start_at must be epoch milliseconds (integer) or null, got {start_at!r}")
        ok = False
    try:
        settings = AssignSettings.model_validate(raw.get("settings") or {})
    except ValidationError as exc:
        problems.extend(describe_errors(exc, prefix="settings"))
        return None
    return (ids[0], ids[1], start_at, settings) if ok else None


def _validate_endpoint(
    index: int,
    raw: Any,
    held_media: Collection[str],
    problems: list[str],
    shared: dict[tuple[Any, ...], Any],
) -> EndpointSpec | None:
    path = f"endpoints[{index}]"
    if not isinstance(raw, dict):
        problems.append(f"{path} must be an endpoint object, got {type(raw).__name__}")
        return None
    eid = raw.get("endpoint_id")
    where = f" (endpoint {eid})" if isinstance(eid, str) and eid else f" (endpoint #{index})"
    try:
        ep = AssignEndpoint.model_validate(raw)
    except ValidationError as exc:
        problems.extend(describe_errors(exc, prefix=path, suffix=where))
        return None
    found: list[str] = []
    for check in _ENDPOINT_CHECKS:
        found.extend(check(ep, held_media))
    problems.extend(f"{path}.{p}{where}" for p in found)
    return None if found else _to_spec(ep, shared)


# Cross-field checks: each returns problems as "field.path what and fix" (no prefix).
EndpointCheck = Callable[[AssignEndpoint, Collection[str]], list[str]]


def _check_call(ep: AssignEndpoint, held: Collection[str]) -> list[str]:
    if ep.role is not Role.CALLER:
        return []
    if ep.call is None or not ep.call.target:
        return ["call.target is required for a caller: the SIP URI to call (sip:2000@pbx)"]
    if not _URI.match(ep.call.target):
        return [f"call.target must be a sip:, sips: or tel: URI, got {ep.call.target!r}"]
    return []


def _check_codecs(ep: AssignEndpoint, held: Collection[str]) -> list[str]:
    codecs = ep.media.codecs
    out = [
        f"media.codecs[{i}] {c!r} is not supported; use one of {', '.join(KNOWN_CODECS)}"
        for i, c in enumerate(codecs)
        if c.lower() not in _CODECS_BY_LOWER
    ]
    audio = [c for c in codecs if c.lower() != "telephone-event"]
    if not audio:
        out.append("media.codecs must list at least one audio codec (PCMU, PCMA, G722, opus)")
    lowered = [c.lower() for c in codecs]
    if len(set(lowered)) != len(lowered):
        out.append(f"media.codecs lists a codec twice: {codecs}")
    return out


def _check_ptime(ep: AssignEndpoint, held: Collection[str]) -> list[str]:
    # RFC 3551 4.5: frame-based codecs use multiples of 10 ms (G.729 frames, Opus <= 60 ms)
    ptime = ep.media.ptime_ms
    if ptime % 10:
        return [f"media.ptime_ms must be a multiple of 10 ms, got {ptime}"]
    if ptime > 60 and any(c.lower() == "opus" for c in ep.media.codecs):
        return [f"media.ptime_ms must be at most 60 for opus (RFC 7587), got {ptime}"]
    return []


def _check_source(ep: AssignEndpoint, held: Collection[str]) -> list[str]:
    src = ep.media.source
    if src.kind is SourceKind.FILE:
        if not src.sha256:
            return ["media.source.sha256 is required for a file source; send the file with media"]
        if src.sha256 not in held:
            return [
                f"media.source.sha256 {src.sha256} is not a media file this worker holds;"
                " send it with a media frame before the assign"
            ]
    return []


def _check_registrar(ep: AssignEndpoint, held: Collection[str]) -> list[str]:
    proxy = ep.registrar.outbound_proxy
    if proxy is not None and not (_URI.match(proxy) or _HOSTPORT.match(proxy)):
        return [f"registrar.outbound_proxy must be a sip: URI or host[:port], got {proxy!r}"]
    return []


def _check_actions(ep: AssignEndpoint, held: Collection[str]) -> list[str]:
    out: list[str] = []
    for i, action in enumerate(ep.actions):
        out.extend(f"actions[{i}].{p}" for p in _action_problems(action, ep))
    return out


def _action_problems(action: Action, ep: AssignEndpoint) -> list[str]:
    out = []
    if (action.at_s is None) == (action.on is None):
        out.append("at_s or on: exactly one of them must be set")
    if action.do is ActionKind.DTMF and not (action.digits and _DTMF_DIGITS.match(action.digits)):
        out.append(f"digits must be 1-64 of 0-9 * # A-D for dtmf, got {action.digits!r}")
    if action.do is not ActionKind.DTMF and action.digits is not None:
        out.append(
            f"digits is what a dtmf action plays; do {action.do.value!r} plays none"
            " (to fire on received digits use match_digits with on: dtmf_received)"
        )
    if action.match_digits is not None and (
        action.on is not ActionTrigger.DTMF_RECEIVED or not _DTMF_DIGITS.match(action.match_digits)
    ):
        out.append(
            "match_digits must be 1-64 of 0-9 * # A-D and needs on: dtmf_received"
            f", got {action.match_digits!r}"
        )
    if action.at_s is not None and ep.call is not None and action.at_s >= ep.call.duration_s:
        out.append(
            f"at_s {action.at_s} comes after the call ends (call.duration_s {ep.call.duration_s})"
        )
    return out


def _check_supported(ep: AssignEndpoint, held: Collection[str]) -> list[str]:
    # What this worker's engine does not run yet: refused, never silently downgraded.
    out = []
    if ep.media.srtp is SrtpMode.DTLS:  # needs a DTLS handshake (and usually ICE)
        out.append("media.srtp 'dtls' is not supported by this worker; use 'off' or 'sdes'")
    # every ActionKind and ActionTrigger runs (engine/actions.py); other values are
    # refused by the wire model, which lists the accepted ones
    if not ep.media.rtp:  # signalling-only: no media to hold, resume or carry DTMF
        for i, action in enumerate(ep.actions):
            needs = action.do in _MEDIA_ACTIONS or action.on is ActionTrigger.DTMF_RECEIVED
            if needs:
                what = action.do.value if action.do in _MEDIA_ACTIONS else "on: dtmf_received"
                out.append(
                    f"actions[{i}] {what} needs media; with media.rtp false only hangup runs"
                    " (set media.rtp true or drop the action)"
                )
    return out


#: Actions that act on the call's RTP (refused with ``media.rtp: false``).
_MEDIA_ACTIONS = frozenset({ActionKind.HOLD, ActionKind.RESUME, ActionKind.DTMF})


_ENDPOINT_CHECKS: tuple[EndpointCheck, ...] = (
    _check_call,
    _check_codecs,
    _check_ptime,
    _check_source,
    _check_registrar,
    _check_actions,
    _check_supported,
)


def _frequency(src: MediaSource) -> float | None:
    if src.kind is SourceKind.TONE and src.frequency_hz is None:
        return DEFAULT_TONE_HZ
    return src.frequency_hz


def _upper(digits: str | None) -> str | None:
    return None if digits is None else digits.upper()


def _to_spec(ep: AssignEndpoint, shared: dict[tuple[Any, ...], Any]) -> EndpointSpec:
    """The frozen spec of a validated endpoint; sub-specs equal to one seen before in
    ``shared`` are that object (module doc)."""
    a, r, m, call = ep.account, ep.registrar, ep.media, ep.call
    registrar = (RegistrarSpec, r.domain, r.host, r.port, r.transport, r.outbound_proxy,
                 r.register_, r.expires_s)  # fmt: skip
    call_spec = None
    if call is not None:
        call_spec = _shared(shared, (CallSpec, call.target, call.duration_s, call.ring_timeout_s,
                                     call.answer_delay_ms, call.idle_timeout_s,
                                     call.expected_calls))  # fmt: skip
    source = (SourceSpec, m.source.kind, _frequency(m.source), m.source.sha256)
    codecs = tuple(_CODECS_BY_LOWER[c.lower()] for c in m.codecs)
    media = (MediaSpec, codecs, m.ptime_ms, _shared(shared, source), m.srtp, m.dscp, m.rtp)
    actions = tuple(
        _shared(shared, (ActionSpec, x.do, x.at_s, x.on, x.digits, _upper(x.match_digits)))
        for x in ep.actions
    )
    return EndpointSpec(
        ep.endpoint_id,
        ep.group,
        ep.role,
        ep.start_offset_ms,
        AccountSpec(a.username, a.password, a.auth_username, a.realm, a.display_name),
        _shared(shared, registrar),
        call_spec,
        _shared(shared, media),
        _shared(shared, ("actions", *actions)) if actions else (),
    )


def _shared(shared: dict[tuple[Any, ...], Any], values: tuple[Any, ...]) -> Any:
    """The object for ``values``: ``(cls, *fields)`` builds ``cls(*fields)`` (a tuple of
    actions for ``("actions", *actions)``) the first time, and returns that one after."""
    found = shared.get(values)
    if found is None:
        kind, *fields = values
        found = shared[values] = tuple(fields) if kind == "actions" else kind(*fields)
    return found
