"""engine transports (UDP, TCP, TLS) against each other, raw sockets and a real Kamailio."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from sipswarm.engine.stream import StreamTransport
from sipswarm.engine.timer import TimerSlot
from sipswarm.engine.tls import TlsSettings, client_context, server_context
from sipswarm.engine.transport import (
    RECEIVE_SLICE,
    Address,
    TransportError,
    UdpTransport,
    open_udp_transports,
)
from sipswarm.errors import ConfigError, ResourceError
from tests.peers.certs import make_certificates
from tests.peers.kamailio import Kamailio
from tests.peers.procs import free_port

Runner = Callable[[Callable[[], Awaitable[Any]]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a test body on the default loop and on uvloop (the engine's loop), bounded."""

    def runner(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
        async def bounded() -> Any:
            return await asyncio.wait_for(coro_fn(), 15)

        if request.param == "uvloop":
            return uvloop.run(bounded())
        return asyncio.run(bounded())

    return runner


class Inbox:
    """Collects what a transport delivers; ``await inbox.wait(n)`` for n messages."""

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

    async def wait(self, messages: int = 0, errors: int = 0, timeout: float = 5) -> None:
        async def until() -> None:
            while len(self.messages) < messages or len(self.errors) < errors:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)


def options(transport: str, local: Address, target: Address, n: int = 1) -> bytes:
    return (
        f"OPTIONS sip:{target[0]}:{target[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {local[0]}:{local[1]};branch=z9hG4bK-t{n}-{local[1]}\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=t{n}\r\nTo: <sip:{target[0]}:{target[1]}>\r\n"
        f"Call-ID: t{n}-{local[1]}@127.0.0.1\r\nCSeq: {n} OPTIONS\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


# ---------------------------------------------------------------- UDP


def test_udp_pair_exchanges_datagrams_and_counts_keepalives(run: Runner) -> None:
    async def main() -> None:
        a_in, b_in = Inbox(), Inbox()
        a = await UdpTransport.open(a_in.on_message, a_in.on_error)
        b = await UdpTransport.open(b_in.on_message, b_in.on_error, receive_buffer=1 << 20)
        a.send(b"\r\n\r\n", b.local_address)  # RFC 5626 keepalive: counted, not delivered
        a.send(options("UDP", a.local_address, b.local_address), b.local_address)
        await b_in.wait(1)
        b.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", b_in.messages[0][1])
        await a_in.wait(1)
        assert b_in.messages[0][0].startswith(b"OPTIONS ")
        assert b_in.messages[0][1] == a.local_address
        assert a_in.messages[0] == (b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", b.local_address)
        assert b.stats.keepalives_received == 1 and b.stats.messages_received == 1
        assert a.stats.messages_sent == 2 and a.name == "UDP"
        a.close()
        b.close()

    run(main)


def test_udp_send_after_close_is_reported_not_raised(run: Runner) -> None:
    async def main() -> None:
        inbox = Inbox()
        a = await UdpTransport.open(inbox.on_message, inbox.on_error)
        a.close()
        a.send(b"x", ("127.0.0.1", 9))
        assert inbox.errors[0].kind == "send" and inbox.errors[0].remote == ("127.0.0.1", 9)
        assert a.stats.dropped == 1

    run(main)


def test_udp_bind_conflict_is_a_resource_error(run: Runner) -> None:
    async def main() -> None:
        inbox = Inbox()
        a = await UdpTransport.open(inbox.on_message, inbox.on_error)
        with pytest.raises(ResourceError, match=str(a.local_address[1])):
            await UdpTransport.open(inbox.on_message, inbox.on_error, port=a.local_address[1])
        a.close()

    run(main)


def test_one_socket_per_endpoint_skips_taken_ports_and_reports_exhaustion(run: Runner) -> None:
    async def main() -> None:
        inbox = Inbox()
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        first = free_port(("udp",))
        port_range = (first, first + 3)
        try:
            blocker.bind(("127.0.0.1", first + 1))
        except OSError:
            pytest.skip("port next to a free one is taken by someone else")
        with blocker:
            endpoints = await open_udp_transports(
                2, lambda i: inbox.on_message, inbox.on_error, port_range=(first, first + 2)
            )
            assert [t.local_address[1] for t in endpoints] == [first, first + 2]
            for t in endpoints:
                t.close()
            with pytest.raises(ResourceError, match="port range"):
                await open_udp_transports(
                    4, lambda i: inbox.on_message, inbox.on_error, port_range=port_range
                )
            # all sockets opened before the failure were closed again
            again = await open_udp_transports(
                1, lambda i: inbox.on_message, inbox.on_error, port_range=(first, first)
            )
            again[0].close()

    run(main)


# ---------------------------------------------------------------- TCP


def test_tcp_request_and_response_share_one_connection(run: Runner) -> None:
    async def main() -> None:
        a_in, b_in = Inbox(), Inbox()
        a = await StreamTransport.open(a_in.on_message, a_in.on_error)
        b = await StreamTransport.open(b_in.on_message, b_in.on_error)
        target = b.local_address
        # two messages before the connection is even up: queued, then sent in order
        a.send(options("TCP", a.local_address, target, 1), target)
        a.send(options("TCP", a.local_address, target, 2), target)
        await b_in.wait(2)
        assert [m[0].split(b"\r\n")[5] for m in b_in.messages] == [
            b"CSeq: 1 OPTIONS",
            b"CSeq: 2 OPTIONS",
        ]
        peer = b_in.messages[0][1]
        b.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", peer)  # back over the same one
        await a_in.wait(1)
        assert a_in.messages[0][1] == target
        assert a.connections == [target] and b.connections == [peer]
        assert a.stats.connections_opened == 1 and b.stats.connections_opened == 1
        assert a.name == "TCP" and not a_in.errors and not b_in.errors
        a.close()
        b.close()
        await a.wait_closed()
        await b.wait_closed()

    run(main)


def test_tcp_connect_refused_is_reported_and_queue_dropped(run: Runner) -> None:
    async def main() -> None:
        inbox = Inbox()
        a = await StreamTransport.open(inbox.on_message, inbox.on_error)
        dead = ("127.0.0.1", free_port(("tcp",)))
        a.send(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n", dead)
        await inbox.wait(errors=1)
        error = inbox.errors[0]
        assert (error.transport, error.kind, error.remote) == ("TCP", "connect", dead)
        assert error.errno == errno.ECONNREFUSED
        assert a.stats.dropped == 1 and a.connections == []
        a.close()

    run(main)


async def _raw_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, Address]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    return server, (host, port)


def test_tcp_reconnects_after_peer_closed(run: Runner) -> None:
    received: list[bytes] = []

    async def one_message_then_close(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        received.append(await r.readuntil(b"\r\n\r\n"))
        w.close()

    async def main() -> None:
        inbox = Inbox()
        server, address = await _raw_server(one_message_then_close)
        a = await StreamTransport.open(inbox.on_message, inbox.on_error)
        msg = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n"
        a.send(msg, address)
        while a.connections or not received:  # until the server has hung up
            await asyncio.sleep(0.01)
        a.send(msg, address)
        while len(received) < 2:
            await asyncio.sleep(0.01)
        assert a.stats.connections_opened == 2 and received == [msg, msg]
        assert not inbox.errors  # a clean close by the peer is not an error
        a.close()
        server.close()

    run(main)


def test_tcp_garbage_from_peer_closes_connection_and_pings_get_pongs(run: Runner) -> None:
    async def main() -> None:
        inbox = Inbox()
        b = await StreamTransport.open(inbox.on_message, inbox.on_error)
        reader, writer = await asyncio.open_connection(*b.local_address)
        writer.write(b"\r\n\r\n")  # RFC 5626 ping
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
        writer.write(b"SIP/2.0 200 OK\r\nl: 0\r\n\r\nHELLO garbage\r\n\r\n")
        await inbox.wait(messages=1, errors=1)
        assert inbox.errors[0].kind == "framing" and "start-line" in inbox.errors[0].reason
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by b
        assert b.stats.keepalives_received == 1
        writer.close()
        b.close()

    run(main)


# ---------------------------------------------------------------- TLS


def test_tls_pair_with_custom_ca_and_sni(tmp_path: Path, run: Runner) -> None:
    certs = make_certificates(tmp_path, ("sip.example.test",))
    client = client_context(TlsSettings(verify="custom", ca_file=str(certs.ca)))
    server = server_context(str(certs.cert), str(certs.key))

    async def main() -> None:
        a_in, b_in = Inbox(), Inbox()
        a = await StreamTransport.open(a_in.on_message, a_in.on_error, client_tls=client)
        b = await StreamTransport.open(b_in.on_message, b_in.on_error, server_tls=server)
        a.send(options("TLS", a.local_address, b.local_address), b.local_address,
               server_name="sip.example.test")  # fmt: skip
        await b_in.wait(1)
        b.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", b_in.messages[0][1])
        await a_in.wait(1)
        assert a.name == b.name == "TLS" and not a_in.errors
        # wrong name: the certificate does not match, the handshake fails
        c = await StreamTransport.open(a_in.on_message, a_in.on_error, client_tls=client)
        c.send(b"OPTIONS sip:x SIP/2.0\r\nl: 0\r\n\r\n", b.local_address, server_name="other.test")
        await a_in.wait(1, errors=1)
        assert (
            a_in.errors[0].kind == "connect"
            and "CERTIFICATE_VERIFY_FAILED" in a_in.errors[0].reason
        )
        for t in (a, b, c):
            t.close()

    run(main)


def test_tls_settings_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tls\.ca_file"):
        client_context(TlsSettings(verify="custom"))
    with pytest.raises(ConfigError, match=r"tls\.verify"):
        client_context(TlsSettings(verify="maybe"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="together"):
        client_context(TlsSettings(cert_file=str(tmp_path / "c.pem")))
    with pytest.raises(ConfigError, match=r"tls\.ca_file"):
        client_context(TlsSettings(verify="custom", ca_file=str(tmp_path / "missing.pem")))
    context = client_context(TlsSettings(verify="skip"))
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    assert client_context(TlsSettings()).verify_mode == ssl.CERT_REQUIRED


# ---------------------------------------------------------------- timer


def test_timer_slot_keeps_one_handle_and_passes_now(run: Runner) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        slot = TimerSlot(loop, fired.append)
        start = loop.time()
        slot.arm(start + 10)
        slot.arm(start + 0.02)  # earlier deadline replaces the first
        assert slot.deadline == start + 0.02
        await asyncio.sleep(0.1)
        # uvloop's timers have 1 ms resolution and may fire up to 1 ms early
        assert len(fired) == 1 and fired[0] >= start + 0.02 - 0.001 and slot.deadline is None
        slot.arm(loop.time() + 0.01)
        slot.cancel()
        await asyncio.sleep(0.05)
        assert len(fired) == 1

    run(main)


def test_timer_slot_runs_a_deadline_once_though_the_loop_clock_lags_it(run: Runner) -> None:
    """uvloop runs a handle due in under 0.5 ms at once (call_at rounds to whole ms) with
    its millisecond clock short of the deadline: the slot must hand over the deadline as
    ``now``, or an owner that re-arms until its deadline is reached (as the Scheduler
    and the SIP runtime do) spins the loop until the clock ticks."""

    class Owner:
        def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
            self.deadline = deadline
            self.calls: list[float] = []
            self.slot = TimerSlot(loop, self.fire)

        def fire(self, now: float) -> None:
            self.calls.append(now)
            if now < self.deadline:  # nothing due yet: re-arm, as an owner does
                self.slot.arm(self.deadline)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for delay in (0.0002, 0.0004, 0.0013, 0.0027):
            owner = Owner(loop, loop.time() + delay)
            owner.slot.arm(owner.deadline)
            await asyncio.sleep(delay + 0.01)
            calls = owner.calls
            assert calls and calls[-1] >= owner.deadline, (delay, calls)
            assert len(calls) == 1, f"{len(calls)} wake-ups for one deadline {delay * 1000} ms out"

    run(main)


# ---------------------------------------------------------------- against Kamailio


@pytest.mark.peers
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_options_to_kamailio_gets_200(kamailio: Kamailio, transport: str, run: Runner) -> None:
    if transport == "tls" and kamailio.tls_port is None:
        pytest.skip("kamailio-tls-modules not installed")
    target = kamailio.address(transport)

    async def main() -> None:
        inbox = Inbox()
        if transport == "udp":
            t: UdpTransport | StreamTransport = await UdpTransport.open(
                inbox.on_message, inbox.on_error
            )
        else:
            tls = None
            if transport == "tls":
                assert kamailio.certs is not None
                tls = client_context(TlsSettings(verify="custom", ca_file=str(kamailio.certs.ca)))
            t = await StreamTransport.open(inbox.on_message, inbox.on_error, client_tls=tls)
        t.send(options(transport.upper(), t.local_address, target), target)
        await inbox.wait(1)
        data, remote = inbox.messages[0]
        assert data.startswith(b"SIP/2.0 200 "), data
        assert remote == target and not inbox.errors
        t.close()

    run(main)


def test_udp_burst_is_handled_in_order_a_slice_per_loop_callback(run: Runner) -> None:
    async def main() -> None:
        inbox = Inbox()
        a = await UdpTransport.open(inbox.on_message, inbox.on_error)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            for i in range(40):  # one burst, read by the loop in one or two readiness events
                peer.sendto(b"OPTIONS %d" % i, a.local_address)
            await inbox.wait(40)
        assert [m for m, _ in inbox.messages] == [b"OPTIONS %d" % i for i in range(40)]
        # what the loop does with a burst it read at once: RECEIVE_SLICE per callback
        inbox.messages.clear()
        for i in range(3 * RECEIVE_SLICE):
            a._datagram_received(b"BYE %d" % i, ("127.0.0.1", 5))
        assert inbox.messages == []
        await asyncio.sleep(0)
        assert len(inbox.messages) == RECEIVE_SLICE
        await inbox.wait(3 * RECEIVE_SLICE)
        assert [m for m, _ in inbox.messages] == [b"BYE %d" % i for i in range(3 * RECEIVE_SLICE)]
        a.close()

    run(main)


def test_udp_handler_failure_does_not_stall_the_queue_and_close_drops_it(run: Runner) -> None:
    async def main() -> None:
        seen: list[bytes] = []

        def handler(data: bytes, remote: Address) -> None:
            seen.append(data)
            if data == b"bad":
                raise RuntimeError("handler bug")

        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, _ctx: None)  # the loop logs it; here: quiet
        a = await UdpTransport.open(handler, Inbox().on_error)
        for data in (b"bad", *(b"m%d" % i for i in range(2 * RECEIVE_SLICE))):
            a._datagram_received(data, ("127.0.0.1", 5))
        for _ in range(5):
            await asyncio.sleep(0)
        assert seen == [b"bad", *(b"m%d" % i for i in range(2 * RECEIVE_SLICE))]
        for i in range(3 * RECEIVE_SLICE):
            a._datagram_received(b"late %d" % i, ("127.0.0.1", 5))
        a.close()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not any(m.startswith(b"late") for m in seen)

    run(main)
