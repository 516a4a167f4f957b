"""Incoming call flow (UAS), RFC 3261 §13.3.

Theory of operation
-------------------
The stack answers a new INVITE with 100 Trying at once (17.2.1: the server
transaction must, unless the TU answers within 200 ms), builds a
:class:`UasCall` with its local tag and dialog (12.1.1: route set =
Record-Route as received, remote target = Contact) and emits
``IncomingCall``. The owner then decides, at the time it chooses:

* ``ring`` -> 180 Ringing (Record-Route copied, To tag, Contact);
* ``answer(sdp)`` -> 200 OK with the SDP answer, retransmitted at T1, 2*T1 ...
  T2 until the ACK (13.3.1.4) -> ``CallConfirmed``; no ACK within 64*T1 ->
  BYE and ``CallFailed(408)``;
* ``reject(code)`` -> a final 3xx-6xx (486 busy, 488 negotiation failed,
  603 declined ...) -> ``CallFailed(code, by="local")``.

A CANCEL before the final response gets 200, the INVITE gets 487 and the call
ends with ``CallFailed(487, by="remote")`` (9.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sipswarm.errors import InvalidState
from sipswarm.sip.call import CallState
from sipswarm.sip.dialog import Dialog, remote_target_from, route_set_from
from sipswarm.sip.fastparse import strip_tag
from sipswarm.sip.request import ALLOW
from sipswarm.sip.session import SDP, Session

if TYPE_CHECKING:
    from sipswarm.sip.core import Core
    from sipswarm.sip.events import Owner
    from sipswarm.sip.message import SipMessage
    from sipswarm.sip.transaction import ServerTransaction

__all__ = ["REASONS", "UasCall"]

C = CallState

REASONS = {
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    503: "Service Unavailable",
    600: "Busy Everywhere",
    603: "Decline",
}


class UasCall(Session):
    """A call we receive. Created by the stack on a new INVITE."""

    invite_txn: ServerTransaction
    _record_route: str = ""

    @classmethod
    def from_invite(
        cls, core: Core, owner: Owner, msg: SipMessage, txn: ServerTransaction, now: float
    ) -> UasCall:
        """Build the call and its dialog from the INVITE. Raises ValueError on bad
        Contact/Record-Route syntax (the stack answers 400)."""
        target = remote_target_from(msg)
        if target is None:
            raise ValueError("INVITE without Contact")
        route_set = route_set_from(msg, reverse=False)
        local_tag = core.ids.tag()
        dialog = Dialog(
            call_id=msg.call_id,
            local_tag=local_tag,
            remote_tag=msg.from_tag or "",
            local_uri=strip_tag(msg.headers["to"][0]),
            remote_uri=strip_tag(msg.headers["from"][0]),
            remote_target=target,
            route_set=route_set,
            remote_cseq=msg.cseq,
            fallback=txn.remote,
            transport=core.config.transport,
        )
        call = cls.create(
            core,
            owner=owner,
            direction="in",
            call_id=msg.call_id,
            local_tag=local_tag,
            remote=txn.remote,
            state=C.INCOMING,
            invite_ts=now,
            remote_sdp=msg.body,
            dialog=dialog,
        )
        call.invite_txn = txn
        call._record_route = "".join(
            f"Record-Route: {v}\r\n" for v in msg.header_values("record-route")
        )
        return call

    # -- local actions ----------------------------------------------------------------
    def ring(self, now: float, code: int = 180) -> None:
        """Send 180 Ringing (or 183) with our To tag; sets ``ringing_ts``."""
        self.check("ring")
        self._respond(code, REASONS.get(code, "Ringing"), now)
        if self.ringing_ts is None:
            self.ringing_ts = now
        self.go(C.RINGING)

    def answer(self, sdp: bytes, now: float) -> None:
        """Send 200 OK with ``sdp`` and retransmit it until the ACK (RFC 3261 13.3.1.4)."""
        self.check("answer")
        self.local_sdp = sdp
        data = self._respond(200, "OK", now, body=sdp)
        self.answer_ts = now
        self.final_code = 200
        self.reason = "OK"
        self.go(C.ANSWERED)
        self.start_2xx(data, self.invite_txn.remote, now, initial=True)

    def reject(self, code: int, now: float, reason: str | None = None) -> None:
        """Send a final 3xx-6xx and end the call (``CallFailed``, by local)."""
        self.check("reject")
        if not 300 <= code <= 699:
            raise InvalidState(f"reject code must be 300-699, got {code}")
        text = reason or REASONS.get(code, "Rejected")
        self._respond(code, text, now)
        self.fail(code, text, "local")

    def remote_cancel(self, now: float) -> bool:
        """A CANCEL matched our INVITE: 487 if no final was sent. True if it applied."""
        if self.state not in (C.INCOMING, C.RINGING):
            return False
        self._respond(487, "Request Terminated", now)
        self.fail(487, "Request Terminated", "remote")
        return True

    def _respond(self, code: int, reason: str, now: float, body: bytes = b"") -> bytes:
        contact = self.core.endpoint(self.owner).contact
        extra = f"{self._record_route}Contact: {contact}\r\nAllow: {ALLOW}\r\n"
        if body:
            extra += f"Content-Type: {SDP}\r\n"
        return self.core.respond(
            self.invite_txn, code, reason, now, to_tag=self.local_tag, extra=extra, body=body
        )
