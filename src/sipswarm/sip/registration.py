"""Registration flow, RFC 3261 §10: register, refresh, unregister.

Theory of operation
-------------------
One :class:`Registration` per owner keeps Call-ID and From tag for its whole
life and increments CSeq per REGISTER (10.2.4). Each REGISTER runs through
the digest flow (401/407 answered once, stale nonces retried). On a 2xx the
granted expiry is taken from our Contact's ``expires`` parameter, else the
``Expires`` header, else the requested value (10.2.4), and a refresh is
scheduled at ``max(granted / 2, granted - REFRESH_MARGIN)`` seconds after the
REGISTER was sent. A 423 is retried once with the registrar's Min-Expires
(10.3 step 7). ``unregister`` sends the same binding with ``Expires: 0``.
Refreshes and the unregister carry credentials for the last challenge up front
(:class:`~sipswarm.sip.digest.DigestCache`: same nonce, nc + 1), so they take
one round trip; a 401 to them (stale nonce) is answered as usual.

Events: RegistrationSucceeded / RegistrationFailed for each REGISTER outcome
(initial and refresh), Unregistered when the Expires: 0 REGISTER finishes.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from sipswarm.errors import InvalidState
from sipswarm.sip.core import Authenticator
from sipswarm.sip.digest import DigestCache
from sipswarm.sip.events import RegistrationFailed, RegistrationSucceeded, Unregistered
from sipswarm.sip.request import ALLOW, RequestSpec

if TYPE_CHECKING:
    from sipswarm.sip.config import Account
    from sipswarm.sip.core import Core, Endpoint
    from sipswarm.sip.message import SipMessage
    from sipswarm.sip.transaction import ClientTransaction

__all__ = ["REFRESH_MARGIN", "RegState", "Registration"]

REFRESH_MARGIN = 30.0  # seconds before expiry at which long registrations refresh
MIN_REFRESH = 1.0


class RegState(Enum):
    # Members are singletons: identity hashing is C-level, Enum.__hash__ is Python (hot
    # in the transition tables).
    __hash__ = object.__hash__

    REGISTERING = "registering"
    REGISTERED = "registered"
    UNREGISTERING = "unregistering"
    UNREGISTERED = "unregistered"
    FAILED = "failed"


R = RegState
TRANSITIONS: dict[RegState, frozenset[RegState]] = {
    R.REGISTERING: frozenset({R.REGISTERED, R.FAILED, R.UNREGISTERING}),
    R.REGISTERED: frozenset({R.REGISTERING, R.UNREGISTERING}),
    R.FAILED: frozenset({R.REGISTERING, R.UNREGISTERING}),
    R.UNREGISTERING: frozenset({R.UNREGISTERED}),
    R.UNREGISTERED: frozenset({R.REGISTERING}),
}


class Registration:
    """Binding of one owner's contact at one registrar. Created by ``SipStack.register``."""

    def __init__(
        self,
        core: Core,
        endpoint: Endpoint,
        account: Account,
        registrar: str,
        destination: tuple[str, int],
        routes: list[str],
        expires: int,
    ) -> None:
        self.core = core
        self.endpoint = endpoint
        self.owner = endpoint.owner
        self.account = account
        self.registrar = registrar
        self.destination = destination
        self.routes = routes
        self.expires = expires
        self.call_id = core.ids.call_id()
        self.from_tag = core.ids.tag()
        self.cseq = 0
        self.state = R.UNREGISTERED
        self.granted = 0
        self.received: str | None = None
        self.rport: int | None = None
        self._txn: ClientTransaction | None = None
        self._auth: Authenticator | None = None
        self._started = 0.0
        self._refresh = False
        self._retried_423 = False
        self.digest = DigestCache()  # pre-emptive credentials for refreshes/unregister

    def go(self, new: RegState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise InvalidState(
                f"registration of {self.owner}: cannot go from {self.state.value} to {new.value}"
            )
        self.state = new

    def start(self, now: float, refresh: bool = False) -> None:
        """Send a REGISTER with the configured expiry (initial or refresh)."""
        self.go(R.REGISTERING)
        self._refresh = refresh
        self._retried_423 = False
        self._send(self.expires, now)

    def stop(self, now: float) -> None:
        """Send REGISTER with Expires: 0 for our contact (RFC 3261 10.2.2)."""
        self.go(R.UNREGISTERING)
        self.core.timers.cancel(self, "refresh")
        self._send(0, now)

    def _send(self, expires: int, now: float) -> None:
        self.cseq += 1
        spec = RequestSpec(
            "REGISTER",
            self.registrar,
            self.account.name_addr(self.from_tag),
            self.account.name_addr(),
            self.call_id,
            self.cseq,
            self.destination,
            contact=self.endpoint.contact,
            routes=self.routes,
            extra=f"Expires: {expires}\r\nAllow: {ALLOW}\r\n",
        )
        self._auth = Authenticator(self.core, self.account, spec, self.digest)
        self._started = now
        self._transmit(*self._auth.first, now)

    def _transmit(self, spec: RequestSpec, auth: str, now: float) -> None:
        self.cseq = spec.cseq
        self._txn = self.core.start_client(self, spec, self.owner, now, auth)

    # -- transaction user -----------------------------------------------------------
    def on_response(self, txn: ClientTransaction, msg: SipMessage, now: float) -> None:
        """Final responses of the current REGISTER drive the flow; others are ignored."""
        if txn is not self._txn or msg.status < 200:
            return
        if msg.status in (401, 407) and self._auth is not None:
            retry = self._auth.retry(msg)
            if retry is not None:
                self._transmit(*retry, now)
                return
        if msg.status == 423 and self.state is R.REGISTERING and self._retry_423(msg, now):
            return
        self._finish(msg.status, msg.reason, msg, now)

    def on_timeout(self, txn: ClientTransaction, now: float) -> None:
        """Timer F: report 408 (RFC 3261 8.1.3.1)."""
        if txn is self._txn:
            self._finish(408, "Request Timeout", None, now)

    def on_transport_error(self, txn: ClientTransaction, reason: str, now: float) -> None:
        """The transport failed: report 503 (RFC 3261 8.1.3.1)."""
        if txn is self._txn:
            self._finish(503, f"transport error: {reason}", None, now)

    def on_timer(self, name: str, now: float) -> None:
        """The refresh timer."""
        if name == "refresh" and self.state is R.REGISTERED:
            self.start(now, refresh=True)

    def _retry_423(self, msg: SipMessage, now: float) -> bool:
        minimum = msg.header("min-expires")
        if self._retried_423 or minimum is None or not minimum.isdigit():
            return False
        self._retried_423 = True
        self.expires = max(self.expires, int(minimum))
        self._send(self.expires, now)
        self._retried_423 = True
        return True

    def _finish(self, status: int, reason: str, msg: SipMessage | None, now: float) -> None:
        self._txn = None
        self._auth = None
        ms = (now - self._started) * 1000.0
        if self.state is R.UNREGISTERING:
            self.go(R.UNREGISTERED)
            self.core.emit(Unregistered(self.owner, status, reason))
            return
        if 200 <= status < 300 and msg is not None:
            self.granted = self._granted(msg)
            self._record_via(msg)
            self.go(R.REGISTERED)
            delay = max(self.granted / 2, self.granted - REFRESH_MARGIN, MIN_REFRESH)
            if self.granted > 0:
                self.core.timers.set(self, "refresh", self._started + delay)
            self.core.emit(
                RegistrationSucceeded(
                    self.owner,
                    status,
                    self.granted,
                    ms,
                    self._refresh,
                    self.received,
                    self.rport,
                )
            )
            return
        self.digest.clear()  # whatever was cached did not lead to a binding
        self.go(R.FAILED)
        self.core.emit(RegistrationFailed(self.owner, status, reason, ms, self._refresh))

    def _granted(self, msg: SipMessage) -> int:
        """RFC 3261 10.2.4: our Contact's expires param, else Expires, else requested."""
        user = self.endpoint.contact_user
        sent_by = self.core.config.sent_by
        try:
            contacts = msg.addresses("contact")
        except ValueError:
            contacts = []
        for contact in contacts:
            uri = contact.uri
            if uri.user == user and f"{uri.host}:{uri.port or 5060}" == sent_by:
                value = contact.parameters.get("expires")
                if value and value.isdigit():
                    return int(value)
        header = msg.header("expires")
        if header and header.isdigit():
            return int(header)
        return self.expires

    def _record_via(self, msg: SipMessage) -> None:
        # RFC 3581: what the registrar saw as our source address (NAT handling is
        # out of scope; the engine may report it).
        params = msg.top_via.params
        self.received = params.get("received")
        rport = params.get("rport")
        self.rport = int(rport) if rport and rport.isdigit() else None
