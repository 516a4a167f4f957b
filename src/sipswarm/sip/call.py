"""The call object the engine holds: state, wire timings, outcome.

One :class:`Call` per INVITE dialog attempt, outgoing (``direction="out"``,
created by ``SipStack.invite``) or incoming (``"in"``, delivered in
:class:`~sipswarm.sip.events.IncomingCall`). Its state changes only through
:meth:`Call.go`, checked against :data:`TRANSITIONS`; the local actions each
state allows are in :data:`ACTIONS` (an illegal one raises
:class:`~sipswarm.errors.InvalidState`).

Timings are the ``now`` values the stack was given when the message went out
or came in: ``invite_ts`` (first INVITE sent/received), ``ringing_ts`` (first
180/183), ``answer_ts`` (2xx), ``ack_ts``, ``bye_ts``; ``final_code`` and
``reason`` the final response of the INVITE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Literal

from sipswarm.errors import InvalidState

if TYPE_CHECKING:
    from sipswarm.sip.config import Account
    from sipswarm.sip.dialog import Dialog
    from sipswarm.sip.events import Owner

__all__ = ["ACTIONS", "TRANSITIONS", "Call", "CallState"]


class CallState(Enum):
    # Members are singletons: identity hashing is C-level, Enum.__hash__ is Python (hot
    # in the transition tables).
    __hash__ = object.__hash__

    CALLING = "calling"  # UAC: INVITE sent
    PROCEEDING = "proceeding"  # UAC: provisional received
    INCOMING = "incoming"  # UAS: INVITE received, 100 sent
    RINGING = "ringing"  # UAS: 180 sent
    ANSWERED = "answered"  # UAS: 2xx sent, waiting for ACK
    CONFIRMED = "confirmed"  # ACK sent (UAC) / received (UAS)
    CANCELLING = "cancelling"  # UAC: CANCEL wanted or sent
    TERMINATING = "terminating"  # BYE sent
    TERMINATED = "terminated"


C = CallState
TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    C.CALLING: frozenset({C.PROCEEDING, C.CONFIRMED, C.CANCELLING, C.TERMINATED}),
    C.PROCEEDING: frozenset({C.PROCEEDING, C.CONFIRMED, C.CANCELLING, C.TERMINATED}),
    C.INCOMING: frozenset({C.RINGING, C.ANSWERED, C.TERMINATED}),
    C.RINGING: frozenset({C.RINGING, C.ANSWERED, C.TERMINATED}),
    C.ANSWERED: frozenset({C.CONFIRMED, C.TERMINATING, C.TERMINATED}),
    C.CONFIRMED: frozenset({C.CONFIRMED, C.TERMINATING, C.TERMINATED}),
    C.CANCELLING: frozenset({C.TERMINATING, C.TERMINATED}),
    C.TERMINATING: frozenset({C.TERMINATED}),
    C.TERMINATED: frozenset(),
}

ACTIONS: dict[str, frozenset[CallState]] = {
    "ring": frozenset({C.INCOMING, C.RINGING}),
    "answer": frozenset({C.INCOMING, C.RINGING}),
    "reject": frozenset({C.INCOMING, C.RINGING}),
    "cancel": frozenset({C.CALLING, C.PROCEEDING}),
    # RFC 3261 15: the callee may not BYE before the ACK; in ANSWERED the BYE waits.
    "bye": frozenset({C.CONFIRMED, C.ANSWERED}),
}


@dataclass(eq=False)
class Call:
    """One call leg. Read its fields; act on it through the stack."""

    owner: Owner
    direction: Literal["out", "in"]
    call_id: str
    local_tag: str
    remote: tuple[str, int]
    account: Account | None = None
    state: CallState = CallState.CALLING
    invite_ts: float | None = None
    ringing_ts: float | None = None
    answer_ts: float | None = None
    ack_ts: float | None = None
    bye_ts: float | None = None
    final_code: int | None = None
    reason: str = ""
    # Why we gave up on our INVITE (``cancel``'s reason, e.g. "ring timeout"); None if we
    # did not. A final response that ends such an INVITE ends the call ``by="local"``.
    cancel_reason: str | None = None
    ended_by: Literal["local", "remote"] | None = None
    local_sdp: bytes = b""
    remote_sdp: bytes = b""
    dialog: Dialog | None = None
    finished: bool = field(default=False, repr=False)

    def go(self, new: CallState) -> None:
        """Move to ``new`` if :data:`TRANSITIONS` allows it (else InvalidState)."""
        if new not in TRANSITIONS[self.state]:
            raise InvalidState(
                f"call {self.call_id}: no transition from {self.state.value} to {new.value}"
            )
        self.state = new

    def check(self, action: str) -> None:
        """Raise InvalidState unless ``action`` is allowed now (see :data:`ACTIONS`)."""
        if self.state not in ACTIONS[action]:
            allowed = ", ".join(sorted(s.value for s in ACTIONS[action]))
            raise InvalidState(
                f"cannot {action} call {self.call_id} in state {self.state.value} "
                f"(allowed in: {allowed})"
            )

    def on_timer(self, name: str, now: float) -> None:
        """Overridden by the UAC/UAS call flows."""

    @property
    def terminated(self) -> bool:
        return self.state is CallState.TERMINATED
