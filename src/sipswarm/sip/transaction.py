"""SIP transactions, RFC 3261 §17 (with the RFC 6026 Accepted state).

Theory of operation
-------------------
Four state machines, each a transition table ``(state, input) -> state``
(STYLE.md rule 8) plus one side-effect handler per input kind (rule 10):

* :class:`ClientTransaction`, INVITE (17.1.1) and non-INVITE (17.1.2);
* :class:`ServerTransaction`, INVITE (17.2.1) and non-INVITE (17.2.2).

An input with no entry in the table is absorbed (counted as
``absorbed_responses``/``absorbed_requests``): a late or duplicate message
from the network is never an error. A local send that the table does not allow
raises :class:`~sipswarm.errors.InvalidState`.

Timers live in the stack's single heap (:mod:`sipswarm.sip.timers`) under
their RFC letter. Over UDP, A/E retransmit requests and G retransmits final
INVITE responses; over reliable transports nothing is retransmitted and the
wait timers D, I, J, K are zero, so those states end at once (Table 4).

INVITE 2xx handling follows RFC 6026: a client INVITE transaction moves to
Accepted on a 2xx and passes every retransmitted 2xx to its user (who re-sends
the ACK) until Timer M; a server INVITE transaction moves to Accepted after
the UAS core's 2xx and absorbs retransmitted INVITEs until Timer L, while the
UAS core retransmits the 2xx itself (RFC 3261 13.3.1.4).

Transactions talk to the stack through a small host interface (:class:`Host`)
and to their user through :class:`ClientUser`.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, ClassVar, Final, Protocol

from sipswarm.errors import InvalidState

if TYPE_CHECKING:
    from sipswarm.sip.config import StackConfig
    from sipswarm.sip.events import Owner
    from sipswarm.sip.message import SipMessage
    from sipswarm.sip.request import RequestSpec
    from sipswarm.sip.timers import Timers

__all__ = ["ClientTransaction", "ClientUser", "Host", "ServerTransaction", "TxnState"]

Address = tuple[str, int]


class TxnState(Enum):
    # Members are singletons: identity hashing is C-level, Enum.__hash__ is Python (hot
    # in the transition tables).
    __hash__ = object.__hash__

    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    ACCEPTED = "accepted"  # RFC 6026
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


S = TxnState

# RFC 3261 17.1.1.2, Figure 5 (+ RFC 6026 Figure 5): INVITE client transaction.
INVITE_CLIENT: dict[tuple[TxnState, str], TxnState] = {
    (S.CALLING, "A"): S.CALLING,
    (S.CALLING, "B"): S.TERMINATED,
    (S.CALLING, "1xx"): S.PROCEEDING,
    (S.CALLING, "2xx"): S.ACCEPTED,
    (S.CALLING, "final"): S.COMPLETED,
    (S.PROCEEDING, "1xx"): S.PROCEEDING,
    (S.PROCEEDING, "2xx"): S.ACCEPTED,
    (S.PROCEEDING, "final"): S.COMPLETED,
    (S.COMPLETED, "final"): S.COMPLETED,  # retransmitted final: ACK again
    (S.COMPLETED, "D"): S.TERMINATED,
    (S.ACCEPTED, "2xx"): S.ACCEPTED,  # retransmitted 2xx: to the TU
    (S.ACCEPTED, "M"): S.TERMINATED,
}

# RFC 3261 17.1.2.2, Figure 6: non-INVITE client transaction ("final" includes 2xx).
NON_INVITE_CLIENT: dict[tuple[TxnState, str], TxnState] = {
    (S.TRYING, "E"): S.TRYING,
    (S.TRYING, "F"): S.TERMINATED,
    (S.TRYING, "1xx"): S.PROCEEDING,
    (S.TRYING, "final"): S.COMPLETED,
    (S.PROCEEDING, "E"): S.PROCEEDING,
    (S.PROCEEDING, "F"): S.TERMINATED,
    (S.PROCEEDING, "1xx"): S.PROCEEDING,
    (S.PROCEEDING, "final"): S.COMPLETED,
    (S.COMPLETED, "K"): S.TERMINATED,
}

# RFC 3261 17.2.1, Figure 7 (+ RFC 6026 Figure 7): INVITE server transaction.
INVITE_SERVER: dict[tuple[TxnState, str], TxnState] = {
    (S.PROCEEDING, "request"): S.PROCEEDING,
    (S.PROCEEDING, "send_1xx"): S.PROCEEDING,
    (S.PROCEEDING, "send_2xx"): S.ACCEPTED,
    (S.PROCEEDING, "send_final"): S.COMPLETED,
    (S.ACCEPTED, "request"): S.ACCEPTED,
    (S.ACCEPTED, "send_2xx"): S.ACCEPTED,
    (S.ACCEPTED, "L"): S.TERMINATED,
    (S.COMPLETED, "request"): S.COMPLETED,
    (S.COMPLETED, "ack"): S.CONFIRMED,
    (S.COMPLETED, "G"): S.COMPLETED,
    (S.COMPLETED, "H"): S.TERMINATED,
    (S.CONFIRMED, "I"): S.TERMINATED,
}

# RFC 3261 17.2.2, Figure 8: non-INVITE server transaction ("send_final" includes 2xx).
NON_INVITE_SERVER: dict[tuple[TxnState, str], TxnState] = {
    (S.TRYING, "request"): S.TRYING,
    (S.TRYING, "send_1xx"): S.PROCEEDING,
    (S.TRYING, "send_final"): S.COMPLETED,
    (S.PROCEEDING, "request"): S.PROCEEDING,
    (S.PROCEEDING, "send_1xx"): S.PROCEEDING,
    (S.PROCEEDING, "send_final"): S.COMPLETED,
    (S.COMPLETED, "request"): S.COMPLETED,
    (S.COMPLETED, "J"): S.TERMINATED,
}

CLIENT_TIMERS = ("A", "B", "D", "E", "F", "K", "M")
WAITING = frozenset({S.CALLING, S.TRYING, S.PROCEEDING})  # no final response yet
SERVER_TIMERS = ("G", "H", "I", "J", "L")


class Host(Protocol):
    """What a transaction needs from the stack."""

    config: StackConfig
    timers: Timers

    def transmit(self, data: bytes, remote: Address, owner: Owner | None) -> None: ...

    def count(self, name: str) -> None: ...

    def transaction_terminated(self, txn: ClientTransaction | ServerTransaction) -> None: ...


class ClientUser(Protocol):
    """The transaction user of a client transaction (a registration, a call, a BYE)."""

    def on_response(self, txn: ClientTransaction, msg: SipMessage, now: float) -> None:
        """Every response the TU must see: provisionals, the first final, 2xx retransmissions."""

    def on_timeout(self, txn: ClientTransaction, now: float) -> None:
        """Timer B or F fired: no final response (report as 408, RFC 3261 8.1.3.1)."""

    def on_transport_error(self, txn: ClientTransaction, reason: str, now: float) -> None:
        """The transport failed: no final response will come (report as 503,
        RFC 3261 8.1.3.1)."""


class _NoUser:
    """The TU of a terminated client transaction: nothing more reaches the call.

    A terminated transaction lets go of its TU, which usually holds it back
    (a call keeps its INVITE transaction): no reference cycle is left, so
    reference counting frees both once the stack forgets them.
    """

    def on_response(self, txn: ClientTransaction, msg: SipMessage, now: float) -> None:
        """Ignored."""

    def on_timeout(self, txn: ClientTransaction, now: float) -> None:
        """Ignored."""

    def on_transport_error(self, txn: ClientTransaction, reason: str, now: float) -> None:
        """Ignored."""


_NO_USER: Final = _NoUser()


def _response_kind(status: int, invite: bool) -> str:
    if status < 200:
        return "1xx"
    if status < 300 and invite:
        return "2xx"
    return "final"


class ClientTransaction:
    """Sends one request and matches its responses (key: branch + CSeq method).

    Created by the stack (``Core.start_client``), which has already rendered
    ``data``; it is sent at once. Responses arrive via :meth:`receive_response`.
    """

    __slots__ = (
        "_interval",
        "_table",
        "branch",
        "data",
        "host",
        "invite",
        "key",
        "owner",
        "remote",
        "spec",
        "state",
        "tu",
    )

    def __init__(
        self,
        host: Host,
        tu: ClientUser,
        spec: RequestSpec,
        branch: str,
        data: bytes,
        owner: Owner | None,
        now: float,
    ) -> None:
        self.host = host
        self.tu = tu
        self.spec = spec
        self.branch = branch
        self.data = data
        self.remote = spec.destination
        self.owner = owner
        self.invite = spec.method == "INVITE"
        self.key = (branch, spec.method)
        self._table = INVITE_CLIENT if self.invite else NON_INVITE_CLIENT
        self.state = S.CALLING if self.invite else S.TRYING
        t1 = host.config.timers.t1
        self._interval = t1
        host.transmit(data, self.remote, owner)
        if not host.config.reliable:  # RFC 3261 17.1.1.2 / 17.1.2.2: Timer A / E only for UDP
            host.timers.set(self, "A" if self.invite else "E", now + t1)
        host.timers.set(self, "B" if self.invite else "F", now + 64 * t1)

    def receive_response(self, msg: SipMessage, now: float) -> None:
        """A response whose top Via branch and CSeq method match this transaction."""
        kind = _response_kind(msg.status, self.invite)
        old = self.state
        new = self._table.get((old, kind))
        if new is None:
            self.host.count("absorbed_responses")
            return
        self.state = new
        self._ON_RESPONSE[kind](self, old, msg, now)

    def on_timer(self, name: str, now: float) -> None:
        """Heap callback for timers A, B, D, E, F, K, M."""
        new = self._table.get((self.state, name))
        if new is None:
            return
        old = self.state
        self.state = new
        self._ON_TIMER[name](self, old, now)

    @property
    def waiting(self) -> bool:
        """True until a final response arrives (Calling/Trying/Proceeding)."""
        return self.state in WAITING

    def transport_error(self, reason: str, now: float) -> None:
        """RFC 3261 8.1.3.1 / 17.1.4: the transport reported a failure while we wait
        for a final response: terminate at once and inform the TU (503), as if Timer
        B/F had fired, instead of retransmitting into the void for 32 s."""
        if not self.waiting:
            return
        self.host.count("transport_failures")
        tu = self.tu
        self._terminate()
        tu.on_transport_error(self, reason, now)

    # -- responses ------------------------------------------------------------------
    def _on_provisional(self, old: TxnState, msg: SipMessage, now: float) -> None:
        if self.invite:
            # RFC 3261 17.1.1.2: in Proceeding, no more retransmissions, no Timer B.
            self.host.timers.cancel_all(self, ("A", "B"))
        self.tu.on_response(self, msg, now)

    def _on_2xx(self, old: TxnState, msg: SipMessage, now: float) -> None:
        if old is not S.ACCEPTED:
            # RFC 6026 8.4: 2xx -> Accepted, Timer M = 64*T1.
            self.host.timers.cancel_all(self, ("A", "B"))
            self.host.timers.set(self, "M", now + 64 * self.host.config.timers.t1)
        self.tu.on_response(self, msg, now)

    def _on_final(self, old: TxnState, msg: SipMessage, now: float) -> None:
        host = self.host
        if self.invite:
            # RFC 3261 17.1.1.3: ACK every non-2xx final, retransmissions included.
            host.transmit(
                self.spec.render_ack(host.config, self.branch, msg.headers["to"][0]),
                self.remote,
                self.owner,
            )
        if old is S.COMPLETED:
            host.count("absorbed_responses")
            return
        host.timers.cancel_all(self, ("A", "B", "E", "F"))
        wait = 0.0 if host.config.reliable else (32.0 if self.invite else host.config.timers.t4)
        self.tu.on_response(self, msg, now)
        if wait:  # RFC 3261 17.1.1.2 Timer D >= 32 s / 17.1.2.2 Timer K = T4 (UDP only)
            host.timers.set(self, "D" if self.invite else "K", now + wait)
        else:
            self._terminate()

    _ON_RESPONSE: ClassVar[
        dict[str, Callable[[ClientTransaction, TxnState, SipMessage, float], None]]
    ] = {
        "1xx": _on_provisional,
        "2xx": _on_2xx,
        "final": _on_final,
    }

    # -- timers ---------------------------------------------------------------------
    def _retransmit_a(self, old: TxnState, now: float) -> None:
        # RFC 3261 17.1.1.2: Timer A doubles each time (no cap for INVITE).
        self.host.count("retransmissions")
        self.host.transmit(self.data, self.remote, self.owner)
        self._interval *= 2
        self.host.timers.set(self, "A", now + self._interval)

    def _retransmit_e(self, old: TxnState, now: float) -> None:
        # RFC 3261 17.1.2.2: Timer E doubles up to T2 in Trying, is T2 in Proceeding.
        t2 = self.host.config.timers.t2
        self.host.count("retransmissions")
        self.host.transmit(self.data, self.remote, self.owner)
        self._interval = min(2 * self._interval, t2) if old is S.TRYING else t2
        self.host.timers.set(self, "E", now + self._interval)

    def _timeout(self, old: TxnState, now: float) -> None:
        # RFC 3261 17.1.1.2 Timer B / 17.1.2.2 Timer F: inform the TU, terminate.
        self.host.count("transaction_timeouts")
        tu = self.tu
        self._terminate()
        tu.on_timeout(self, now)

    def _end(self, old: TxnState, now: float) -> None:
        self._terminate()

    _ON_TIMER: ClassVar[dict[str, Callable[[ClientTransaction, TxnState, float], None]]] = {
        "A": _retransmit_a,
        "E": _retransmit_e,
        "B": _timeout,
        "F": _timeout,
        "D": _end,
        "K": _end,
        "M": _end,
    }

    def _terminate(self) -> None:
        self.state = S.TERMINATED
        self.tu = _NO_USER  # no cycle with the call that holds this transaction
        self.host.timers.cancel_all(self, CLIENT_TIMERS)
        self.host.transaction_terminated(self)


class ServerTransaction:
    """Absorbs retransmitted requests and re-sends the last response.

    Created by the stack for each new request (not ACK). The TU answers
    through :meth:`send_response`; requests that match the key go to
    :meth:`receive_request`.
    """

    __slots__ = (
        "_interval",
        "_table",
        "host",
        "invite",
        "key",
        "last_response",
        "owner",
        "remote",
        "request",
        "state",
        "tu",
    )

    def __init__(
        self,
        host: Host,
        key: tuple[str, ...],
        request: SipMessage,
        remote: Address,
        owner: Owner | None,
    ) -> None:
        self.host = host
        self.key = key
        self.request = request
        self.remote = remote  # where responses go (RFC 3261 18.2.2 / RFC 3581)
        self.owner = owner
        self.invite = request.method == "INVITE"
        self._table = INVITE_SERVER if self.invite else NON_INVITE_SERVER
        self.state = S.PROCEEDING if self.invite else S.TRYING
        self.last_response: bytes | None = None
        self._interval = host.config.timers.t1
        self.tu: object | None = None  # the call an INVITE server transaction belongs to

    def receive_request(self, msg: SipMessage, now: float) -> None:
        """A retransmission of the request, or the ACK of a non-2xx final (INVITE)."""
        kind = "ack" if msg.method == "ACK" else "request"
        new = self._table.get((self.state, kind))
        if new is None:
            self.host.count("absorbed_requests")
            return
        old = self.state
        self.state = new
        if kind == "ack":
            self._on_ack(now)
            return
        self.host.count("request_retransmissions")
        # RFC 3261 17.2.1 / 17.2.2: resend the last provisional or final response;
        # RFC 6026 7.1: in Accepted, absorb (the UAS core retransmits its 2xx).
        if self.last_response is not None and old is not S.ACCEPTED:
            self.host.transmit(self.last_response, self.remote, self.owner)

    def send_response(self, data: bytes, status: int, now: float) -> None:
        """Send a response the TU built. Raises InvalidState if the state forbids it
        (e.g. a second final response)."""
        kind = "send_" + _response_kind(status, self.invite)
        old = self.state
        new = self._table.get((old, kind))
        if new is None:
            raise InvalidState(
                f"cannot send {status} in {self.request.method} server transaction state "
                f"{old.value}: a final response was already sent"
            )
        self.state = new
        self.last_response = data
        self.host.transmit(data, self.remote, self.owner)
        if new is old:
            return
        self._ENTER[new](self, now)

    def on_timer(self, name: str, now: float) -> None:
        """Heap callback for timers G, H, I, J, L."""
        new = self._table.get((self.state, name))
        if new is None:
            return
        self.state = new
        if name == "G":
            # RFC 3261 17.2.1: Timer G doubles up to T2, resending the final response.
            assert self.last_response is not None
            self.host.count("retransmissions")
            self.host.transmit(self.last_response, self.remote, self.owner)
            self._interval = min(2 * self._interval, self.host.config.timers.t2)
            self.host.timers.set(self, "G", now + self._interval)
            return
        if name == "H":
            self.host.count("ack_timeouts")  # RFC 3261 17.2.1: no ACK for a non-2xx final
        self._terminate()

    def _on_ack(self, now: float) -> None:
        # RFC 3261 17.2.1: Confirmed absorbs further ACKs for Timer I (T4 UDP, 0 reliable).
        self.host.timers.cancel_all(self, ("G", "H"))
        self._wait("I", 0.0 if self.host.config.reliable else self.host.config.timers.t4, now)

    def _enter_completed(self, now: float) -> None:
        host = self.host
        t1 = host.config.timers.t1
        if self.invite:
            if not host.config.reliable:
                host.timers.set(self, "G", now + t1)
            host.timers.set(self, "H", now + 64 * t1)
        else:  # RFC 3261 17.2.2: Timer J = 64*T1 for UDP, 0 for reliable
            self._wait("J", 0.0 if host.config.reliable else 64 * t1, now)

    def _enter_accepted(self, now: float) -> None:
        # RFC 6026 8.7: Timer L = 64*T1 absorbs INVITE retransmissions after a 2xx.
        self.host.timers.set(self, "L", now + 64 * self.host.config.timers.t1)

    def _enter_proceeding(self, now: float) -> None:
        pass

    _ENTER: ClassVar[dict[TxnState, Callable[[ServerTransaction, float], None]]] = {
        S.COMPLETED: _enter_completed,
        S.ACCEPTED: _enter_accepted,
        S.PROCEEDING: _enter_proceeding,
    }

    def _wait(self, name: str, delay: float, now: float) -> None:
        if delay:
            self.host.timers.set(self, name, now + delay)
        else:
            self._terminate()

    def _terminate(self) -> None:
        self.state = S.TERMINATED
        self.tu = None  # no cycle with the call that holds this transaction
        self.host.timers.cancel_all(self, SERVER_TIMERS)
        self.host.transaction_terminated(self)
