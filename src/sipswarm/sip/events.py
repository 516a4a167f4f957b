"""Events a :class:`~sipswarm.sip.stack.SipStack` hands to its owner.

Frozen dataclasses (STYLE.md: h11-style events), drained with
``stack.events_received()`` after every input. Every event carries ``owner``,
the endpoint key given to the action that started the flow (or found by
Request-URI user for incoming requests; None only for :class:`MessageDropped`
of messages that belong to nobody).

Per call, exactly one terminal event is emitted: :class:`CallFailed`,
:class:`CallEnded` or :class:`CallTeardownFailed`. Times are the ``now``
values the stack was given, in the engine's clock.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from sipswarm.sip.call import Call

__all__ = [
    "CallAnswered",
    "CallConfirmed",
    "CallEnded",
    "CallFailed",
    "CallProgress",
    "CallTeardownFailed",
    "Event",
    "IncomingCall",
    "IncomingReInvite",
    "MessageDropped",
    "Owner",
    "ReInviteAccepted",
    "ReInviteAnswered",
    "ReInviteFailed",
    "RegistrationFailed",
    "RegistrationSucceeded",
    "TraceRecord",
    "Unregistered",
]

Owner = Hashable
By = Literal["local", "remote"]


@dataclass(frozen=True, slots=True)
class RegistrationSucceeded:
    """A REGISTER got a 2xx. ``expires_granted`` seconds; ``register_ms`` from the
    first REGISTER of this attempt (auth round trip included) to the 2xx.
    ``received``/``rport`` echo what the registrar saw in our Via (RFC 3581)."""

    owner: Owner
    status_code: int
    expires_granted: int
    register_ms: float
    refresh: bool
    received: str | None = None
    rport: int | None = None


@dataclass(frozen=True, slots=True)
class RegistrationFailed:
    """A REGISTER (initial or refresh) ended without a 2xx; 408 when it timed out."""

    owner: Owner
    status_code: int
    reason: str
    register_ms: float
    refresh: bool


@dataclass(frozen=True, slots=True)
class Unregistered:
    """The Expires: 0 REGISTER finished; ``status_code`` 2xx means removed, 408 timed out."""

    owner: Owner
    status_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """A new INVITE for ``owner`` (100 Trying already sent). Next: ``ring``,
    ``answer`` or ``reject`` on ``call``."""

    owner: Owner
    call: Call
    sdp_offer: bytes
    from_uri: str
    remote: tuple[str, int]


@dataclass(frozen=True, slots=True)
class CallProgress:
    """A provisional response (>100) to our INVITE; ``sdp`` is early media, if any."""

    owner: Owner
    call: Call
    code: int
    reason: str
    sdp: bytes


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """Our INVITE got a 2xx (ACK already sent). Apply ``sdp_answer``; next ``bye``."""

    owner: Owner
    call: Call
    sdp_answer: bytes


@dataclass(frozen=True, slots=True)
class CallConfirmed:
    """UAS: the ACK for our 2xx arrived; media may flow. Next: ``bye`` or wait."""

    owner: Owner
    call: Call
    sdp: bytes


@dataclass(frozen=True, slots=True)
class CallFailed:
    """The call ended before it was established: final non-2xx (sent or received),
    timeout (408), cancellation (487), or a 2xx never acknowledged (UAS)."""

    owner: Owner
    call: Call
    code: int
    reason: str
    by: By


@dataclass(frozen=True, slots=True)
class CallEnded:
    """An established call ended with a successful BYE, sent or received."""

    owner: Owner
    call: Call
    by: By


@dataclass(frozen=True, slots=True)
class CallTeardownFailed:
    """Our BYE got a non-2xx (e.g. 481) or no answer (408): the call is gone anyway."""

    owner: Owner
    call: Call
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ReInviteAnswered:
    """A re-INVITE on an established call was answered 200 with our current SDP."""

    owner: Owner
    call: Call
    sdp_offer: bytes


@dataclass(frozen=True, slots=True)
class IncomingReInvite:
    """A re-INVITE arrived for an owner that answers them itself (see
    ``SipStack.take_reinvites``); 100 Trying was sent. Next: ``answer_reinvite``
    with the SDP answer (an offer when ``sdp_offer`` is empty) or ``reject_reinvite``."""

    owner: Owner
    call: Call
    sdp_offer: bytes


@dataclass(frozen=True, slots=True)
class ReInviteAccepted:
    """Our re-INVITE (``SipStack.reinvite``) got a 2xx; the ACK is sent and
    ``call.local_sdp``/``call.remote_sdp`` now hold the new offer and answer."""

    owner: Owner
    call: Call
    sdp_answer: bytes


@dataclass(frozen=True, slots=True)
class ReInviteFailed:
    """Our re-INVITE ended without a 2xx (after 491 retries and auth retries): the
    session goes on with the previous SDP (RFC 3261 14.1). On 408 or 481 the
    dialog is gone (RFC 3261 12.2.1.2): hang up."""

    owner: Owner
    call: Call
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class MessageDropped:
    """A message was refused (malformed, unmatched, unexpected). Also counted in
    ``stack.counters``."""

    reason: str
    remote: tuple[str, int]
    owner: Owner | None = None


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One SIP message sent or received for a traced owner (PROTOCOL.md ``trace``)."""

    owner: Owner
    ts: float
    dir: Literal["in", "out"]
    remote: tuple[str, int]
    message: bytes


Event = (
    RegistrationSucceeded
    | RegistrationFailed
    | Unregistered
    | IncomingCall
    | CallProgress
    | CallAnswered
    | CallConfirmed
    | CallFailed
    | CallEnded
    | CallTeardownFailed
    | ReInviteAnswered
    | IncomingReInvite
    | ReInviteAccepted
    | ReInviteFailed
    | MessageDropped
)
