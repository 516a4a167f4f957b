"""Outgoing call flow (UAC), RFC 3261 §13.2 and §9.1.

Theory of operation
-------------------
``SipStack.invite`` builds a :class:`UacCall` and calls :meth:`UacCall.start`:
the INVITE goes out through the digest flow (a 407/401 is ACKed by the
transaction, then answered with credentials and CSeq + 1) and the ring timer
starts. Responses then drive it:

* 1xx: ``CallProgress`` (180/183 set ``ringing_ts``; 100 only counts as the
  provisional that allows a CANCEL);
* 2xx: the dialog is created (route set = reversed Record-Route, remote target
  = Contact), the ACK is sent at once and kept to be re-sent for every
  retransmitted 2xx, then ``CallAnswered``. A 2xx from a second fork is ACKed
  and sent a BYE (13.2.2.4). A 2xx after our CANCEL is ACKed and hung up;
* 3xx-6xx: the transaction ACKs it; ``CallFailed``.

``cancel`` (or the ring timeout) sends CANCEL once a provisional has arrived
(9.1: not before); the 487 then ends the call with ``CallFailed(487)``. If no
final response comes within 64*T1 of the CANCEL, the call fails with 408.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from sipswarm.sip.call import CallState
from sipswarm.sip.core import Authenticator
from sipswarm.sip.dialog import Dialog, remote_target_from, route_set_from
from sipswarm.sip.events import CallAnswered, CallProgress
from sipswarm.sip.request import RequestSpec
from sipswarm.sip.session import Session

if TYPE_CHECKING:
    from sipswarm.sip.message import SipMessage
    from sipswarm.sip.transaction import ClientTransaction

__all__ = ["UacCall"]

C = CallState


class UacCall(Session):
    """A call we place. Created and started by ``SipStack.invite``."""

    _spec: RequestSpec
    _auth: Authenticator
    _invite_txn: ClientTransaction
    _ack_data: bytes = b""
    _ack_remote: tuple[str, int] = ("", 0)
    _cancel_pending: bool = False
    _cancelled: bool = False
    _provisional_seen: bool = False
    ring_timeout: float | None = None

    def start(self, spec: RequestSpec, now: float) -> None:
        """Send the first INVITE and arm the ring timer."""
        self.invite_ts = now
        self.local_sdp = spec.body
        self._auth = Authenticator(self.core, self.account, spec)
        self._send_invite(*self._auth.first, now)
        if self.ring_timeout is not None:
            self.core.timers.set(self, "ring", now + self.ring_timeout)

    def _send_invite(self, spec: RequestSpec, auth: str, now: float) -> None:
        self._spec = spec
        self._invite_txn = self.core.start_client(self, spec, self.owner, now, auth)

    # -- local actions ----------------------------------------------------------------
    def cancel(self, now: float, reason: str = "cancelled") -> None:
        """CANCEL the INVITE now, or as soon as a provisional arrives (RFC 3261 9.1)."""
        self.check("cancel")
        self.go(C.CANCELLING)
        self.reason = reason
        self.cancel_reason = reason
        self._cancelled = True
        self.core.timers.cancel(self, "ring")
        if self._provisional_seen:
            self._send_cancel(now)
        else:
            self._cancel_pending = True

    def _send_cancel(self, now: float) -> None:
        self._cancel_pending = False
        txn = self._invite_txn
        self.core.start_client(self, _cancel_spec(self._spec), self.owner, now, branch=txn.branch)
        # RFC 3261 9.1: no final response 64*T1 after the CANCEL -> give up.
        self.core.timers.set(self, "cancel_guard", now + 64 * self.core.config.timers.t1)

    # -- transaction user -------------------------------------------------------------
    def on_response(self, txn: ClientTransaction, msg: SipMessage, now: float) -> None:
        """Responses to our INVITE, CANCEL, BYE and re-INVITE transactions."""
        if self._is_reinvite(txn):
            self.reinvite_response(txn, msg, now)
            return
        handler = _BY_METHOD.get(txn.spec.method)
        if handler is not None:
            handler(self, txn, msg, now)

    def on_timeout(self, txn: ClientTransaction, now: float) -> None:
        """Timer B on the INVITE (408), Timer F on BYE (teardown failed)."""
        if txn.spec.method == "BYE":
            self.bye_timeout(txn, now)
        elif self._is_reinvite(txn):
            self.reinvite_timeout(txn, now)
        elif txn.spec.method == "INVITE" and txn is self._invite_txn and not self.finished:
            self.fail(408, "no final response to INVITE (Timer B)", "local")

    def on_transport_error(self, txn: ClientTransaction, reason: str, now: float) -> None:
        """The transport failed under our INVITE: CallFailed(503) (RFC 3261 8.1.3.1)."""
        if txn is self._invite_txn and not self.finished:
            self.core.timers.cancel_all(self, ("ring", "cancel_guard"))
            self.fail(503, f"transport error: {reason}", "local")
        elif txn.spec.method == "CANCEL" and not self.finished:
            # the CANCEL cannot leave: the INVITE's own outcome (or the guard) decides
            self.core.count("cancel_transport_errors")
        else:
            super().on_transport_error(txn, reason, now)

    def _is_reinvite(self, txn: ClientTransaction) -> bool:
        # In-dialog INVITEs take CSeqs above the initial INVITE's (auth retries included).
        return txn.spec.method == "INVITE" and txn.spec.cseq > self._spec.cseq

    def _invite_response(self, txn: ClientTransaction, msg: SipMessage, now: float) -> None:
        if msg.status < 200:
            if txn is self._invite_txn:
                self._provisional(msg, now)
        elif msg.status < 300:
            self._success(msg, now)
        elif txn is self._invite_txn:
            self._failure(msg, now)

    def _provisional(self, msg: SipMessage, now: float) -> None:
        self._provisional_seen = True
        if self._cancel_pending:
            self._send_cancel(now)
        if msg.status == 100 or self.state not in (C.CALLING, C.PROCEEDING):
            return
        if msg.status in (180, 183) and self.ringing_ts is None:
            self.ringing_ts = now
        self.go(C.PROCEEDING)
        self.core.emit(CallProgress(self.owner, self, msg.status, msg.reason, msg.body))

    def _failure(self, msg: SipMessage, now: float) -> None:
        if msg.status in (401, 407) and not self._cancelled:
            retry = self._auth.retry(msg)
            if retry is not None:
                self._send_invite(*retry, now)
                return
        if self._cancelled:
            # RFC 3261 9.1: any final response ends the INVITE we had given up on, a
            # 401/407 included (not answered: we no longer want the call). We ended it:
            # under overload a 407 read seconds late, after the ring timeout, is ours.
            self.fail(msg.status, msg.reason, "local")
        else:
            self.fail(msg.status, msg.reason, "remote")

    def _success(self, msg: SipMessage, now: float) -> None:
        if self.dialog is None:
            self._establish(msg, now)
        elif msg.to_tag == self.dialog.remote_tag:
            # RFC 3261 13.2.2.4: every retransmitted 2xx gets the same ACK again.
            self.core.count("ack_retransmissions")
            self.core.transmit(self._ack_data, self._ack_remote, self.owner)
        else:
            self._reject_fork(msg, now)

    def _establish(self, msg: SipMessage, now: float) -> None:
        try:
            dialog = self._dialog_from(msg)
        except ValueError:
            self.core.count("malformed_2xx")
            dialog = None
        if dialog is None:
            return
        self.dialog = dialog
        self.answer_ts = now
        self.final_code = msg.status
        self.reason = msg.reason
        self.remote_sdp = msg.body
        self.core.timers.cancel_all(self, ("ring", "cancel_guard"))
        ack = dialog.request("ACK", cseq=self._spec.cseq)
        self._ack_data = ack.render(self.core.config, self.core.ids.branch())
        self._ack_remote = ack.destination
        self.core.transmit(self._ack_data, self._ack_remote, self.owner)
        self.ack_ts = now
        if self._cancelled:
            # Answered while our CANCEL was on its way: ACK, then hang up (RFC 3261 9.1).
            self.send_bye(now)
            return
        self.go(C.CONFIRMED)
        self.core.emit(CallAnswered(self.owner, self, msg.body))

    def _dialog_from(self, msg: SipMessage) -> Dialog | None:
        target = remote_target_from(msg)
        if target is None or msg.to_tag is None:
            return None
        spec = self._spec
        return Dialog(
            call_id=self.call_id,
            local_tag=self.local_tag,
            remote_tag=msg.to_tag,
            local_uri=spec.from_hdr.rsplit(";tag=", 1)[0],
            remote_uri=spec.to_hdr,
            remote_target=target,
            route_set=route_set_from(msg, reverse=True),
            local_cseq=spec.cseq,
            fallback=spec.destination,
            transport=self.core.config.transport,
        )

    def _reject_fork(self, msg: SipMessage, now: float) -> None:
        # RFC 3261 13.2.2.4: a 2xx from another fork: ACK it, then BYE it.
        self.core.count("forked_2xx")
        try:
            fork = self._dialog_from(msg)
        except ValueError:
            fork = None
        if fork is None:
            return
        ack = fork.request("ACK", cseq=self._spec.cseq)
        self.core.transmit(
            ack.render(self.core.config, self.core.ids.branch()), ack.destination, self.owner
        )
        self.core.start_client(_IGNORE, fork.request("BYE"), self.owner, now)

    def _bye_or_ignore(self, txn: ClientTransaction, msg: SipMessage, now: float) -> None:
        self.bye_response(txn, msg, now)

    def _cancel_response(self, txn: ClientTransaction, msg: SipMessage, now: float) -> None:
        if msg.status >= 300:
            self.core.count("cancel_rejected")  # e.g. 481: the final response is on its way

    # -- timers -----------------------------------------------------------------------
    def _ring_timeout(self, now: float) -> None:
        if self.state in (C.CALLING, C.PROCEEDING):
            self.cancel(now, reason="ring timeout")

    def _cancel_guard(self, now: float) -> None:
        if not self.finished:
            self.fail(408, "no final response within 64*T1 of CANCEL", "local")

    _TIMERS: ClassVar[dict[str, str]] = {
        **Session._TIMERS,
        "ring": "_ring_timeout",
        "cancel_guard": "_cancel_guard",
    }


def _cancel_spec(spec: RequestSpec) -> RequestSpec:
    return RequestSpec(
        "CANCEL",
        spec.ruri,
        spec.from_hdr,
        spec.to_hdr,
        spec.call_id,
        spec.cseq,
        spec.destination,
        routes=spec.routes,
    )


class _IgnoreResponses:
    """TU of the BYE sent to a rejected fork: nobody waits for its outcome."""

    def on_response(self, txn: ClientTransaction, msg: SipMessage, now: float) -> None:
        pass

    def on_timeout(self, txn: ClientTransaction, now: float) -> None:
        pass

    def on_transport_error(self, txn: ClientTransaction, reason: str, now: float) -> None:
        pass


_IGNORE = _IgnoreResponses()

_BY_METHOD: dict[str, Callable[[UacCall, ClientTransaction, SipMessage, float], None]] = {
    "INVITE": UacCall._invite_response,
    "CANCEL": UacCall._cancel_response,
    "BYE": UacCall._bye_or_ignore,
}
