"""SIP transports for the engine: UDP here, TCP and TLS in :mod:`.stream`.

Theory of operation
-------------------
A transport moves whole SIP messages between the sans-I/O core and the
network and knows nothing about SIP beyond framing. Every transport has the
same surface, :class:`SipTransport`::

    transport.send(data, remote)      # never raises for network trouble
    transport.local_address           # (host, port) for Via/Contact
    transport.name                    # "UDP" / "TCP" / "TLS", the Via token
    transport.close()

and reports what it receives through two callables given at creation:
``on_message(data, remote)`` for every whole message and ``on_error(error)``
for every socket problem as a :class:`TransportError` value (the engine turns
it into an OSERROR outcome; exceptions never escape into the event loop).

The engine wires a stack to a transport like this (one timer per stack)::

    def on_message(data, remote):
        stack.receive_message(data, remote, loop.time())
        flush()

    def flush():
        for data, remote in stack.messages_to_send():
            transport.send(data, remote)
        timer.arm(stack.get_timer())          # engine.timer.TimerSlot

UDP comes in two shapes, both :class:`UdpTransport`: one socket shared by
thousands of endpoints (the engine demultiplexes), or one socket per endpoint
with its own port, as real phones have (:func:`open_udp_transports`).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sipswarm.errors import ConfigError, ResourceError
from sipswarm.sip.framing import MAX_MESSAGE_SIZE

__all__ = [
    "Address",
    "ErrorCallback",
    "MessageCallback",
    "SipTransport",
    "TransportError",
    "TransportStats",
    "UdpTransport",
    "open_udp_transports",
]

Address = tuple[str, int]
MessageCallback = Callable[[bytes, Address], None]


@dataclass(frozen=True, slots=True)
class TransportError:
    """A socket problem, reported as data.

    ``kind`` is one of ``connect`` (could not connect or TLS handshake failed),
    ``send`` (the kernel refused a datagram or write), ``receive`` (an error
    reported on the socket, e.g. ICMP port unreachable), ``closed`` (a
    connection went away with data or an error pending), ``framing`` (the peer
    sent bytes that cannot be framed; the connection was closed) and
    ``overflow`` (a connection's write buffer is full; the message was dropped).
    ``remote`` is None when the kernel did not say which peer it concerns.
    """

    transport: str
    kind: str
    remote: Address | None
    reason: str
    errno: int | None = None


ErrorCallback = Callable[[TransportError], None]


@dataclass(slots=True)
class TransportStats:
    """Counters every transport keeps; read them for metrics, never reset by the transport."""

    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    keepalives_received: int = 0
    dropped: int = 0
    errors: int = 0
    connections_opened: int = 0
    connections_closed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def count_error(self, kind: str) -> None:
        self.errors += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1


class SipTransport(Protocol):
    """What the engine needs from any transport (UDP, TCP, TLS)."""

    name: str
    stats: TransportStats

    @property
    def local_address(self) -> Address: ...

    def send(self, data: bytes, remote: Address) -> None: ...

    def close(self) -> None: ...


def _is_keepalive(data: bytes) -> bool:
    """RFC 5626 §3.5.1 / §4.4.1: a datagram of only CRLFs (or empty) is a keepalive."""
    return not data.strip(b"\r\n")


class _UdpProtocol(asyncio.DatagramProtocol):
    """Thin adapter: datagrams in and socket errors out, nothing else."""

    def __init__(self, owner: UdpTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._owner._datagram_received(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        self._owner._report_exc("receive", None, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._owner._report_exc("closed", None, exc)


class ErrorReporter:
    """What every transport does with a failure: count it, hand it to the engine as data.

    Subclasses set ``name``, ``stats`` and ``_on_error``; nothing here raises.
    """

    name: str
    stats: TransportStats
    _on_error: ErrorCallback

    def _report(
        self, kind: str, remote: Address | None, reason: str, code: int | None = None
    ) -> None:
        self.stats.count_error(kind)
        self._on_error(TransportError(self.name, kind, remote, reason, code))

    def _report_exc(self, kind: str, remote: Address | None, exc: BaseException) -> None:
        code = exc.errno if isinstance(exc, OSError) else None
        self._report(kind, remote, str(exc) or repr(exc), code)


#: SIP datagrams handled per loop callback (see UdpTransport).
RECEIVE_SLICE = 4
#: Datagrams read but not yet handled, beyond which new ones are dropped and counted.
RECEIVE_QUEUE_MAX = 20_000


class UdpTransport(ErrorReporter):
    """One UDP socket carrying SIP datagrams for one or many endpoints.

    Create with ``await UdpTransport.open(on_message, on_error, host, port)``
    (port 0 picks a free one), then :meth:`send` and finally :meth:`close`.
    A datagram of only CRLFs is a keepalive and is counted, not delivered;
    a datagram larger than ``MAX_MESSAGE_SIZE`` cannot exist on UDP.

    Datagrams are handled :data:`RECEIVE_SLICE` at a time, one loop callback
    per slice, in arrival order. The loop reads up to 32 datagrams per
    readiness event and used to hand them over back to back; a burst of call
    set-ups or hang-ups (1-2 ms each: ports, SDP, items, RTP session stop)
    then held the loop for 50 ms and the media clock's timer with it
    (docs/benchmarks.md "RTP capacity"). Between slices the loop polls again.
    """

    name = "UDP"

    def __init__(self, on_message: MessageCallback, on_error: ErrorCallback) -> None:
        """Use :meth:`open`; the socket is attached once bound."""
        self._transport: asyncio.DatagramTransport | None = None
        self._on_message = on_message
        self._on_error = on_error
        self.stats = TransportStats()
        self._local: Address = ("0.0.0.0", 0)
        self._queue: deque[tuple[bytes, Address]] = deque()
        self._draining = False

    @classmethod
    async def open(
        cls,
        on_message: MessageCallback,
        on_error: ErrorCallback,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        receive_buffer: int | None = None,
    ) -> UdpTransport:
        """Bind a UDP socket on ``host:port``; raise ResourceError if the port is taken.

        ``receive_buffer`` sets SO_RCVBUF (bytes): a shared socket under load
        needs more than the kernel default to survive bursts.
        """
        loop = asyncio.get_running_loop()
        owner = cls(on_message, on_error)
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(owner), local_addr=(host, port)
            )
        except OSError as exc:
            raise bind_error("UDP", host, port, exc) from exc
        owner._transport = transport
        sockname = transport.get_extra_info("sockname")
        owner._local = (sockname[0], sockname[1])
        if receive_buffer is not None:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        return owner

    @property
    def local_address(self) -> Address:
        """The bound (host, port): what goes into Via sent-by and Contact."""
        return self._local

    def send(self, data: bytes, remote: Address) -> None:
        """Send one datagram; failures arrive at ``on_error`` with kind ``send``."""
        if self._transport is None or self._transport.is_closing():
            self.stats.dropped += 1
            self._report("send", remote, "transport is closed", errno.EBADF)
            return
        try:
            self._transport.sendto(data, remote)
        except (OSError, ValueError) as exc:  # ValueError: malformed address
            self._report_exc("send", remote, exc)
            return
        self.stats.messages_sent += 1
        self.stats.bytes_sent += len(data)

    def close(self) -> None:
        """Close the socket; later sends are dropped and reported, queued datagrams dropped."""
        self._queue.clear()
        if self._transport is not None:
            self._transport.close()

    def _datagram_received(self, data: bytes, remote: Address) -> None:
        self.stats.bytes_received += len(data)
        if _is_keepalive(data):
            self.stats.keepalives_received += 1
            return
        if len(data) > MAX_MESSAGE_SIZE:
            self.stats.dropped += 1
            return
        self.stats.messages_received += 1
        queue = self._queue
        if len(queue) >= RECEIVE_QUEUE_MAX:  # the handler is this far behind: as a full buffer
            self.stats.dropped += 1
            return
        queue.append((data, remote))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        """Hand the next slice of queued datagrams over; come back for the rest."""
        queue, handle = self._queue, self._on_message
        try:
            for _ in range(RECEIVE_SLICE):
                if not queue:
                    break
                data, remote = queue.popleft()
                handle(data, remote)
        finally:  # a handler's exception (logged by the loop) must not stall the queue
            if queue:
                asyncio.get_running_loop().call_soon(self._drain)
            else:
                self._draining = False


def bind_error(proto: str, host: str, port: int, exc: OSError) -> ResourceError:
    return ResourceError(
        f"cannot bind {proto} {host}:{port}: {exc.strerror or exc}; "
        "choose another port (0 = any free port) or free this one"
    )


async def open_udp_transports(
    count: int,
    on_message: Callable[[int], MessageCallback],
    on_error: ErrorCallback,
    host: str = "127.0.0.1",
    port_range: tuple[int, int] | None = None,
) -> list[UdpTransport]:
    """Open ``count`` UDP sockets, one per endpoint, as real phones have.

    ``on_message(i)`` returns the receive callback of endpoint ``i``. With
    ``port_range=(first, last)`` ports are taken in order from that range,
    skipping ports in use; without it the kernel picks free ports. Raises
    ResourceError (after closing what it opened) when the range runs out.
    """
    if count < 0:
        raise ConfigError(f"count must be >= 0, got {count}")
    first, last = port_range if port_range is not None else (0, -1)
    ports = iter(range(first, last + 1)) if port_range is not None else None
    opened: list[UdpTransport] = []
    try:
        while len(opened) < count:
            port = 0 if ports is None else next(ports, None)
            if port is None:
                raise ResourceError(
                    f"UDP port range {first}-{last} on {host} has no room for "
                    f"{count} endpoints ({len(opened)} free); widen port_range"
                )
            try:
                opened.append(
                    await UdpTransport.open(on_message(len(opened)), on_error, host, port)
                )
            except ResourceError:
                if ports is None:
                    raise
    except BaseException:
        for transport in opened:
            transport.close()
        raise
    return opened
