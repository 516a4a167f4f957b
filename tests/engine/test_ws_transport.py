"""WsTransport (SIP over WebSocket, RFC 7118) against a real websockets server in the test."""

from __future__ import annotations

import asyncio
import errno
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol

from sipswarm.engine.resolver import ResolverSettings, ServerTarget, SipResolver
from sipswarm.engine.tls import TlsSettings, client_context
from sipswarm.engine.transport import Address, TransportError
from sipswarm.engine.ws_transport import MAX_WRITE_BUFFER, WsTransport, ws_url
from sipswarm.errors import ConfigError
from sipswarm.sip.framing import MAX_MESSAGE_SIZE
from tests.peers.certs import make_certificates
from tests.peers.procs import free_port

OPTIONS = (
    b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/WS k3x9.invalid:80;rport;branch=z9hG4bK-1\r\n"
    b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: c1\r\n"
    b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)
REPLY = OPTIONS.replace(b"OPTIONS sip:127.0.0.1 SIP/2.0", b"SIP/2.0 200 OK")


def run(body: Callable[[], Awaitable[Any]], *, loop: str = "asyncio") -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(body(), 10)

    return uvloop.run(bounded()) if loop == "uvloop" else asyncio.run(bounded())


class Inbox:
    """What the transport delivers; ``await inbox.until(pred)``."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, Address]] = []
        self.errors: list[TransportError] = []
        self._changed = asyncio.Event()

    def on_message(self, data: bytes, remote: Address) -> None:
        self.messages.append((data, remote))
        self._changed.set()

    def on_error(self, error: TransportError) -> None:
        self.errors.append(error)
        self._changed.set()

    async def until(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not pred():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)


class SipWsServer:
    """A websockets server speaking the ``sip`` subprotocol; records frames, runs ``script``."""

    def __init__(self, script: Callable[[ServerConnection], Awaitable[None]] | None = None) -> None:
        self.frames: list[str | bytes] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.connections = 0
        self.script = script
        self.server: Server | None = None

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        assert ws.request is not None
        self.requests.append((ws.request.path, dict(ws.request.headers.raw_items())))
        if self.script is not None:
            await self.script(ws)
            return
        async for frame in ws:
            self.frames.append(frame)
            data = frame.encode() if isinstance(frame, str) else frame
            if data.startswith(b"OPTIONS"):
                await ws.send(REPLY.decode())

    async def start(
        self, subprotocols: list[str] | None = None, tls: ssl.SSLContext | None = None
    ) -> Address:
        protocols = [Subprotocol(p) for p in (["sip"] if subprotocols is None else subprotocols)]
        self.server = await serve(
            self.handler, "127.0.0.1", 0, subprotocols=protocols or None, ssl=tls
        )
        host, port = self.server.sockets[0].getsockname()[:2]
        return (host, port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _open(inbox: Inbox, **kwargs: Any) -> WsTransport:
    kwargs.setdefault("contact_host", "k3x9.invalid")
    return await WsTransport.open(inbox.on_message, inbox.on_error, **kwargs)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_request_in_one_text_frame_and_reply_delivered(loop: str) -> None:
    async def body() -> None:
        server, inbox = SipWsServer(), Inbox()
        remote = await server.start()
        transport = await _open(inbox, path="/sip")
        assert transport.name == "WS"
        assert transport.local_address == ("k3x9.invalid", 80)
        transport.send(OPTIONS, remote)
        await inbox.until(lambda: len(inbox.messages) == 1)
        assert inbox.messages == [(REPLY, remote)]
        assert server.frames == [OPTIONS.decode()]  # one text frame, exactly the message
        path, headers = server.requests[0]
        assert path == "/sip"
        assert headers["Sec-WebSocket-Protocol"] == "sip"
        assert headers["Host"] == f"127.0.0.1:{remote[1]}"
        assert headers["User-Agent"].startswith("sipswarm")
        assert transport.stats.messages_sent == 1 and transport.stats.messages_received == 1
        assert transport.connections == [remote]
        transport.close()
        await transport.wait_closed()
        await server.stop()
        assert inbox.errors == []

    run(body, loop=loop)


def test_connection_reused_and_order_kept() -> None:
    async def body() -> None:
        server, inbox = SipWsServer(), Inbox()
        remote = await server.start()
        transport = await _open(inbox)
        messages = [OPTIONS.replace(b"CSeq: 1", f"CSeq: {i}".encode()) for i in range(1, 21)]
        for data in messages[:10]:  # queued while connecting
            transport.send(data, remote)
        await inbox.until(lambda: len(inbox.messages) == 10)
        for data in messages[10:]:  # over the open connection
            transport.send(data, remote)
        await inbox.until(lambda: len(inbox.messages) == 20)
        assert server.connections == 1
        assert [f.encode() if isinstance(f, str) else f for f in server.frames] == messages
        transport.close()
        await transport.wait_closed()
        await server.stop()

    run(body)


def test_binary_frames_both_ways_and_crlf_keepalive() -> None:
    latin1 = OPTIONS.replace(b"From: <sip:a@", b"From: \xe9 <sip:a@")  # not UTF-8

    async def script(ws: ServerConnection) -> None:
        frame = await ws.recv()
        assert isinstance(frame, bytes)  # not UTF-8: sent as a binary frame
        await ws.send(b"\r\n\r\n")  # keepalive: counted, not delivered
        await ws.send(REPLY)  # binary frame on receive is accepted too (RFC 7118 4.2)
        await ws.wait_closed()

    async def body() -> None:
        server, inbox = SipWsServer(script), Inbox()
        remote = await server.start()
        transport = await _open(inbox)
        transport.send(latin1, remote)
        await inbox.until(lambda: len(inbox.messages) == 1)
        assert inbox.messages[0][0] == REPLY
        assert transport.stats.keepalives_received == 1
        transport.close()
        await transport.wait_closed()
        await server.stop()

    run(body)


def test_server_without_sip_subprotocol_is_refused() -> None:
    async def body() -> None:
        server, inbox = SipWsServer(), Inbox()
        remote = await server.start(subprotocols=[])
        transport = await _open(inbox)
        transport.send(OPTIONS, remote)
        transport.send(OPTIONS, remote)
        await inbox.until(lambda: len(inbox.errors) == 1)
        error = inbox.errors[0]
        assert (error.transport, error.kind, error.remote) == ("WS", "connect", remote)
        assert "subprotocol" in error.reason
        assert server.frames == [] and inbox.messages == []
        assert transport.stats.dropped == 2 and transport.connections == []
        transport.close()
        await transport.wait_closed()
        await server.stop()

    run(body)


def test_nothing_listening_is_a_connect_error() -> None:
    async def body() -> None:
        inbox = Inbox()
        remote = ("127.0.0.1", free_port(("tcp",)))
        transport = await _open(inbox)
        transport.send(OPTIONS, remote)
        await inbox.until(lambda: len(inbox.errors) == 1)
        error = inbox.errors[0]
        assert error.kind == "connect" and error.errno == errno.ECONNREFUSED
        assert ws_url(remote, secure=False) in error.reason
        assert transport.stats.dropped == 1
        transport.close()

    run(body)


def test_peer_closing_abnormally_is_reported_and_next_send_reconnects() -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.recv()
        if server.connections == 1:
            await ws.close(1011, "going away in a test")
            return
        await ws.send(REPLY.decode())
        await ws.wait_closed()

    server = SipWsServer(script)

    async def body() -> None:
        inbox = Inbox()
        remote = await server.start()
        transport = await _open(inbox)
        transport.send(OPTIONS, remote)
        await inbox.until(lambda: len(inbox.errors) == 1)
        assert inbox.errors[0].kind == "closed" and "1011" in inbox.errors[0].reason
        assert transport.connections == []
        transport.send(OPTIONS, remote)
        await inbox.until(lambda: len(inbox.messages) == 1)
        assert server.connections == 2
        assert transport.stats.connections_opened == 2
        transport.close()
        await transport.wait_closed()
        await server.stop()

    run(body)


def test_oversized_message_from_server_is_a_framing_error() -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send("x" * (MAX_MESSAGE_SIZE + 1))
        await ws.wait_closed()

    async def body() -> None:
        server, inbox = SipWsServer(script), Inbox()
        remote = await server.start()
        transport = await _open(inbox)
        transport.send(OPTIONS, remote)
        await inbox.until(lambda: len(inbox.errors) == 1)
        assert inbox.errors[0].kind == "framing"
        assert inbox.messages == []
        transport.close()
        await transport.wait_closed()
        await server.stop()

    run(body)


def test_send_after_close_and_overflow_are_reported_not_raised() -> None:
    async def body() -> None:
        inbox = Inbox()
        remote = ("127.0.0.1", free_port(("tcp",)))
        transport = await _open(inbox)
        big = b"x" * (MAX_WRITE_BUFFER // 2 + 1)
        transport.send(big, remote)  # queued while connecting
        transport.send(big, remote)  # over the bound: dropped now
        assert [e.kind for e in inbox.errors] == ["overflow"]
        transport.close()
        transport.send(OPTIONS, remote)
        assert [e.kind for e in inbox.errors] == ["overflow", "send"]
        assert inbox.errors[-1].errno == errno.EBADF
        await transport.wait_closed()

    run(body)


def test_wss_verifies_the_server_with_a_custom_ca(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path, ("localhost", "127.0.0.1"))
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(certs.cert, certs.key)

    async def body() -> None:
        server, inbox = SipWsServer(), Inbox()
        remote = await server.start(tls=server_tls)
        custom = client_context(TlsSettings(verify="custom", ca_file=str(certs.ca)))
        transport = await _open(inbox, secure=True, client_tls=custom, server_name="localhost")
        assert transport.name == "WSS" and transport.local_address[1] == 443
        assert transport.url_for(remote) == f"wss://localhost:{remote[1]}/"
        transport.send(OPTIONS, remote)
        await inbox.until(lambda: len(inbox.messages) == 1)
        assert server.requests[0][1]["Host"] == f"localhost:{remote[1]}"
        transport.close()
        await transport.wait_closed()

        system = client_context(TlsSettings(verify="system"))  # does not know the test CA
        untrusting = await _open(inbox, secure=True, client_tls=system)
        untrusting.send(OPTIONS, remote)
        await inbox.until(lambda: len(inbox.errors) == 1)
        assert inbox.errors[0].kind == "connect"
        assert "certificate" in inbox.errors[0].reason.lower()
        untrusting.close()
        await server.stop()

    run(body)


def test_bad_arguments_name_the_field() -> None:
    async def body() -> None:
        inbox = Inbox()
        with pytest.raises(ConfigError, match="wss needs a client TLS context"):
            await _open(inbox, secure=True)
        with pytest.raises(ConfigError, match="ws_path must start with '/'"):
            await _open(inbox, path="sip")

    run(body)


def test_ws_url_brackets_ipv6() -> None:
    assert ws_url(("::1", 8443), secure=True, path="/ws") == "wss://[::1]:8443/ws"
    assert ws_url(("127.0.0.1", 80), secure=False, host="pbx.test") == "ws://pbx.test:80/"


def test_wss_checks_the_certificate_against_the_named_domain(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path, ("pbx.test",))  # the name only, not the address
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(certs.cert, certs.key)
    custom = client_context(TlsSettings(verify="custom", ca_file=str(certs.ca)))

    async def body() -> None:
        server, inbox = SipWsServer(), Inbox()
        remote = await server.start(tls=server_tls)
        by_address = await _open(inbox, secure=True, client_tls=custom)
        by_address.send(OPTIONS, remote)  # the certificate does not name 127.0.0.1
        await inbox.until(lambda: len(inbox.errors) == 1)
        assert inbox.errors[0].kind == "connect"
        by_address.close()
        named = await _open(inbox, secure=True, client_tls=custom)
        named.name_server(remote, "pbx.test")
        named.send(OPTIONS, remote)
        await inbox.until(lambda: len(inbox.messages) == 1)
        assert server.requests[-1][1]["Host"] == f"pbx.test:{remote[1]}"
        named.close()
        await named.wait_closed()
        await server.stop()

    run(body)


def test_keepalive_ping_detects_a_silent_server() -> None:
    release = asyncio.Event()

    async def script(ws: ServerConnection) -> None:
        await ws.recv()
        ws.transport.pause_reading()  # pings are no longer read, so never answered
        await release.wait()
        ws.transport.abort()  # no close handshake with a connection that does not read

    async def body() -> None:
        server, inbox = SipWsServer(script), Inbox()
        remote = await server.start()
        transport = await _open(inbox, ping_interval=0.2, ping_timeout=0.3)
        transport.send(OPTIONS, remote)
        # ping timeout, then CLOSE_TIMEOUT for the close frame that never comes
        await inbox.until(lambda: len(inbox.errors) == 1, timeout=5)
        error = inbox.errors[0]
        assert error.kind == "closed" and "keepalive ping timeout" in error.reason
        assert transport.connections == []
        transport.close()
        release.set()
        await server.stop()

    run(body)


def test_resolver_locates_ws_servers_by_address_only() -> None:
    async def body() -> None:
        resolver = SipResolver(
            ResolverSettings(nameservers=[], overrides={"pbx.test": ("127.0.0.1", None)})
        )
        [wss] = await resolver.resolve("pbx.test", None, "wss")
        assert wss == ServerTarget("WSS", ("127.0.0.1", 443), "pbx.test")
        [ws] = await resolver.resolve_uri("sip:127.0.0.1:8080;transport=ws")
        assert ws == ServerTarget("WS", ("127.0.0.1", 8080), "127.0.0.1")
        [secure] = await resolver.resolve_uri("sips:pbx.test;transport=ws")
        assert secure.transport == "WSS" and secure.address == ("127.0.0.1", 443)
        assert resolver.queries_sent == 0  # RFC 7118: no NAPTR/SRV for WebSocket

    run(body)
