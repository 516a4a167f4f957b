"""The sans-I/O core against a real peer: SIPp's built-in UAS and UAC on 127.0.0.1.

The test owns a plain UDP socket and a clock and drives the stack as the engine
will. SIPp is started and stopped by PID, bounded by ``timeout``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sipswarm.sip import (
    Account,
    CallAnswered,
    CallConfirmed,
    CallEnded,
    Event,
    IncomingCall,
    RandomIdFactory,
    SipStack,
    StackConfig,
)

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"),
]
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" + (
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    yield sock
    sock.close()


def sipp(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    cmd = [
        "timeout",
        "20",
        "sipp",
        "-i",
        "127.0.0.1",
        "-mi",
        "127.0.0.1",
        "-nostdin",
        "-m",
        "1",
        "-trace_err",
        *args,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/tmp")


def drive(
    stack: SipStack,
    sock: socket.socket,
    until: Callable[[Event], bool],
    on_event: Callable[[Event, float], None] | None = None,
    limit: float = 10.0,
) -> list[Event]:
    """Run the stack on the socket until an event satisfies ``until``."""
    seen: list[Event] = []
    start = time.monotonic()
    while time.monotonic() - start < limit:
        now = time.monotonic()
        for data, addr in stack.messages_to_send():
            sock.sendto(data, addr)
        for event in stack.events_received():
            seen.append(event)
            if on_event is not None:
                on_event(event, now)
            if until(event):
                for data, addr in stack.messages_to_send():
                    sock.sendto(data, addr)
                return seen
        try:
            data, addr = sock.recvfrom(65535)
        except TimeoutError:
            stack.handle_timer(time.monotonic())
            continue
        stack.receive_message(data, addr, time.monotonic())
    raise AssertionError(f"no final event within {limit}s; saw {seen}")


def stack_on(sock: socket.socket) -> SipStack:
    import random

    host, port = sock.getsockname()
    return SipStack(StackConfig(host, port), RandomIdFactory(random.Random()))


def stop(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_call_to_sipp_uas(udp: socket.socket, tmp_path: Path) -> None:
    port = free_port()
    proc = sipp(["-sn", "uas", "-p", str(port)], tmp_path)
    try:
        time.sleep(0.3)
        stack = stack_on(udp)
        acc = Account("alice", "127.0.0.1")
        call = stack.invite("alice", acc, f"sip:service@127.0.0.1:{port}", SDP, time.monotonic())
        events = drive(stack, udp, lambda e: isinstance(e, CallAnswered))
        assert call.answer_ts is not None and call.final_code == 200
        assert any(isinstance(e, CallAnswered) for e in events)
        stack.bye(call, time.monotonic())
        drive(stack, udp, lambda e: isinstance(e, CallEnded))
        assert call.ended_by == "local"
    finally:
        rc = stop(proc)
    assert rc == 0, proc.stderr.read() if proc.stderr else b""  # sipp: every call succeeded


def test_call_from_sipp_uac(udp: socket.socket, tmp_path: Path) -> None:
    stack = stack_on(udp)
    stack.listen("bob", "service")
    port = udp.getsockname()[1]
    proc = sipp(["-sn", "uac", "-p", str(free_port()), "-d", "200", f"127.0.0.1:{port}"], tmp_path)
    try:

        def answer(event: Event, now: float) -> None:
            if isinstance(event, IncomingCall):
                stack.ring(event.call, now)
                stack.answer(event.call, SDP, now)

        events = drive(stack, udp, lambda e: isinstance(e, CallEnded), answer)
        kinds = [type(e) for e in events]
        assert kinds == [IncomingCall, CallConfirmed, CallEnded]
        assert events[-1].by == "remote"  # type: ignore[union-attr]
    finally:
        rc = stop(proc)
    assert rc == 0, proc.stderr.read() if proc.stderr else b""
