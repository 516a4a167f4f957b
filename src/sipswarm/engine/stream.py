"""SIP over TCP and TLS: connection reuse per remote address, framing by Content-Length.

Theory of operation
-------------------
:class:`StreamTransport` listens on one local address (so that in-dialog
requests sent to our Contact reach us, RFC 3261 §18.2.1) and keeps at most
one connection per remote ``(host, port)``, whoever opened it: responses go
back over the connection the request came on (RFC 3261 §18.2.2) and requests
reuse an open connection to the same address (§18.1.1). :meth:`send` to an
address with no connection starts one in the background and queues the
message until it is up; a failed connect or TLS handshake is reported once
to ``on_error`` (kind ``connect``) and the queued messages are dropped and
counted. A connection that the peer closed is forgotten, so the next send
reconnects. Each connection owns a :class:`~sipswarm.sip.framing.StreamFramer`;
when framing is lost the connection is closed and reported (kind ``framing``).
RFC 5626 CRLF pings are answered with a pong.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
from typing import cast

from sipswarm.engine.transport import (
    Address,
    ErrorCallback,
    ErrorReporter,
    MessageCallback,
    TransportStats,
    bind_error,
)
from sipswarm.sip.framing import PONG, StreamFramer

__all__ = ["CONNECT_TIMEOUT", "MAX_WRITE_BUFFER", "StreamTransport"]

CONNECT_TIMEOUT = 5.0  # seconds for TCP connect plus TLS handshake
MAX_WRITE_BUFFER = 1 << 20  # bytes queued per connection before messages are dropped


class _StreamProtocol(asyncio.Protocol):
    """One connection: bytes to the framer, whole messages to the owner. No SIP logic."""

    def __init__(self, owner: StreamTransport, remote: Address | None) -> None:
        self.owner = owner
        self.remote = remote
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.framer = StreamFramer()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        if self.remote is None:  # accepted: learn who it is
            peer = self.transport.get_extra_info("peername")
            self.remote = (peer[0], peer[1])
        self.owner._connection_made(self)
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.owner.stats.bytes_received += len(data)
        framer = self.framer
        framer.receive_data(data)
        for message in framer.messages_received():
            self.owner._message_received(message, self)
        pings = framer.pings_to_answer()
        if pings and self.transport is not None:
            self.owner.stats.keepalives_received += pings
            self.transport.write(PONG * pings)
        if framer.error is not None and self.transport is not None:
            self.owner._report("framing", self.remote, framer.error)
            self.transport.abort()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._connection_lost(self, exc)


class StreamTransport(ErrorReporter):
    """SIP over TCP (``tls=None``) or TLS, listening on one address, one connection per peer.

    Create with ``await StreamTransport.open(on_message, on_error, host, port,
    client_tls=..., server_tls=...)``; then :meth:`send` (connects on demand)
    and finally :meth:`close` / ``await`` :meth:`wait_closed`.
    """

    def __init__(
        self,
        on_message: MessageCallback,
        on_error: ErrorCallback,
        *,
        client_tls: ssl.SSLContext | None,
        server_tls: ssl.SSLContext | None,
        server_name: str | None,
        connect_timeout: float,
    ) -> None:
        self.name = "TLS" if client_tls is not None or server_tls is not None else "TCP"
        self.stats = TransportStats()
        self._on_message = on_message
        self._on_error = on_error
        self._client_tls = client_tls
        self._server_tls = server_tls
        self._server_name = server_name
        self._connect_timeout = connect_timeout
        self._connections: dict[Address, _StreamProtocol] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._local: Address = ("0.0.0.0", 0)
        self._closed = False

    @classmethod
    async def open(
        cls,
        on_message: MessageCallback,
        on_error: ErrorCallback,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        client_tls: ssl.SSLContext | None = None,
        server_tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> StreamTransport:
        """Listen on ``host:port`` (0 = any free port) and return the transport.

        TLS: pass ``client_tls`` (see :func:`sipswarm.engine.tls.client_context`)
        to connect with TLS and ``server_tls`` to accept TLS; ``server_name`` is
        the default SNI name. Without a server context the listener accepts
        plain TCP even on a TLS transport, so give both to a TLS endpoint that
        must answer. Raises ResourceError if the port is taken.
        """
        owner = cls(
            on_message,
            on_error,
            client_tls=client_tls,
            server_tls=server_tls,
            server_name=server_name,
            connect_timeout=connect_timeout,
        )
        loop = asyncio.get_running_loop()
        try:
            owner._server = await loop.create_server(
                lambda: _StreamProtocol(owner, None), host, port, ssl=server_tls
            )
        except OSError as exc:
            raise bind_error(owner.name, host, port, exc) from exc
        sockname = owner._server.sockets[0].getsockname()
        owner._local = (sockname[0], sockname[1])
        return owner

    @property
    def local_address(self) -> Address:
        """The listening (host, port): what goes into Via sent-by and Contact."""
        return self._local

    @property
    def connections(self) -> list[Address]:
        """Remote addresses with an open (or opening) connection."""
        return list(self._connections)

    def send(self, data: bytes, remote: Address, server_name: str | None = None) -> None:
        """Send one message to ``remote``, reusing or opening a connection.

        ``server_name`` is the TLS SNI and certificate name for a new TLS
        connection (the SIP domain, RFC 5922 §4); default: the one given at
        open, else the remote host. Problems arrive at ``on_error``.
        """
        if self._closed:
            self.stats.dropped += 1
            self._report("send", remote, "transport is closed", errno.EBADF)
            return
        conn = self._connections.get(remote)
        if conn is None:
            conn = self._connect(remote, server_name)
        queued = len(data) + (
            conn.transport.get_write_buffer_size()
            if conn.transport is not None
            else sum(map(len, conn.pending))
        )
        if queued > MAX_WRITE_BUFFER:
            self.stats.dropped += 1
            self._report("overflow", remote, f"more than {MAX_WRITE_BUFFER} bytes queued")
            return
        if conn.transport is None:
            conn.pending.append(data)
        else:
            conn.transport.write(data)
        self.stats.messages_sent += 1
        self.stats.bytes_sent += len(data)

    def close(self) -> None:
        """Stop listening, close every connection and cancel pending connects."""
        self._closed = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        self._connections.clear()

    async def wait_closed(self) -> None:
        """Wait until the listener and pending connects are gone (after :meth:`close`)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    def _connect(self, remote: Address, server_name: str | None) -> _StreamProtocol:
        conn = _StreamProtocol(self, remote)
        self._connections[remote] = conn
        name = server_name or self._server_name or remote[0]
        task = asyncio.get_running_loop().create_task(self._open_connection(conn, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return conn

    async def _open_connection(self, conn: _StreamProtocol, server_name: str) -> None:
        assert conn.remote is not None
        host, port = conn.remote
        loop = asyncio.get_running_loop()
        tls = self._client_tls
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: conn, host, port, ssl=tls, server_hostname=server_name if tls else None
                ),
                self._connect_timeout,
            )
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            self._connect_failed(conn, exc)

    def _connect_failed(self, conn: _StreamProtocol, exc: BaseException) -> None:
        assert conn.remote is not None
        if self._connections.get(conn.remote) is conn:
            del self._connections[conn.remote]
        self.stats.dropped += len(conn.pending)
        conn.pending.clear()
        if isinstance(exc, asyncio.TimeoutError):
            reason = f"no connection within {self._connect_timeout} s"
            code: int | None = errno.ETIMEDOUT
        else:
            reason = str(exc) or repr(exc)
            code = exc.errno if isinstance(exc, OSError) else None
        self._report("connect", conn.remote, reason, code)

    def _connection_made(self, conn: _StreamProtocol) -> None:
        assert conn.remote is not None
        self.stats.connections_opened += 1
        if self._closed:
            assert conn.transport is not None
            conn.transport.close()
            return
        self._connections[conn.remote] = conn

    def _message_received(self, message: bytes, conn: _StreamProtocol) -> None:
        assert conn.remote is not None
        self.stats.messages_received += 1
        self._on_message(message, conn.remote)

    def _connection_lost(self, conn: _StreamProtocol, exc: Exception | None) -> None:
        self.stats.connections_closed += 1
        if conn.remote is not None and self._connections.get(conn.remote) is conn:
            del self._connections[conn.remote]
        if exc is not None and not self._closed:
            self._report_exc("closed", conn.remote, exc)
