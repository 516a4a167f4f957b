"""A sans-I/O :class:`~sipswarm.sip.stack.SipStack` wired to one transport and one timer.

Theory of operation
-------------------
:class:`SipRuntime` is the adapter of STYLE.md rules 2 and 3 for one SIP
socket (UDP), listener (TCP/TLS) or WebSocket client (WS/WSS): every input
goes into the stack with the loop's monotonic time, then :meth:`SipRuntime.flush` drains the stack —
messages to the transport, events and trace records to the owner they name
(a dict lookup, never a scan) — and re-arms the single
:class:`~sipswarm.engine.timer.TimerSlot` at ``stack.get_timer()``.

Owners (endpoints) attach with :meth:`attach` and implement
:class:`RuntimeOwner`. An owner that acts on the stack (``invite``, ``bye``
...) calls :meth:`flush` afterwards. ``flush`` is re-entrant: an owner that
acts while handling an event only marks the runtime dirty, and the outer
flush loops until the stack has nothing left, so output order is the
stack's order.

Transport errors: on a per-endpoint socket (``exclusive_owner`` set) every
error goes to that owner (it becomes OSERROR); on a shared socket an error
naming a remote address cannot be pinned on one endpoint, so it is only
counted — the affected transactions time out in the stack and the owners
see 408.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from sipswarm.engine.stream import StreamTransport
from sipswarm.engine.timer import TimerSlot
from sipswarm.engine.transport import Address, SipTransport, TransportError, UdpTransport
from sipswarm.engine.ws_transport import WsTransport
from sipswarm.errors import ConfigError
from sipswarm.sip.config import StackConfig, TimerConfig
from sipswarm.sip.events import Event, MessageDropped, Owner, TraceRecord
from sipswarm.sip.ids import IdFactory
from sipswarm.sip.stack import SipStack

__all__ = ["UDP_RECEIVE_BUFFER", "RuntimeOwner", "RuntimeSettings", "SipRuntime"]

#: SO_RCVBUF of a shared UDP SIP socket (the kernel caps it at net.core.rmem_max).
#: Hundreds of endpoints share one socket; with the default ~208 KiB (~200
#: loopback datagrams of kernel truesize) a shard descheduled for 100 ms at
#: 400 calls/s overflows it, and every lost 407/200/BYE response is a
#: retransmission at best and a failed call at worst.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


#: TransportError kinds that say the peer cannot be reached (not our own socket's fault).
_PEER_FAILURES = frozenset({"connect", "send", "receive", "closed"})


class RuntimeOwner(Protocol):
    """What an endpoint implements to receive what its runtime drains."""

    def on_sip_event(self, event: Event) -> None: ...

    def on_trace(self, record: TraceRecord, runtime: SipRuntime) -> None: ...

    def on_transport_error(self, error: TransportError) -> None: ...


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """Where to bind and what to advertise.

    ``transport`` is ``udp``, ``tcp``, ``tls``, ``ws`` or ``wss``; ``port`` 0
    lets the kernel choose. ``public_host`` goes into Via/Contact instead of
    the bound address (NAT); ``advertised_host`` is the address to use when
    binding a wildcard address without a public one. WebSocket (a client,
    nothing is bound): ``contact_host`` is the ``.invalid`` Via/Contact host,
    ``ws_path`` the server's URL path, ``server_name`` the Host/SNI name.
    """

    transport: str
    bind_host: str
    port: int = 0
    public_host: str | None = None
    advertised_host: str | None = None
    client_tls: ssl.SSLContext | None = None
    server_tls: ssl.SSLContext | None = None
    timers: TimerConfig = field(default_factory=TimerConfig)
    contact_host: str | None = None
    ws_path: str = "/"
    server_name: str | None = None


class SipRuntime:
    """One stack on one transport. Build with ``await SipRuntime.open(...)``; see module doc."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: RuntimeSettings) -> None:
        self._loop = loop
        self.settings = settings
        self.stack: SipStack | None = None
        self.transport: SipTransport | None = None
        self._slot = TimerSlot(loop, self._on_timer)
        self._owners: dict[Owner, RuntimeOwner] = {}
        self.exclusive_owner: RuntimeOwner | None = None
        self.unowned: Counter[str] = Counter()
        self.transport_errors = 0
        self._flushing = False
        self._dirty = False
        self.local = ""

    @classmethod
    async def open(
        cls, loop: asyncio.AbstractEventLoop, settings: RuntimeSettings, ids: IdFactory
    ) -> SipRuntime:
        """Bind the transport and build the stack; ResourceError if the port is taken."""
        runtime = cls(loop, settings)
        kind = settings.transport
        transport: SipTransport
        if kind == "udp":
            transport = await UdpTransport.open(
                runtime.receive,
                runtime._on_error,
                settings.bind_host,
                settings.port,
                receive_buffer=UDP_RECEIVE_BUFFER,
            )
        elif kind in ("tcp", "tls"):
            tls = kind == "tls"
            transport = await StreamTransport.open(
                runtime.receive,
                runtime._on_error,
                settings.bind_host,
                settings.port,
                client_tls=settings.client_tls if tls else None,
                server_tls=settings.server_tls if tls else None,
            )
            if tls and settings.client_tls is None:
                transport.close()
                raise ConfigError("transport tls needs a client TLS context (tls settings)")
        elif kind in ("ws", "wss"):
            transport = await WsTransport.open(
                runtime.receive,
                runtime._on_error,
                contact_host=settings.contact_host or "sipswarm.invalid",
                secure=kind == "wss",
                client_tls=settings.client_tls,
                server_name=settings.server_name,
                path=settings.ws_path,
            )
        else:
            raise ConfigError(f"transport must be udp, tcp, tls, ws or wss, got {kind!r}")
        host, port = transport.local_address
        if host in ("0.0.0.0", "::"):
            host = settings.advertised_host or "127.0.0.1"
        runtime.transport = transport
        runtime.local = f"{host}:{port}"
        # RFC 7118 §5: a WebSocket client's Via/Contact host is its .invalid name, never NAT's.
        public = None if kind in ("ws", "wss") else settings.public_host
        config = StackConfig(host, port, kind, public_host=public, timers=settings.timers)
        runtime.stack = SipStack(config, ids)
        return runtime

    @property
    def name(self) -> str:
        """Transport token as in Via (``UDP``, ``TCP``, ``TLS``)."""
        return self.transport.name if self.transport is not None else "?"

    def attach(self, owner: Owner, handler: RuntimeOwner) -> None:
        """Send ``owner``'s events, traces (and transport errors if exclusive) to ``handler``."""
        self._owners[owner] = handler

    def detach(self, owner: Owner) -> None:
        """Stop delivering to ``owner`` and let the stack forget it."""
        self._owners.pop(owner, None)
        if self.stack is not None:
            self.stack.forget(owner)

    @property
    def owners(self) -> int:
        return len(self._owners)

    # -- input ----------------------------------------------------------------------
    def receive(self, data: bytes, remote: Address) -> None:
        """Transport callback: one whole SIP message."""
        stack = self.stack
        if stack is None:
            return
        stack.receive_message(data, remote, self._loop.time())
        self.flush()

    def _on_timer(self, now: float) -> None:
        if self.stack is not None:
            self.stack.handle_timer(now)
            self.flush()

    def _on_error(self, error: TransportError) -> None:
        """A socket problem. When it names the peer (connection refused or reset, TLS
        failure, ICMP unreachable on UDP), the stack ends every transaction waiting on
        that peer at once with 503 (RFC 3261 8.1.3.1) instead of after Timer B/F: the
        endpoints see CallFailed/RegistrationFailed 503. Only an error the stack could
        not pin on a peer goes to the socket's own endpoint (OSERROR)."""
        self.transport_errors += 1
        ended = 0
        stack = self.stack
        if stack is not None and error.remote is not None and error.kind in _PEER_FAILURES:
            why = f"{error.transport} {error.kind} error: {error.reason}"
            ended = stack.transport_error(error.remote, self._loop.time(), why)
            self.flush()
        owner = self.exclusive_owner
        if owner is not None and not ended:
            owner.on_transport_error(error)

    # -- output ---------------------------------------------------------------------
    def flush(self) -> None:
        """Drain the stack: send messages, deliver events and traces, re-arm the timer."""
        if self._flushing:
            self._dirty = True
            return
        stack, transport = self.stack, self.transport
        if stack is None or transport is None:
            return
        self._flushing = True
        try:
            self._dirty = True
            while self._dirty:
                self._dirty = False
                for data, remote in stack.messages_to_send():
                    transport.send(data, remote)
                for record in stack.traces_to_send():
                    handler = self._owners.get(record.owner)
                    if handler is not None:
                        handler.on_trace(record, self)
                for event in stack.events_received():
                    self._deliver(event)
        finally:
            self._flushing = False
        # Re-arm only for an earlier deadline: a later one (the usual case, a new
        # transaction's Timer A/E/K behind the pending one) keeps the armed loop timer,
        # whose firing runs handle_timer (nothing due: no-op) and arms the next. Saves a
        # TimerHandle cancel + call_at per message.
        deadline, armed = stack.get_timer(), self._slot.deadline
        if deadline is not None and (armed is None or deadline < armed):
            self._slot.arm(deadline)

    def _deliver(self, event: Event) -> None:
        if isinstance(event, MessageDropped):
            self.unowned[event.reason.split(" ", 1)[0]] += 1
            if event.owner is None:
                return
        handler = self._owners.get(event.owner)
        if handler is None:
            self.unowned[type(event).__name__] += 1
            return
        handler.on_sip_event(event)

    def counters(self) -> Counter[str]:
        """The stack's SIP counters plus transport errors."""
        out: Counter[str] = Counter()
        if self.stack is not None:
            out.update(self.stack.counters)
        out["transport_errors"] += self.transport_errors
        return out

    def close(self) -> None:
        """Stop the timer and close the transport."""
        self._slot.cancel()
        if self.transport is not None:
            self.transport.close()
