"""Shared plumbing of one stack: output queues, transaction tables, indexes.

:class:`Core` is what transactions, registrations and calls talk to (the
``Host`` of :mod:`sipswarm.sip.transaction`); :class:`~sipswarm.sip.stack.SipStack`
is the public face built on it. Nothing here is called by the engine directly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sipswarm.sip.digest import DigestCache, digest_flow
from sipswarm.sip.events import Event, Owner, TraceRecord
from sipswarm.sip.message import SipMessage, build_response
from sipswarm.sip.timers import Timers
from sipswarm.sip.transaction import ClientTransaction, ClientUser, ServerTransaction, TxnState

if TYPE_CHECKING:
    from sipswarm.sip.call import Call
    from sipswarm.sip.config import Account, StackConfig
    from sipswarm.sip.ids import IdFactory
    from sipswarm.sip.registration import Registration
    from sipswarm.sip.request import RequestSpec

__all__ = ["Authenticator", "Core", "Endpoint"]

Address = tuple[str, int]


@dataclass(slots=True, eq=False)
class Endpoint:
    """What the stack knows about one owner."""

    owner: Owner
    contact_user: str
    contact: str
    registration: Registration | None = None


class Core:
    """State shared by everything inside one stack."""

    def __init__(self, config: StackConfig, ids: IdFactory) -> None:
        self.config = config
        self.ids = ids
        self.timers = Timers()
        self.counters: Counter[str] = Counter()
        self.now = 0.0
        self.out: list[tuple[bytes, Address]] = []
        self.events: list[Event] = []
        self.traces: list[TraceRecord] = []
        self.traced: set[Owner] = set()
        self.manual_reinvite: set[Owner] = set()  # owners answering re-INVITEs themselves
        self.client_txns: dict[tuple[str, str], ClientTransaction] = {}
        self.server_txns: dict[tuple[str, ...], ServerTransaction] = {}
        self.calls: dict[tuple[str, str], Call] = {}  # (Call-ID, local tag)
        self.endpoints: dict[Owner, Endpoint] = {}
        self.listeners: dict[str, Owner] = {}  # contact user -> owner
        transport = "" if config.transport == "udp" else f";transport={config.transport}"
        self._contact_suffix = f"@{config.sent_by}{transport}>"

    # -- output ---------------------------------------------------------------------
    def transmit(self, data: bytes, remote: Address, owner: Owner | None) -> None:
        """Queue ``data`` for ``remote`` (drained by ``messages_to_send``)."""
        self.out.append((data, remote))
        self.counters["messages_sent"] += 1
        if self.traced and owner in self.traced:
            self.traces.append(TraceRecord(owner, self.now, "out", remote, data))

    def trace_in(self, data: bytes, remote: Address, owner: Owner | None) -> None:
        """Record a received message for a traced owner."""
        if owner in self.traced:
            self.traces.append(TraceRecord(owner, self.now, "in", remote, data))

    def emit(self, event: Event) -> None:
        """Queue an event (drained by ``events_received``)."""
        self.events.append(event)

    def count(self, name: str) -> None:
        """Increment counter ``name``."""
        self.counters[name] += 1

    # -- transactions ---------------------------------------------------------------
    def start_client(
        self,
        tu: ClientUser,
        spec: RequestSpec,
        owner: Owner | None,
        now: float,
        auth: str = "",
        branch: str | None = None,
    ) -> ClientTransaction:
        """Render ``spec`` with a new branch (or ``branch``, for CANCEL) and send it in a
        new client transaction whose responses go to ``tu``."""
        branch = branch or self.ids.branch()
        data = spec.render(self.config, branch, auth)
        txn = ClientTransaction(self, tu, spec, branch, data, owner, now)
        if txn.state is not TxnState.TERMINATED:
            self.client_txns[txn.key] = txn
        return txn

    def start_server(
        self, key: tuple[str, ...], msg: SipMessage, remote: Address, owner: Owner | None
    ) -> ServerTransaction:
        """New server transaction for request ``msg`` (responses go to ``remote``)."""
        txn = ServerTransaction(self, key, msg, remote, owner)
        self.server_txns[key] = txn
        return txn

    def transaction_terminated(self, txn: ClientTransaction | ServerTransaction) -> None:
        """Forget a terminated transaction (only if it is still the one indexed)."""
        if isinstance(txn, ClientTransaction):
            if self.client_txns.get(txn.key) is txn:
                del self.client_txns[txn.key]
        elif self.server_txns.get(txn.key) is txn:
            del self.server_txns[txn.key]

    def respond(
        self,
        txn: ServerTransaction,
        status: int,
        reason: str,
        now: float,
        *,
        to_tag: str | None = None,
        extra: str = "",
        body: bytes = b"",
    ) -> bytes:
        """Build a response to ``txn``'s request and send it through ``txn``."""
        data = build_response(
            txn.request,
            status,
            reason,
            txn.remote,
            to_tag=to_tag,
            extra=extra,
            body=body,
            user_agent=self.config.user_agent,
        )
        txn.send_response(data, status, now)
        return data

    # -- endpoints ------------------------------------------------------------------
    def endpoint(self, owner: Owner, contact_user: str | None = None) -> Endpoint:
        """The owner's record, created on first use with ``contact_user``."""
        ep = self.endpoints.get(owner)
        if ep is None:
            user = contact_user or str(owner)
            ep = Endpoint(owner, user, f"<sip:{user}{self._contact_suffix}")
            self.endpoints[owner] = ep
        return ep

    def index_call(self, call: Call) -> None:
        self.calls[(call.call_id, call.local_tag)] = call

    def unindex_call(self, call: Call) -> None:
        key = (call.call_id, call.local_tag)
        if self.calls.get(key) is call:
            del self.calls[key]


class Authenticator:
    """Drives :func:`~sipswarm.sip.digest.digest_flow` for one request.

    ``first`` is (spec, credentials line) of the first attempt; after each
    401/407, :meth:`retry` returns the next attempt (CSeq + 1) or None when the
    challenge cannot or may no longer be answered.

    Without a :class:`~sipswarm.sip.digest.DigestCache` the first attempt carries
    no credentials, so the flow is only started when a 401/407 comes back (most
    requests, e.g. a BYE through a proxy that challenges INVITEs, never see one):
    it then replays that first attempt unchanged and answers the challenge.
    """

    __slots__ = ("_account", "_core", "_flow", "_lazy", "_sent", "first", "spec")

    def __init__(
        self,
        core: Core,
        account: Account | None,
        spec: RequestSpec,
        cache: DigestCache | None = None,
    ) -> None:
        self.spec = spec
        self._core = core
        self._account = account
        self._sent = False
        self._flow: Generator[tuple[RequestSpec, str], SipMessage, SipMessage] | None = None
        self._lazy = account is not None and cache is None
        if account is None or cache is None:
            self.first = (spec, "")
            return
        self._flow = self._start(account, cache)
        self.first = next(self._flow)

    def _start(
        self, account: Account, cache: DigestCache | None
    ) -> Generator[tuple[RequestSpec, str], SipMessage, SipMessage]:
        spec = self.spec
        return digest_flow(
            account, self._core.ids.cnonce, self._render, spec.method, spec.ruri, cache
        )

    def _render(self, name: str | None, value: str | None) -> tuple[RequestSpec, str]:
        if self._sent:
            self.spec = self.spec.next()  # a retry: next CSeq (RFC 3261 22.2)
        self._sent = True
        return self.spec, f"{name}: {value}\r\n" if name is not None else ""

    def retry(self, response: SipMessage) -> tuple[RequestSpec, str] | None:
        """Next attempt answering the challenge in ``response``, or None."""
        if self._lazy:
            self._lazy = False
            if response.status not in (401, 407) or self._account is None:
                return None  # what the flow would answer: nothing to retry
            self._flow = self._start(self._account, None)
            next(self._flow)  # the first attempt, already sent: same spec, no credentials
        if self._flow is None:
            return None
        try:
            return self._flow.send(response)
        except StopIteration:
            self._flow = None
            return None
