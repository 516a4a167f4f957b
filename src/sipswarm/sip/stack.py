"""The sans-I/O SIP user agent stack: one per transport socket, thousands of endpoints.

Theory of operation
-------------------
A :class:`SipStack` owns no socket and no clock. The engine feeds it and
drains it after every input (STYLE.md rules 2 and 3)::

    stack = SipStack(StackConfig("127.0.0.1", 5070), RandomIdFactory(random.Random()))
    stack.register("ep1", account, "sip:127.0.0.1", 300, now)        # actions...
    stack.receive_message(datagram, ("127.0.0.1", 5060), now)         # ...or input
    stack.handle_timer(now)                                            # ...or time
    for data, addr in stack.messages_to_send(): sock.sendto(data, addr)
    for event in stack.events_received(): endpoint_fsm(event)          # event.owner
    for record in stack.traces_to_send(): ...                          # traced owners only
    loop_timer.arm(stack.get_timer())                                  # absolute, or None

Inside, messages are parsed and bounded by :mod:`.message` (bad input is
counted, dropped or answered 400, never raised), matched to transactions
(:mod:`.transaction`, RFC 3261 §17) by dict lookups, and handed to the flow
that owns them:

* responses: client transaction by (top Via branch, CSeq method);
* requests: server transaction by (branch, sent-by, method) first, so
  retransmissions are absorbed; then ACK for a 2xx and in-dialog requests by
  (Call-ID, To tag) to the call (unknown dialog: 481, §12.2.2); CANCEL by its
  INVITE's transaction (none: 481, §9.2); a new INVITE by Request-URI user to
  the owner that listens on it (none: 404); OPTIONS answered 200.

Every deadline of every transaction, call and registration sits in one heap
(:mod:`.timers`): per message and per timer the cost is O(log n), not O(n).

Flows: :mod:`.registration` (REGISTER/refresh/unregister), :mod:`.uac`
(outgoing calls, CANCEL), :mod:`.uas` (incoming calls), :mod:`.session`
(BYE, in-dialog requests, 2xx retransmission), all authenticating through
:mod:`.digest`. Events are in :mod:`.events`.

Local actions raise :class:`~sipswarm.errors.InvalidState` when the call or
registration state does not allow them, and
:class:`~sipswarm.errors.ConfigError` for unusable arguments (e.g. a host name
where an address is needed: DNS belongs to the engine, pass ``destination``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from sipmessage import URI

from sipswarm.errors import ConfigError, InvalidState
from sipswarm.sip.call import Call, CallState
from sipswarm.sip.config import Account, StackConfig
from sipswarm.sip.core import Core, Endpoint
from sipswarm.sip.events import Event, IncomingCall, MessageDropped, Owner, TraceRecord
from sipswarm.sip.fastparse import parse_host_port, sipmessage_parse
from sipswarm.sip.ids import BRANCH_MAGIC, IdFactory
from sipswarm.sip.message import (
    ParseFailure,
    SipMessage,
    build_response_from_headers,
    parse_message,
)
from sipswarm.sip.registration import Registration, RegState
from sipswarm.sip.request import ACCEPT, ALLOW, RequestSpec, uri_destination
from sipswarm.sip.session import Session
from sipswarm.sip.transaction import ServerTransaction
from sipswarm.sip.uac import UacCall
from sipswarm.sip.uas import REASONS, UasCall

__all__ = ["SipStack"]

Address = tuple[str, int]

# RFC 3261 8.2.1: known methods we do not serve get 405, unknown ones 501.
KNOWN_METHODS = frozenset(
    {"REGISTER", "SUBSCRIBE", "NOTIFY", "MESSAGE", "REFER", "PRACK", "PUBLISH"}
)
DIALOG_ONLY = frozenset({"BYE", "INFO", "UPDATE", "PRACK"})
ANY_USER = "\x00any"  # listeners key of listen_any (no SIP user can contain NUL)


class SipStack:
    """One SIP transport's worth of user agents. See the module docstring."""

    def __init__(self, config: StackConfig, ids: IdFactory) -> None:
        self.config = config
        self._core = Core(config, ids)
        self._data = b""
        self._remote: Address = ("", 0)

    # -- outputs --------------------------------------------------------------------
    @property
    def counters(self) -> Counter[str]:
        """Cumulative counts: messages_received/sent, malformed, dropped_*,
        retransmissions, request_retransmissions, absorbed_*, transaction_timeouts..."""
        return self._core.counters

    def messages_to_send(self) -> list[tuple[bytes, Address]]:
        """Datagrams/framed messages to transmit, in order; the list is handed over."""
        out, self._core.out = self._core.out, []
        return out

    def events_received(self) -> list[Event]:
        """Events since the last call, in order; the list is handed over."""
        events, self._core.events = self._core.events, []
        return events

    def traces_to_send(self) -> list[TraceRecord]:
        """Messages sent/received for traced owners (see :meth:`set_trace`)."""
        traces, self._core.traces = self._core.traces, []
        return traces

    def get_timer(self) -> float | None:
        """Absolute time of the earliest deadline, or None. Call :meth:`handle_timer` then."""
        return self._core.timers.next_deadline()

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now`` (retransmissions, timeouts, refreshes)."""
        self._core.now = now
        self._core.timers.fire_due(now)

    # -- owners ---------------------------------------------------------------------
    def listen(self, owner: Owner, contact_user: str) -> str:
        """Route new INVITEs whose Request-URI user is ``contact_user`` to ``owner``;
        returns the owner's Contact URI (``register`` does this implicitly)."""
        ep = self._core.endpoint(owner, contact_user)
        self._listen(ep)
        return ep.contact[1:-1]

    def listen_any(self, owner: Owner) -> None:
        """Also route new INVITEs for any Request-URI user nobody listens on to ``owner``
        (a service answering every call, e.g. ``sipswarm answer``); ``listen`` first."""
        self._core.endpoint(owner)
        self._core.listeners[ANY_USER] = owner

    def adopt(self, call: Call, owner: Owner, contact_user: str) -> None:
        """Hand an incoming ``call`` to another ``owner`` (created with ``contact_user``):
        its later events go there. A service gives each call its own endpoint this way."""
        self._core.endpoint(owner, contact_user)
        call.owner = owner

    def contact_uri(self, owner: Owner) -> str:
        """The Contact URI at which ``owner`` can be called (PROTOCOL.md ``contact``)."""
        ep = self._core.endpoints.get(owner)
        if ep is None:
            raise InvalidState(f"owner {owner!r} has no endpoint: call listen or register first")
        return ep.contact[1:-1]

    def set_trace(self, owner: Owner, enabled: bool = True) -> None:
        """Record every message of ``owner`` for :meth:`traces_to_send`."""
        if enabled:
            self._core.traced.add(owner)
        else:
            self._core.traced.discard(owner)

    def forget(self, owner: Owner) -> None:
        """Drop everything kept for ``owner`` once it is closed (no more events for it)."""
        ep = self._core.endpoints.pop(owner, None)
        self._core.traced.discard(owner)
        self._core.manual_reinvite.discard(owner)
        if ep is None:
            return
        for user in (ep.contact_user, ANY_USER):
            if self._core.listeners.get(user) == owner:
                del self._core.listeners[user]
        if ep.registration is not None:
            self._core.timers.cancel(ep.registration, "refresh")
            ep.registration = None  # it points back at ep: no cycle left for the GC

    def _listen(self, ep: Endpoint) -> None:
        current = self._core.listeners.setdefault(ep.contact_user, ep.owner)
        if current != ep.owner:
            raise InvalidState(
                f"contact user {ep.contact_user!r} already belongs to owner {current!r}: "
                "pass a distinct contact_user"
            )

    # -- registration actions -----------------------------------------------------------
    def register(
        self,
        owner: Owner,
        account: Account,
        registrar: str | None,
        expires: int,
        now: float,
        *,
        destination: Address | None = None,
        route: str | None = None,
        contact_user: str | None = None,
    ) -> Registration:
        """REGISTER ``owner``'s contact for ``account`` at ``registrar`` (a SIP URI,
        default ``sip:<account.domain>``); refreshes follow by themselves. Outcome:
        RegistrationSucceeded / RegistrationFailed. ``route`` is an outbound proxy URI
        (preloaded Route, loose routing); ``destination`` overrides where it is sent."""
        core = self._core
        core.now = now
        if expires < 0:
            raise ConfigError(f"registrar.expires_s must be >= 0, got {expires}")
        ep = core.endpoint(owner, contact_user or account.username)
        self._listen(ep)
        reg = ep.registration
        if reg is not None and reg.state not in (RegState.UNREGISTERED, RegState.FAILED):
            raise InvalidState(f"owner {owner!r} is already {reg.state.value}")
        ruri = registrar or f"sip:{account.domain}"
        routes = [_loose_route(route)] if route else []
        dest = destination or uri_destination(route or ruri, self.config.transport)
        reg = Registration(core, ep, account, ruri, dest, routes, expires)
        ep.registration = reg
        reg.start(now)
        return reg

    def unregister(self, owner: Owner, now: float) -> None:
        """REGISTER with Expires: 0 for ``owner``'s contact. Outcome: Unregistered."""
        self._core.now = now
        ep = self._core.endpoints.get(owner)
        if ep is None or ep.registration is None:
            raise InvalidState(f"owner {owner!r} never registered")
        ep.registration.stop(now)

    # -- call actions -------------------------------------------------------------------
    def invite(
        self,
        owner: Owner,
        account: Account,
        target_uri: str,
        sdp: bytes,
        now: float,
        *,
        route: str | None = None,
        ring_timeout: float | None = None,
        destination: Address | None = None,
        contact_user: str | None = None,
    ) -> Call:
        """Call ``target_uri`` with SDP offer ``sdp``. Events: CallProgress*, then
        CallAnswered (then CallEnded/CallTeardownFailed) or CallFailed. With
        ``ring_timeout`` (s), an unanswered call is cancelled (487 -> CallFailed)."""
        core = self._core
        core.now = now
        try:
            parse_host_port(target_uri)  # fast path for the usual forms, sipmessage otherwise
        except ValueError as exc:
            raise ConfigError(f"call.target {target_uri!r} is not a SIP URI") from exc
        ep = core.endpoint(owner, contact_user or account.username)
        self._listen(ep)
        routes = [_loose_route(route)] if route else []
        dest = destination or uri_destination(route or target_uri, self.config.transport)
        tag = core.ids.tag()
        spec = RequestSpec(
            "INVITE",
            target_uri,
            account.name_addr(tag),
            f"<{target_uri}>",
            core.ids.call_id(),
            1,
            dest,
            contact=ep.contact,
            routes=routes,
            extra=f"Allow: {ALLOW}\r\n",
            body=sdp,
        )
        call = UacCall.create(
            core,
            owner=owner,
            direction="out",
            call_id=spec.call_id,
            local_tag=tag,
            remote=dest,
            account=account,
        )
        call.ring_timeout = ring_timeout
        call.start(spec, now)
        return call

    def ring(self, call: Call, now: float) -> None:
        """UAS: send 180 Ringing."""
        self._core.now = now
        _uas(call).ring(now)

    def answer(self, call: Call, sdp: bytes, now: float) -> None:
        """UAS: send 200 OK with SDP answer ``sdp``; CallConfirmed follows on ACK."""
        self._core.now = now
        _uas(call).answer(sdp, now)

    def reject(self, call: Call, code: int, now: float, reason: str | None = None) -> None:
        """UAS: final 3xx-6xx (486 busy, 488 negotiation failed, 603 decline...)."""
        self._core.now = now
        _uas(call).reject(code, now, reason)

    def cancel(self, call: Call, now: float) -> None:
        """UAC: CANCEL the ringing call (sent once a provisional has arrived)."""
        self._core.now = now
        if not isinstance(call, UacCall):
            raise InvalidState(f"call {call.call_id} is incoming: reject it instead of cancel")
        call.cancel(now)

    def bye(self, call: Call, now: float) -> None:
        """Hang up an established call; CallEnded or CallTeardownFailed follows."""
        self._core.now = now
        _session(call).bye(now)

    # -- re-INVITE (hold/resume) -------------------------------------------------------
    def reinvite(self, call: Call, sdp: bytes, now: float) -> None:
        """Re-INVITE an established call with offer ``sdp`` (hold: a=sendonly, resume:
        a=sendrecv). Events: ReInviteAccepted(sdp_answer) or ReInviteFailed(code); a
        491 (glare) is retried after RFC 3261 14.1's random back-off by itself."""
        self._core.now = now
        _session(call).reinvite(sdp, now)

    def take_reinvites(self, owner: Owner, enabled: bool = True) -> None:
        """``owner`` answers incoming re-INVITEs itself: IncomingReInvite, then
        ``answer_reinvite``/``reject_reinvite``. Otherwise (the default) the stack
        answers 200 with the call's current SDP and emits ReInviteAnswered."""
        if enabled:
            self._core.manual_reinvite.add(owner)
        else:
            self._core.manual_reinvite.discard(owner)

    def answer_reinvite(self, call: Call, sdp: bytes, now: float) -> None:
        """200 OK with ``sdp`` to the re-INVITE of an IncomingReInvite event."""
        self._core.now = now
        _session(call).answer_reinvite(sdp, now)

    def reject_reinvite(self, call: Call, code: int, now: float, reason: str | None = None) -> None:
        """4xx-6xx to the re-INVITE of an IncomingReInvite event (e.g. 488)."""
        self._core.now = now
        _session(call).reject_reinvite(code, now, reason)

    def hangup(self, call: Call, now: float) -> None:
        """Whatever ends the call now: CANCEL, 603, BYE, or nothing if already ending."""
        action = _HANGUP.get(call.state)
        if action is not None:
            action(self, call, now)

    def transport_error(self, remote: Address, now: float, reason: str = "") -> int:
        """The transport to ``remote`` failed (ICMP unreachable, connection refused or
        reset, TLS failure): every client transaction still waiting for a final
        response from ``remote`` ends at once as if Timer B/F fired, with 503
        (RFC 3261 8.1.3.1): RegistrationFailed/Unregistered, CallFailed,
        CallTeardownFailed or ReInviteFailed with code 503. Returns how many ended."""
        core = self._core
        core.now = now
        core.count("transport_errors")
        text = reason or "unreachable"
        failed = [t for t in core.client_txns.values() if t.remote == remote and t.waiting]
        for txn in failed:
            txn.transport_error(text, now)
        return len(failed)

    # -- input ----------------------------------------------------------------------
    def receive_message(self, data: bytes, remote: Address, now: float) -> None:
        """One datagram or one framed stream message from ``remote``. Never raises."""
        core = self._core
        core.now = now
        core.counters["messages_received"] += 1
        self._data = data
        self._remote = remote
        try:
            self._receive(data, remote, now)
        except Exception as exc:
            core.count("internal_errors")
            core.emit(MessageDropped(f"internal error on input: {exc!r}", remote))

    def _receive(self, data: bytes, remote: Address, now: float) -> None:
        # RFC 5626 4.4.1 CRLF keepalive (only CR/LF). A message starts with a letter:
        # the copy that strip makes is only paid when the first byte is CR or LF.
        if data[:1] in b"\r\n" and not data.strip(b"\r\n"):
            self._core.count("keepalives")
            return
        msg = parse_message(data)
        if isinstance(msg, ParseFailure):
            self._refuse(msg, remote)
        elif msg.is_request:
            self._receive_request(msg, remote, now)
        else:
            self._receive_response(msg, remote, now)

    def _drop(self, counter: str, reason: str, remote: Address, owner: Owner | None = None) -> None:
        self._core.count(counter)
        self._core.emit(MessageDropped(reason, remote, owner))

    def _seen(self, owner: Owner | None) -> None:
        if self._core.traced and owner is not None:
            self._core.trace_in(self._data, self._remote, owner)

    def _refuse(self, failure: ParseFailure, remote: Address) -> None:
        self._drop("malformed", failure.reason, remote)
        if failure.answerable and failure.status:
            phrase = "Version Not Supported" if failure.status == 505 else "Bad Request"
            reason = f"{phrase} ({failure.reason})"[:200].replace("\r", " ").replace("\n", " ")
            self._core.transmit(
                build_response_from_headers(
                    failure.headers,
                    failure.status,
                    reason,
                    remote,
                    user_agent=self.config.user_agent,
                ),
                remote,
                None,
            )

    def _receive_response(self, msg: SipMessage, remote: Address, now: float) -> None:
        txn = self._core.client_txns.get((msg.branch, msg.method))
        if txn is None:
            self._drop("stray_responses", f"no transaction for {msg.status} {msg.method}", remote)
            return
        self._seen(txn.owner)
        txn.receive_response(msg, now)

    def _receive_request(self, msg: SipMessage, remote: Address, now: float) -> None:
        core = self._core
        key = _server_key(msg)
        txn = core.server_txns.get(key)
        if txn is not None:
            self._seen(txn.owner)
            txn.receive_request(msg, now)
            return
        if msg.method == "ACK":
            self._receive_ack(msg, remote, now)
            return
        dest = self._response_address(msg, remote)
        if msg.method == "CANCEL":
            self._receive_cancel(msg, key, dest, now)
        elif msg.to_tag is not None:
            self._receive_in_dialog(msg, key, dest, now)
        else:
            self._receive_new(msg, key, dest, now)

    def _response_address(self, msg: SipMessage, remote: Address) -> Address:
        # RFC 3261 18.2.2: over UDP, to the source IP ("received") and the Via port, or
        # the source port when the client asked for rport (RFC 3581 4); streams: back
        # on the connection the request came on.
        if self.config.reliable or "rport" in msg.top_via.params:
            return remote
        return remote[0], msg.top_via.port or 5060

    def _receive_ack(self, msg: SipMessage, remote: Address, now: float) -> None:
        call = self._core.calls.get((msg.call_id, msg.to_tag or ""))
        if not isinstance(call, Session):
            self._core.count("stray_acks")  # never answered (RFC 3261 17)
            return
        self._seen(call.owner)
        call.receive_ack(msg, now)

    def _receive_cancel(
        self, msg: SipMessage, key: tuple[str, ...], dest: Address, now: float
    ) -> None:
        core = self._core
        invite = core.server_txns.get((*key[:-1], "INVITE"))
        call = invite.tu if invite is not None else None
        owner = call.owner if isinstance(call, UasCall) else None
        self._seen(owner)
        txn = core.start_server(key, msg, dest, owner)
        if not isinstance(call, UasCall):
            core.respond(txn, 481, REASONS[481], now)  # RFC 3261 9.2
            return
        core.respond(txn, 200, "OK", now)
        call.remote_cancel(now)

    def _receive_in_dialog(
        self, msg: SipMessage, key: tuple[str, ...], dest: Address, now: float
    ) -> None:
        core = self._core
        call = core.calls.get((msg.call_id, msg.to_tag or ""))
        owner = call.owner if call is not None else None
        self._seen(owner)
        txn = core.start_server(key, msg, dest, owner)
        if self._unsupported(msg, txn, now):
            return
        if not isinstance(call, Session) or call.dialog is None:
            core.respond(txn, 481, REASONS[481], now)  # RFC 3261 12.2.2
            return
        call.receive_request(msg, txn, now)

    def _receive_new(
        self, msg: SipMessage, key: tuple[str, ...], dest: Address, now: float
    ) -> None:
        core = self._core
        user = msg.ruri_user
        owner = core.listeners.get(user) if user is not None else None
        if owner is None and msg.method == "INVITE":
            owner = core.listeners.get(ANY_USER)
        self._seen(owner)
        txn = core.start_server(key, msg, dest, owner)
        if msg.ruri_scheme not in ("sip", "sips"):
            core.respond(txn, 416, "Unsupported URI Scheme", now)  # RFC 3261 8.2.2.1
            return
        if self._unsupported(msg, txn, now):
            return
        handler = _NEW_REQUEST.get(msg.method)
        if handler is not None:
            handler(self, msg, txn, owner, now)
        elif msg.method in DIALOG_ONLY:
            core.respond(txn, 481, REASONS[481], now)
        elif msg.method in KNOWN_METHODS:
            core.respond(txn, 405, "Method Not Allowed", now, extra=f"Allow: {ALLOW}\r\n")
        else:
            core.respond(txn, 501, "Not Implemented", now, extra=f"Allow: {ALLOW}\r\n")

    def _unsupported(self, msg: SipMessage, txn: ServerTransaction, now: float) -> bool:
        # RFC 3261 8.2.2.3: we support no extensions; Require lists what we lack.
        required = [t.strip() for v in msg.header_values("require") for t in v.split(",")]
        required = [t for t in required if t]
        if not required:
            return False
        self._core.respond(
            txn, 420, "Bad Extension", now, extra=f"Unsupported: {', '.join(required)}\r\n"
        )
        return True

    def _new_invite(
        self, msg: SipMessage, txn: ServerTransaction, owner: Owner | None, now: float
    ) -> None:
        core = self._core
        if owner is None:
            core.respond(txn, 404, REASONS[404], now)
            return
        core.respond(txn, 100, "Trying", now)  # RFC 3261 17.2.1 / 8.2.6.1
        try:
            call = UasCall.from_invite(core, owner, msg, txn, now)
        except ValueError as exc:
            core.respond(txn, 400, f"Bad Request ({exc})"[:120], now)
            return
        txn.tu = call
        core.emit(IncomingCall(owner, call, msg.body, msg.headers["from"][0], txn.remote))

    def _options(
        self, msg: SipMessage, txn: ServerTransaction, owner: Owner | None, now: float
    ) -> None:
        # RFC 3261 11.2: capabilities, answered as for an INVITE (200, we are available).
        self._core.respond(txn, 200, "OK", now, extra=f"Allow: {ALLOW}\r\nAccept: {ACCEPT}\r\n")


_NEW_REQUEST: dict[
    str, Callable[[SipStack, SipMessage, ServerTransaction, Owner | None, float], None]
] = {
    "INVITE": SipStack._new_invite,
    "OPTIONS": SipStack._options,
}


def _hangup_cancel(stack: SipStack, call: Call, now: float) -> None:
    stack.cancel(call, now)


def _hangup_decline(stack: SipStack, call: Call, now: float) -> None:
    stack.reject(call, 603, now)


def _hangup_bye(stack: SipStack, call: Call, now: float) -> None:
    stack.bye(call, now)


_HANGUP: dict[CallState, Callable[[SipStack, Call, float], None]] = {
    CallState.CALLING: _hangup_cancel,
    CallState.PROCEEDING: _hangup_cancel,
    CallState.INCOMING: _hangup_decline,
    CallState.RINGING: _hangup_decline,
    CallState.ANSWERED: _hangup_bye,
    CallState.CONFIRMED: _hangup_bye,
}


def _session(call: Call) -> Session:
    if not isinstance(call, Session):
        raise InvalidState(f"call {call.call_id} does not belong to a stack")
    return call


def _uas(call: Call) -> UasCall:
    if not isinstance(call, UasCall):
        raise InvalidState(
            f"call {call.call_id} is outgoing: ring/answer/reject need an incoming call"
        )
    return call


def _loose_route(uri: str) -> str:
    """Preloaded Route for an outbound proxy (RFC 3261 8.1.2), loose routing."""
    text = uri.strip().strip("<>")
    try:
        sipmessage_parse(URI.parse, text)
    except ValueError as exc:
        raise ConfigError(f"registrar.outbound_proxy {uri!r} is not a SIP URI") from exc
    return f"<{text}>" if ";lr" in text else f"<{text};lr>"


def _server_key(msg: SipMessage) -> tuple[str, ...]:
    """RFC 3261 17.2.3: branch + sent-by + method (ACK matches its INVITE)."""
    via = msg.top_via
    method = "INVITE" if msg.method == "ACK" else msg.method
    branch = via.branch
    if branch.startswith(BRANCH_MAGIC):
        return (branch, via.host, str(via.port or ""), method)
    # RFC 2543 peers: Request-URI, From tag, Call-ID, CSeq number and top Via.
    sent_by = f"{via.host}:{via.port}"
    return ("2543", msg.uri, msg.from_tag or "", msg.call_id, str(msg.cseq), sent_by, method)
