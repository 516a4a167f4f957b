"""SIP over WebSocket (RFC 7118), client side: what WebRTC phones speak to a WSS listener.

Theory of operation
-------------------
:class:`WsTransport` has the :class:`~sipswarm.engine.transport.SipTransport`
surface, so a :class:`~sipswarm.engine.sip_runtime.SipRuntime` drives it like
UDP or TCP. It is a client only, as browsers are: it never listens. It keeps
at most one WebSocket connection per remote ``(host, port)``; :meth:`send` to
an address without one connects on demand (``ws://`` or ``wss://``, the
``Host`` header and TLS server name being ``server_name`` or the address) and
queues the message until the handshake is done. The engine names each server
with :meth:`WsTransport.name_server` (the domain it resolved), so that the
certificate is checked against the domain, as a browser does. Every message
the server sends to us — responses, and requests to our registered Contact, which a
registrar routes over the connection the REGISTER came on — arrives on that
connection and is reported with the remote ``(host, port)`` we dialled, so
the stack's responses go back over the same connection (RFC 3261 §18.2.2;
RFC 7118 §5).

Framing (RFC 7118 §4.1, §4.2): the ``sip`` subprotocol is required (a
server that does not select it is refused, kind ``connect``); each SIP
message is one WebSocket message, sent as a text frame when it is UTF-8 and
as a binary frame otherwise; both kinds are accepted on receive. A message
larger than ``MAX_MESSAGE_SIZE`` makes the library close the connection
(1009), reported as kind ``framing``. Keepalive is the library's ping/pong
(``ping_interval``/``ping_timeout``): a dead server is noticed without SIP
traffic, the connection is closed and reported (kind ``closed``).

Order: one writer task per connection sends the queued messages in order;
``MAX_WRITE_BUFFER`` bytes queued per connection is the bound past which
messages are dropped (kind ``overflow``). A connection that goes away is
forgotten (its queued messages are dropped and counted), so the next send
reconnects; a registrar then knows us by the old connection until we
REGISTER again, exactly as with a browser that reconnects.

Via and Contact (RFC 7118 §5.1, §5.2 and the §8 examples): a client has no
address a server could reach, so :attr:`WsTransport.local_address` is a random
``<token>.invalid`` host (given by the caller, so that randomness stays
injected) with the scheme's default port (80 or 443); the stack puts it in
Via sent-by and in Contact with ``;transport=ws``/``wss``. The server must
route to us by the connection (Kamailio: ``fix_nated_register`` on REGISTER,
``add_contact_alias``/``handle_ruri_alias`` for dialogs; see
``tests/peers/kamailio.cfg.in``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
from collections import deque
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.typing import Subprotocol

from sipswarm import USER_AGENT
from sipswarm.engine.transport import (
    Address,
    ErrorCallback,
    ErrorReporter,
    MessageCallback,
    TransportStats,
)
from sipswarm.errors import ConfigError
from sipswarm.sip.framing import MAX_MESSAGE_SIZE

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_PORTS",
    "MAX_WRITE_BUFFER",
    "PING_INTERVAL",
    "PING_TIMEOUT",
    "SUBPROTOCOL",
    "WsTransport",
    "ws_url",
]

SUBPROTOCOL = Subprotocol("sip")  # RFC 7118 §4.1 (IANA WebSocket Subprotocol Name Registry)
CONNECT_TIMEOUT = 5.0  # seconds for TCP connect, TLS and the WebSocket handshake
PING_INTERVAL = 25.0  # seconds between WebSocket pings on an idle or busy connection
PING_TIMEOUT = 20.0  # seconds without the pong before the connection is declared dead
CLOSE_TIMEOUT = 2.0  # seconds to wait for the server's close frame before dropping TCP
MAX_WRITE_BUFFER = 1 << 20  # bytes queued per connection before messages are dropped
DEFAULT_PORTS = {"WS": 80, "WSS": 443}
# websockets closes with 1009 when a message exceeds max_size (RFC 6455 §7.4.1).
_TOO_BIG = 1009


def ws_url(remote: Address, *, secure: bool, path: str = "/", host: str | None = None) -> str:
    """The WebSocket URL of a SIP server at ``remote``: ``ws[s]://host:port/path``.

    ``host`` (a DNS name for the ``Host`` header and TLS) defaults to the address.
    """
    name = host or remote[0]
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"  # an IPv6 literal
    return f"{'wss' if secure else 'ws'}://{name}:{remote[1]}{path}"


@dataclass(slots=True, eq=False)
class _Connection:
    """One WebSocket to one remote: its send queue and the task that runs it."""

    remote: Address
    queue: deque[bytes] = field(default_factory=deque)
    queued_bytes: int = 0
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    ws: ClientConnection | None = None
    task: asyncio.Task[None] | None = None


class WsTransport(ErrorReporter):
    """SIP over WS/WSS to servers, one connection per remote. See the module doc.

    Create with ``await WsTransport.open(on_message, on_error, contact_host=...,
    secure=..., client_tls=...)``; then :meth:`send` (connects on demand) and
    finally :meth:`close` / ``await`` :meth:`wait_closed`.
    """

    def __init__(
        self,
        on_message: MessageCallback,
        on_error: ErrorCallback,
        *,
        contact_host: str,
        secure: bool,
        client_tls: ssl.SSLContext | None,
        server_name: str | None,
        path: str,
        connect_timeout: float,
        ping_interval: float | None,
        ping_timeout: float | None,
    ) -> None:
        self.name = "WSS" if secure else "WS"
        self.stats = TransportStats()
        self._on_message = on_message
        self._on_error = on_error
        self._contact_host = contact_host
        self._secure = secure
        self._client_tls = client_tls
        self._server_name = server_name
        self._path = path
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._connections: dict[Address, _Connection] = {}
        self._names: dict[Address, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    async def open(
        cls,
        on_message: MessageCallback,
        on_error: ErrorCallback,
        *,
        contact_host: str,
        secure: bool = False,
        client_tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        path: str = "/",
        connect_timeout: float = CONNECT_TIMEOUT,
        ping_interval: float | None = PING_INTERVAL,
        ping_timeout: float | None = PING_TIMEOUT,
    ) -> WsTransport:
        """Return a transport ready to :meth:`send`; nothing connects before the first send.

        ``contact_host`` is the host for Via and Contact (RFC 7118 §5: a random
        ``.invalid`` name). ``secure`` selects ``wss://``, which needs
        ``client_tls`` (:func:`sipswarm.engine.tls.client_context`).
        ``server_name`` goes into the ``Host`` header and TLS SNI instead of
        the remote address; ``path`` is the URL path of the server's SIP
        WebSocket endpoint. ConfigError names the bad argument.
        """
        if secure and client_tls is None:
            raise ConfigError("transport wss needs a client TLS context (tls settings)")
        if not path.startswith("/"):
            raise ConfigError(f"ws_path must start with '/', got {path!r}")
        if not contact_host:
            raise ConfigError("contact_host must be a host name, e.g. 'k3x9.invalid'")
        return cls(
            on_message,
            on_error,
            contact_host=contact_host,
            secure=secure,
            client_tls=client_tls if secure else None,
            server_name=server_name,
            path=path,
            connect_timeout=connect_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
        )

    @property
    def local_address(self) -> Address:
        """(``<token>.invalid``, 80 or 443): what goes into Via sent-by and Contact."""
        return (self._contact_host, DEFAULT_PORTS[self.name])

    @property
    def connections(self) -> list[Address]:
        """Remote addresses with an open (or opening) connection."""
        return list(self._connections)

    def name_server(self, remote: Address, name: str) -> None:
        """Use ``name`` (the domain ``remote`` was resolved from) as the ``Host`` header and
        TLS server name of connections to ``remote``, unless ``server_name`` was given at
        open: a certificate names the domain, not the address (RFC 5922 §4)."""
        self._names[remote] = name

    def url_for(self, remote: Address) -> str:
        """The URL a connection to ``remote`` opens."""
        host = self._server_name or self._names.get(remote)
        return ws_url(remote, secure=self._secure, path=self._path, host=host)

    def send(self, data: bytes, remote: Address) -> None:
        """Queue one SIP message for ``remote``, connecting if needed; problems go to
        ``on_error`` (never raised)."""
        if self._closed:
            self.stats.dropped += 1
            self._report("send", remote, "transport is closed", errno.EBADF)
            return
        conn = self._connections.get(remote)
        if conn is None:
            conn = self._connect(remote)
        if conn.queued_bytes + len(data) > MAX_WRITE_BUFFER:
            self.stats.dropped += 1
            self._report("overflow", remote, f"more than {MAX_WRITE_BUFFER} bytes queued")
            return
        conn.queue.append(data)
        conn.queued_bytes += len(data)
        conn.wakeup.set()

    def close(self) -> None:
        """Close every connection (a WebSocket close, 1000) and forget them."""
        self._closed = True
        for conn in list(self._connections.values()):
            if conn.task is not None:
                conn.task.cancel()
        self._connections.clear()

    async def wait_closed(self) -> None:
        """Wait until every connection task has ended (after :meth:`close`)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CLOSE_TIMEOUT + 1.0)

    # -- one connection's life ---------------------------------------------------------
    def _connect(self, remote: Address) -> _Connection:
        conn = _Connection(remote)
        self._connections[remote] = conn
        conn.task = asyncio.get_running_loop().create_task(self._run(conn))
        self._tasks.add(conn.task)
        conn.task.add_done_callback(self._tasks.discard)
        return conn

    async def _run(self, conn: _Connection) -> None:
        try:
            ws = await self._open(conn)
        except asyncio.CancelledError:
            self._forget(conn)
            raise
        if ws is None:
            return
        conn.ws = ws
        self.stats.connections_opened += 1
        writer = asyncio.get_running_loop().create_task(self._write(conn, ws))
        try:
            await self._read(conn, ws)
        finally:
            writer.cancel()
            self._forget(conn)
            self.stats.connections_closed += 1
            with contextlib.suppress(Exception):
                await asyncio.shield(ws.close())

    async def _open(self, conn: _Connection) -> ClientConnection | None:
        """Dial, TLS, WebSocket handshake; None (reported, queue dropped) on failure."""
        host, port = conn.remote
        try:
            ws = await connect(
                self.url_for(conn.remote),
                subprotocols=[SUBPROTOCOL],
                compression=None,  # SIP servers do not deflate; it costs CPU per message
                proxy=None,  # never through an environment proxy: the SUT is the peer
                user_agent_header=USER_AGENT,
                open_timeout=self._connect_timeout,
                ping_interval=self._ping_interval,
                ping_timeout=self._ping_timeout,
                close_timeout=CLOSE_TIMEOUT,
                max_size=MAX_MESSAGE_SIZE,
                ssl=self._client_tls,
                host=host,
                port=port,
            )
        except (OSError, TimeoutError, WebSocketException, ValueError) as exc:
            self._connect_failed(conn, exc)
            return None
        if ws.subprotocol != SUBPROTOCOL:
            # RFC 7118 §4.1: without the "sip" subprotocol the server does not speak SIP here.
            await ws.close(1002, "subprotocol sip required")
            self._connect_failed(conn, ValueError(f"server chose subprotocol {ws.subprotocol!r}"))
            return None
        return ws

    async def _write(self, conn: _Connection, ws: ClientConnection) -> None:
        """Send the queue in order, one SIP message per WebSocket message."""
        while True:
            while conn.queue:
                data = conn.queue.popleft()
                conn.queued_bytes -= len(data)
                try:
                    await ws.send(data, text=_is_utf8(data))  # RFC 7118 §4.2
                except ConnectionClosed:
                    self.stats.dropped += 1  # the rest is counted when the reader forgets it
                    return  # the reader reports the closure
                self.stats.messages_sent += 1
                self.stats.bytes_sent += len(data)
            conn.wakeup.clear()
            await conn.wakeup.wait()

    async def _read(self, conn: _Connection, ws: ClientConnection) -> None:
        """Deliver every message until the connection closes; report abnormal closures."""
        try:
            async for message in ws:
                data = message.encode() if isinstance(message, str) else message
                self._message_received(data, conn.remote)
        except ConnectionClosed as exc:
            sent = exc.sent
            kind = "framing" if sent is not None and sent.code == _TOO_BIG else "closed"
            self._report(kind, conn.remote, str(exc) or repr(exc))
            return
        if conn.queue and not self._closed:  # closed cleanly by the peer with data pending
            self._report("closed", conn.remote, f"connection closed: {ws.close_reason!r}")

    def _message_received(self, data: bytes, remote: Address) -> None:
        self.stats.bytes_received += len(data)
        if not data.strip(b"\r\n"):  # a CRLF keepalive some servers also send over WS
            self.stats.keepalives_received += 1
            return
        self.stats.messages_received += 1
        self._on_message(data, remote)

    def _connect_failed(self, conn: _Connection, exc: BaseException) -> None:
        self._forget(conn)
        if isinstance(exc, TimeoutError):
            reason = f"no WebSocket connection within {self._connect_timeout} s"
            code: int | None = errno.ETIMEDOUT
        else:
            reason = str(exc) or repr(exc)
            code = exc.errno if isinstance(exc, OSError) else None
        self._report("connect", conn.remote, f"{self.url_for(conn.remote)}: {reason}", code)

    def _forget(self, conn: _Connection) -> None:
        """Drop ``conn`` and what it still had queued (counted)."""
        if self._connections.get(conn.remote) is conn:
            del self._connections[conn.remote]
        self.stats.dropped += len(conn.queue)
        conn.queue.clear()
        conn.queued_bytes = 0


def _is_utf8(data: bytes) -> bool:
    """True when ``data`` can go in a text frame (RFC 6455 §5.6: UTF-8 only)."""
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
