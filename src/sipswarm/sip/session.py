"""What both call directions share once a dialog exists: BYE (both ways),
in-dialog requests (re-INVITE, UPDATE, INFO, OPTIONS), 2xx retransmission
until ACK (RFC 3261 13.3.1.4) and the single terminal event per call.

:class:`Session` extends the plain :class:`~sipswarm.sip.call.Call` record
with a reference to the stack's :class:`~sipswarm.sip.core.Core`; the UAC
and UAS flows (:mod:`.uac`, :mod:`.uas`) extend it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from sipswarm.errors import InvalidState
from sipswarm.sip.call import Call, CallState
from sipswarm.sip.core import Authenticator
from sipswarm.sip.dialog import remote_target_from
from sipswarm.sip.events import (
    CallConfirmed,
    CallEnded,
    CallFailed,
    CallTeardownFailed,
    Event,
    IncomingReInvite,
    ReInviteAccepted,
    ReInviteAnswered,
    ReInviteFailed,
)
from sipswarm.sip.ids import draw
from sipswarm.sip.request import ACCEPT, ALLOW, RequestSpec

if TYPE_CHECKING:
    from sipswarm.sip.core import Core
    from sipswarm.sip.message import SipMessage
    from sipswarm.sip.transaction import ClientTransaction, ServerTransaction

__all__ = ["Session"]

C = CallState
SESSION_TIMERS = ("2xx", "2xx_timeout", "ring", "cancel_guard", "reinvite_retry")
MAX_GLARE_RETRIES = 3  # 491 answers to one re-INVITE before ReInviteFailed(491)
NO_DIALOG = (408, 481)  # RFC 3261 12.2.1.2: these end the dialog
SDP = "application/sdp"


class Session(Call):
    """A call leg bound to a stack core (base of the UAC and UAS call flows)."""

    core: Core
    _ok_data: bytes | None = None
    _ok_remote: tuple[str, int] = ("", 0)
    _ok_interval: float = 0.0
    _ok_initial: bool = False
    _bye_auth: Authenticator | None = None
    _bye_txn: ClientTransaction | None = None
    _bye_pending: bool = False
    _re_auth: Authenticator | None = None  # our re-INVITE in progress
    _re_txn: ClientTransaction | None = None
    _re_sdp: bytes = b""
    _re_glare: int = 0
    _re_ack: bytes = b""
    _re_ack_remote: tuple[str, int] = ("", 0)
    _re_ack_key: tuple[int, str] = (0, "")
    _re_server: ServerTransaction | None = None  # incoming re-INVITE the owner answers

    # -- terminal event ---------------------------------------------------------------
    def finish(self, event: Event, close: bool = True) -> None:
        """Emit the call's one terminal event; with ``close``, forget the call."""
        if not self.finished:
            self.finished = True
            self.core.emit(event)
        if close:
            self.close()

    def close(self) -> None:
        """Terminated: timers cancelled, no longer found by Call-ID and tag."""
        self.state = C.TERMINATED
        self.core.timers.cancel_all(self, SESSION_TIMERS)
        self.core.unindex_call(self)

    def fail(self, code: int, reason: str, by: Literal["local", "remote"]) -> None:
        """End an unestablished call with ``code`` (CallFailed)."""
        self.final_code = code
        self.reason = reason
        self.finish(CallFailed(self.owner, self, code, reason, by))

    # -- BYE ----------------------------------------------------------------------------
    def bye(self, now: float) -> None:
        """Hang up an established call: BYE now, or right after the ACK if our 2xx has
        not been acknowledged yet (RFC 3261 15: the callee waits for the ACK)."""
        self.check("bye")
        if self.state is C.ANSWERED:
            self._bye_pending = True
        else:
            self.send_bye(now)

    def send_bye(self, now: float) -> None:
        """Send BYE in the dialog (RFC 3261 15.1.1); the answer ends the call."""
        assert self.dialog is not None
        self.go(C.TERMINATING)
        self.core.timers.cancel_all(self, ("2xx", "2xx_timeout"))
        self._ok_data = None
        self.bye_ts = now
        spec = self.dialog.request("BYE", extra=f"Allow: {ALLOW}\r\n")
        self._bye_auth = Authenticator(self.core, self.account, spec)
        self._send_bye(*self._bye_auth.first, now)

    def _send_bye(self, spec: RequestSpec, auth: str, now: float) -> None:
        assert self.dialog is not None
        self.dialog.local_cseq = spec.cseq
        self._bye_txn = self.core.start_client(self, spec, self.owner, now, auth)

    def bye_response(self, txn: ClientTransaction, msg: SipMessage, now: float) -> None:
        """Final response to our BYE: 2xx ends the call, anything else is a teardown failure."""
        if msg.status < 200 or txn is not self._bye_txn:
            return
        if msg.status in (401, 407) and self._bye_auth is not None:
            retry = self._bye_auth.retry(msg)
            if retry is not None:
                self._send_bye(*retry, now)
                return
        if msg.status < 300:
            self.ended_by = self.ended_by or "local"
            self.finish(CallEnded(self.owner, self, "local"))
        else:
            self.finish(CallTeardownFailed(self.owner, self, msg.status, msg.reason))

    def on_response(self, txn: ClientTransaction, msg: SipMessage, now: float) -> None:
        """Client transaction user: responses to our BYE and re-INVITE (UacCall adds
        the initial INVITE and CANCEL)."""
        if txn.spec.method == "INVITE":
            self.reinvite_response(txn, msg, now)
        else:
            self.bye_response(txn, msg, now)

    def on_timeout(self, txn: ClientTransaction, now: float) -> None:
        """Client transaction user: Timer F on our BYE, Timer B on our re-INVITE."""
        if txn.spec.method == "INVITE":
            self.reinvite_timeout(txn, now)
        else:
            self.bye_timeout(txn, now)

    def on_transport_error(self, txn: ClientTransaction, reason: str, now: float) -> None:
        """Client transaction user: the transport failed under our BYE or re-INVITE (503)."""
        text = f"transport error: {reason}"
        if txn.spec.method == "INVITE" and txn is self._re_txn:
            self._reinvite_done(ReInviteFailed(self.owner, self, 503, text))
        elif txn is self._bye_txn:
            self.finish(CallTeardownFailed(self.owner, self, 503, text))

    def bye_timeout(self, txn: ClientTransaction, now: float) -> None:
        """Timer F on our BYE."""
        if txn is self._bye_txn:
            self.finish(CallTeardownFailed(self.owner, self, 408, "no response to BYE"))

    # -- re-INVITE from our side (RFC 3261 14.1) ----------------------------------------
    def reinvite(self, sdp: bytes, now: float) -> None:
        """Send a re-INVITE offering ``sdp`` (hold: a=sendonly, resume: a=sendrecv).
        Outcome: ReInviteAccepted or ReInviteFailed. Raises InvalidState unless the
        call is confirmed with no other INVITE transaction in progress (14.1)."""
        if self.state is not C.CONFIRMED or self.dialog is None:
            raise InvalidState(
                f"cannot re-INVITE call {self.call_id} in state {self.state.value} "
                "(allowed in: confirmed)"
            )
        if self.reinvite_pending or self._re_server is not None or self._ok_data is not None:
            raise InvalidState(
                f"call {self.call_id} has an INVITE transaction in progress: wait for its "
                "outcome (RFC 3261 14.1)"
            )
        self._re_sdp = sdp
        self._re_glare = 0
        self._start_reinvite(now)

    @property
    def reinvite_pending(self) -> bool:
        """True from ``reinvite`` until ReInviteAccepted/ReInviteFailed."""
        return self._re_auth is not None

    def _start_reinvite(self, now: float) -> None:
        assert self.dialog is not None
        contact = self.core.endpoint(self.owner).contact
        spec = self.dialog.request(
            "INVITE", contact=contact, body=self._re_sdp, extra=f"Allow: {ALLOW}\r\n"
        )
        self._re_auth = Authenticator(self.core, self.account, spec)
        self._send_reinvite(*self._re_auth.first, now)

    def _send_reinvite(self, spec: RequestSpec, auth: str, now: float) -> None:
        assert self.dialog is not None
        self.dialog.local_cseq = spec.cseq
        self._re_txn = self.core.start_client(self, spec, self.owner, now, auth)

    def reinvite_response(self, txn: ClientTransaction, msg: SipMessage, now: float) -> None:
        """Responses to our re-INVITE: 2xx (first and retransmitted) -> ACK; 401/407 ->
        credentials; 491 -> retry after the 14.1 back-off; other finals -> failed."""
        if msg.status < 200:
            return
        if msg.status < 300:
            self._reinvite_2xx(txn, msg, now)
            return
        if txn is not self._re_txn or self._re_auth is None:
            return
        if msg.status in (401, 407):
            retry = self._re_auth.retry(msg)
            if retry is not None:
                self._send_reinvite(*retry, now)
                return
        if msg.status == 491 and self._re_glare < MAX_GLARE_RETRIES:
            self._re_glare += 1
            self._re_txn = None
            self.core.timers.set(self, "reinvite_retry", now + self._glare_delay())
            return
        self._reinvite_done(ReInviteFailed(self.owner, self, msg.status, msg.reason))

    def _glare_delay(self) -> float:
        # RFC 3261 14.1: the owner of the Call-ID (who sent the initial INVITE) waits
        # 2.1-4 s, the other side 0-2 s, both in units of 10 ms, chosen at random.
        if self.direction == "out":
            return 2.1 + draw(self.core.ids, 191) / 100
        return draw(self.core.ids, 201) / 100

    def _retry_reinvite(self, now: float) -> None:
        if self.state is C.CONFIRMED and self._re_server is None and self._ok_data is None:
            self._start_reinvite(now)
        elif self.state is C.CONFIRMED:
            # the peer's INVITE is still open: try again after another back-off
            self.core.timers.set(self, "reinvite_retry", now + self._glare_delay())
        else:
            self._re_auth = None

    def _reinvite_2xx(self, txn: ClientTransaction, msg: SipMessage, now: float) -> None:
        assert self.dialog is not None
        key = (txn.spec.cseq, msg.to_tag or "")
        if self._re_ack and key == self._re_ack_key:
            # RFC 3261 13.2.2.4: a retransmitted 2xx gets the same ACK again.
            self.core.count("ack_retransmissions")
            self.core.transmit(self._re_ack, self._re_ack_remote, self.owner)
            return
        if txn is not self._re_txn:
            return
        target = _target_refresh(msg)
        if target:
            self.dialog.remote_target = target  # RFC 3261 12.2.1.2: target refresh
        ack = self.dialog.request("ACK", cseq=txn.spec.cseq)
        self._re_ack = ack.render(self.core.config, self.core.ids.branch())
        self._re_ack_remote = ack.destination
        self._re_ack_key = key
        self.core.transmit(self._re_ack, self._re_ack_remote, self.owner)
        self.local_sdp = self._re_sdp
        self.remote_sdp = msg.body or self.remote_sdp
        self._reinvite_done(ReInviteAccepted(self.owner, self, msg.body))

    def reinvite_timeout(self, txn: ClientTransaction, now: float) -> None:
        """Timer B on our re-INVITE: ReInviteFailed(408); the engine hangs up (12.2.1.2)."""
        if txn is self._re_txn:
            self._reinvite_done(ReInviteFailed(self.owner, self, 408, "no response to re-INVITE"))

    def _reinvite_done(self, event: ReInviteAccepted | ReInviteFailed) -> None:
        self._re_auth = None
        self._re_txn = None
        self.core.timers.cancel(self, "reinvite_retry")
        if not self.finished:
            self.core.emit(event)

    # -- re-INVITE from the peer answered by the owner --------------------------------
    def answer_reinvite(self, sdp: bytes, now: float) -> None:
        """200 OK with ``sdp`` to the re-INVITE announced by IncomingReInvite."""
        txn = self._take_reinvite_server()
        data = self.core.respond(txn, 200, "OK", now, extra=self._ok_headers(bool(sdp)), body=sdp)
        self.remote_sdp = txn.request.body or self.remote_sdp
        if sdp:
            self.local_sdp = sdp
        self.start_2xx(data, txn.remote, now, initial=False)

    def reject_reinvite(self, code: int, now: float, reason: str | None = None) -> None:
        """A 4xx-6xx to the re-INVITE announced by IncomingReInvite (488: the offer is
        not acceptable); the session goes on unchanged (RFC 3261 14.2)."""
        if not 400 <= code <= 699:
            raise InvalidState(f"reject_reinvite code must be 400-699, got {code}")
        txn = self._take_reinvite_server()
        self.core.respond(txn, code, reason or REJECT_REASONS.get(code, "Rejected"), now)

    def _take_reinvite_server(self) -> ServerTransaction:
        txn = self._re_server
        if txn is None:
            raise InvalidState(f"call {self.call_id} has no re-INVITE waiting for an answer")
        self._re_server = None
        return txn

    # -- 2xx retransmission (RFC 3261 13.3.1.4) -----------------------------------------
    def start_2xx(self, data: bytes, remote: tuple[str, int], now: float, initial: bool) -> None:
        """Retransmit ``data`` at T1, 2*T1 ... T2 until an ACK comes or 64*T1 passes."""
        t1 = self.core.config.timers.t1
        self._ok_data = data
        self._ok_remote = remote
        self._ok_interval = t1
        self._ok_initial = initial
        self.core.timers.set(self, "2xx", now + t1)
        self.core.timers.set(self, "2xx_timeout", now + 64 * t1)

    def _retransmit_2xx(self, now: float) -> None:
        if self._ok_data is None:
            return
        self.core.count("2xx_retransmissions")
        self.core.transmit(self._ok_data, self._ok_remote, self.owner)
        self._ok_interval = min(2 * self._ok_interval, self.core.config.timers.t2)
        self.core.timers.set(self, "2xx", now + self._ok_interval)

    def _ack_timeout(self, now: float) -> None:
        # RFC 3261 13.3.1.4: no ACK within 64*T1 -> confirm and end the dialog with BYE.
        self._ok_data = None
        self.core.timers.cancel(self, "2xx")
        self.core.count("2xx_ack_timeouts")
        initial = self._ok_initial
        self.send_bye(now)
        if initial:
            self.final_code = self.final_code or 200
            self.finish(
                CallFailed(self.owner, self, 408, "no ACK for 2xx within 64*T1", "local"),
                close=False,
            )

    def receive_ack(self, msg: SipMessage, now: float) -> None:
        """ACK for a 2xx we sent (RFC 3261 13.3.1.4): stop retransmitting."""
        if self._ok_data is None:
            self.core.count("absorbed_requests")
            return
        self._ok_data = None
        self.core.timers.cancel_all(self, ("2xx", "2xx_timeout"))
        if msg.body:
            self.remote_sdp = msg.body  # answer to an offer we made in the 2xx
        if self.state is C.ANSWERED:
            self.ack_ts = now
            self.go(C.CONFIRMED)
            self.core.emit(CallConfirmed(self.owner, self, self.remote_sdp))
            if self._bye_pending:
                self.send_bye(now)

    # -- in-dialog requests from the peer ------------------------------------------------
    def receive_request(self, msg: SipMessage, txn: ServerTransaction, now: float) -> None:
        """One handler per method (STYLE.md rule 10); unknown methods get 405."""
        assert self.dialog is not None
        if not self.dialog.accept_remote_cseq(msg.cseq, msg.method):
            self.core.respond(txn, 500, "Out of Order CSeq", now)  # RFC 3261 12.2.2
            return
        handler = _IN_DIALOG.get(msg.method)
        if handler is None:
            self.core.respond(txn, 405, "Method Not Allowed", now, extra=f"Allow: {ALLOW}\r\n")
            return
        handler(self, msg, txn, now)

    def _on_bye(self, msg: SipMessage, txn: ServerTransaction, now: float) -> None:
        # RFC 3261 15.1.2: 200 to a BYE on an existing dialog, the session ends.
        if self.state not in (C.CONFIRMED, C.ANSWERED, C.TERMINATING):
            self.core.respond(txn, 481, "Call/Transaction Does Not Exist", now)
            return
        self.core.respond(txn, 200, "OK", now)
        if self.bye_ts is None:
            self.bye_ts = now
        self.ended_by = self.ended_by or "remote"
        self._ok_data = None
        self.finish(CallEnded(self.owner, self, "remote"))

    def _on_reinvite(self, msg: SipMessage, txn: ServerTransaction, now: float) -> None:
        if self.state is not C.CONFIRMED or self._ok_data is not None or self._re_server:
            # RFC 3261 14.2: an INVITE while our previous 2xx is unacknowledged, or
            # while another incoming INVITE waits for its final response.
            self.core.respond(txn, 500, "Server Internal Error", now, extra="Retry-After: 1\r\n")
            return
        if self._re_txn is not None:
            # RFC 3261 14.2: glare, our own re-INVITE is pending.
            self.core.respond(txn, 491, "Request Pending", now)
            return
        ctype = (msg.header("content-type") or SDP).split(";")[0].strip().lower()
        if msg.body and ctype != SDP:
            self.core.respond(txn, 488, "Not Acceptable Here", now, extra=f"Accept: {ACCEPT}\r\n")
            return
        target = _target_refresh(msg)
        if target and self.dialog is not None:
            self.dialog.remote_target = target  # RFC 3261 12.2.2: target refresh
        if self.owner in self.core.manual_reinvite:
            self.core.respond(txn, 100, "Trying", now)
            self._re_server = txn
            self.core.emit(IncomingReInvite(self.owner, self, msg.body))
            return
        # Automatic mode: answer with the SDP we already use (RFC 3264 8: unchanged
        # session, unchanged o= version).
        data = self.core.respond(txn, 200, "OK", now, extra=self._ok_headers(), body=self.local_sdp)
        self.start_2xx(data, txn.remote, now, initial=False)
        self.core.emit(ReInviteAnswered(self.owner, self, msg.body))

    def _on_update(self, msg: SipMessage, txn: ServerTransaction, now: float) -> None:
        body = self.local_sdp if msg.body else b""
        self.core.respond(txn, 200, "OK", now, extra=self._ok_headers(bool(body)), body=body)

    def _on_ok(self, msg: SipMessage, txn: ServerTransaction, now: float) -> None:
        self.core.respond(txn, 200, "OK", now, extra=f"Allow: {ALLOW}\r\nAccept: {ACCEPT}\r\n")

    def _ok_headers(self, sdp: bool = True) -> str:
        contact = self.core.endpoint(self.owner).contact
        ctype = f"Content-Type: {SDP}\r\n" if sdp else ""
        return f"Contact: {contact}\r\nAllow: {ALLOW}\r\n{ctype}"

    # -- timers -----------------------------------------------------------------------
    def on_timer(self, name: str, now: float) -> None:
        """Dispatch a call timer to the method named in ``_TIMERS``."""
        method = self._TIMERS.get(name)
        if method is not None:
            getattr(self, method)(now)

    # timer name -> handler method name; subclasses extend it.
    _TIMERS: ClassVar[dict[str, str]] = {
        "2xx": "_retransmit_2xx",
        "2xx_timeout": "_ack_timeout",
        "reinvite_retry": "_retry_reinvite",
    }

    @classmethod
    def create(cls, core: Core, **fields: Any) -> Self:
        """Build a call bound to ``core`` (fields as for :class:`Call`) and index it."""
        call = cls(**fields)
        call.core = core
        core.index_call(call)
        return call


REJECT_REASONS = {
    400: "Bad Request",
    486: "Busy Here",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    603: "Decline",
}


def _target_refresh(msg: SipMessage) -> str | None:
    """The Contact URI of a target refresh request/response, None if absent or bad."""
    try:
        return remote_target_from(msg)
    except ValueError:
        return None


_IN_DIALOG: dict[str, Callable[[Session, SipMessage, ServerTransaction, float], None]] = {
    "BYE": Session._on_bye,
    "INVITE": Session._on_reinvite,
    "UPDATE": Session._on_update,
    "INFO": Session._on_ok,
    "OPTIONS": Session._on_ok,
}
