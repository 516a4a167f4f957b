"""Constants and enums of the worker protocol, version 1 (PROTOCOL.md)."""

from __future__ import annotations

import enum

PROTOCOL_VERSION = 1
SUBPROTOCOL = "sipswarm.v1"
MAX_FRAME_BYTES = 16 * 1024 * 1024
"""PROTOCOL.md: frames are at most 16 MiB (text and binary)."""


KNOWN_CODECS = ("PCMU", "PCMA", "G722", "opus", "telephone-event")
"""Codec names an assignment may list (matched case-insensitively, as in SDP)."""


# --------------------------------------------------------------------------- enums


class WorkerStatus(enum.StrEnum):
    """A worker's status as sent in ``hello``/``heartbeat`` (OFFLINE is controller-side only)."""

    ONLINE = "ONLINE"
    DRAINING = "DRAINING"
    ERROR = "ERROR"
    OFFLINE = "OFFLINE"


class Phase(enum.StrEnum):
    """Endpoint phases, forward only: a phase may be skipped, never revisited."""

    INITIALIZING = "INITIALIZING"
    REGISTERED = "REGISTERED"
    CALLING = "CALLING"
    RINGING = "RINGING"
    NEGOTIATING = "NEGOTIATING"
    INCALL = "INCALL"
    DISCONNECTING = "DISCONNECTING"
    CLOSED = "CLOSED"

    @property
    def order(self) -> int:
        """Position in the forward-only order (INITIALIZING = 0 ... CLOSED = 7)."""
        return _PHASE_ORDER[self]

    def can_go_to(self, other: Phase) -> bool:
        """True when ``other`` is later than this phase (skips allowed, revisits not)."""
        return other.order > self.order


_PHASE_ORDER = {p: i for i, p in enumerate(Phase)}


class Outcome(enum.StrEnum):
    """An endpoint's final outcome; see :attr:`severity`."""

    SUCCESS = "SUCCESS"
    COMPLETED_WITH_WARNINGS = "COMPLETED_WITH_WARNINGS"
    CANCELLED = "CANCELLED"
    REGISTRATION_FAILED = "REGISTRATION_FAILED"
    CALL_FAILED = "CALL_FAILED"
    NEGOTIATION_FAILED = "NEGOTIATION_FAILED"
    TIMEOUT = "TIMEOUT"
    OSERROR = "OSERROR"
    TEARDOWN_ERROR = "TEARDOWN_ERROR"

    @property
    def severity(self) -> int:
        """PROTOCOL.md: SUCCESS 0, COMPLETED_WITH_WARNINGS 1, CANCELLED 5, every failure 10."""
        return _OUTCOME_SEVERITY.get(self, 10)

    def replaced_by(self, other: Outcome) -> Outcome:
        """Return the outcome to keep: ``other`` only if it is strictly more severe."""
        return other if other.severity > self.severity else self


_OUTCOME_SEVERITY = {
    Outcome.SUCCESS: 0,
    Outcome.COMPLETED_WITH_WARNINGS: 1,
    Outcome.CANCELLED: 5,
}


class CallResult(enum.StrEnum):
    """Result of one call, derived from its final response code by :func:`call_result_for`."""

    ANSWERED = "answered"
    BUSY = "busy"
    REJECTED = "rejected"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    UNAVAILABLE = "unavailable"
    FAILED = "failed"


_RESULT_BY_CODE = {
    486: CallResult.BUSY,
    600: CallResult.BUSY,
    403: CallResult.REJECTED,
    603: CallResult.REJECTED,
    408: CallResult.TIMEOUT,
    487: CallResult.CANCELLED,
    480: CallResult.UNAVAILABLE,
    503: CallResult.UNAVAILABLE,
}


def call_result_for(final_code: int | None) -> CallResult:
    """Map a final SIP status code (None = no final response) to a :class:`CallResult`."""
    if final_code is None:
        return CallResult.TIMEOUT
    if 200 <= final_code < 300:
        return CallResult.ANSWERED
    return _RESULT_BY_CODE.get(final_code, CallResult.FAILED)


class RefusalReason(enum.StrEnum):
    """``assign_result.reason`` when ``accepted`` is false."""

    CAPACITY = "capacity"
    DRAINING = "draining"
    INVALID = "invalid"
    DUPLICATE = "duplicate"


class Role(enum.StrEnum):
    CALLER = "caller"
    RECEIVER = "receiver"


class Transport(enum.StrEnum):
    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"
    WSS = "wss"
    AUTO = "auto"


class SrtpMode(enum.StrEnum):
    OFF = "off"
    SDES = "sdes"
    DTLS = "dtls"


class SourceKind(enum.StrEnum):
    TONE = "tone"
    SILENCE = "silence"
    FILE = "file"


class TraceMode(enum.StrEnum):
    """``settings.trace``: every SIP message, only those of failed endpoints, or none."""

    ALL = "all"
    FAILURES = "failures"
    NONE = "none"


class Direction(enum.StrEnum):
    OUT = "out"
    IN = "in"


class ActionKind(enum.StrEnum):
    HOLD = "hold"
    RESUME = "resume"
    DTMF = "dtmf"
    HANGUP = "hangup"  # worker extension (docs/protocol.md "Actions")


class ActionTrigger(enum.StrEnum):
    """Events an ``{"on": ...}`` action may wait for."""

    DTMF_RECEIVED = "dtmf_received"
    HOLD_RECEIVED = "hold_received"
    RESUME_RECEIVED = "resume_received"
