"""Micro-benchmark of the sans-I/O SIP core: full REGISTER + INVITE/180/200/ACK + BYE
flows between two stacks wired in memory (no sockets, no auth).

    python bench/sip_core_bench.py [FLOWS] [CONCURRENT]

Prints flows, transactions and messages per second of one CPU core. The figures
are only comparable on a quiet machine: on a shared box (other engineers' tests,
Kamailio, SIPp) they are lower bounds, and this is not a test (STYLE.md 23).
"""

from __future__ import annotations

import random
import sys
import time

from sipswarm.sip import (
    Account,
    CallAnswered,
    IncomingCall,
    RandomIdFactory,
    SipStack,
    StackConfig,
)
from sipswarm.sip.message import SipMessage, build_response, parse_message

SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" + (
    b"m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n"
)
A = ("127.0.0.1", 5001)
B = ("127.0.0.1", 5002)
R = ("127.0.0.1", 5003)


def registrar_answer(data: bytes) -> bytes:
    msg = parse_message(data)
    assert isinstance(msg, SipMessage)
    contact = msg.header("contact") or ""
    return build_response(
        msg, 200, "OK", A, to_tag="reg", extra=f"Contact: {contact};expires=300\r\n"
    )


def pump(a: SipStack, b: SipStack, now: float) -> int:
    moved = 0
    while True:
        batch_a = a.messages_to_send()
        batch_b = b.messages_to_send()
        if not batch_a and not batch_b:
            return moved
        for data, dest in batch_a:
            moved += 1
            if dest == R:
                a.receive_message(registrar_answer(data), R, now)
                moved += 1
            else:
                b.receive_message(data, A, now)
        for data, _ in batch_b:
            moved += 1
            a.receive_message(data, B, now)


def run(flows: int, concurrent: int) -> None:
    rng = random.Random(1)
    a = SipStack(StackConfig("127.0.0.1", 5001), RandomIdFactory(rng))
    b = SipStack(StackConfig("127.0.0.1", 5002), RandomIdFactory(rng))
    messages = 0
    now = 0.0
    t0 = time.perf_counter()
    for start in range(0, flows, concurrent):
        batch = range(start, min(flows, start + concurrent))
        for i in batch:
            acc = Account(f"u{i}", "127.0.0.1", "pw")
            a.register(("a", i), acc, "sip:127.0.0.1:5003", 300, now, contact_user=f"a{i}")
            b.listen(("b", i), f"b{i}")
            a.invite(("a", i), acc, f"sip:b{i}@127.0.0.1:5002", SDP, now)
        messages += pump(a, b, now)
        calls = []
        for ev in b.events_received():
            if isinstance(ev, IncomingCall):
                b.ring(ev.call, now)
                b.answer(ev.call, SDP, now)
        messages += pump(a, b, now)
        calls = [ev.call for ev in a.events_received() if isinstance(ev, CallAnswered)]
        assert len(calls) == len(batch), (len(calls), len(batch))
        for call in calls:
            a.bye(call, now)
        messages += pump(a, b, now)
        a.events_received()
        b.events_received()
        for i in batch:
            a.forget(("a", i))
            b.forget(("b", i))
        now += 1.0
        a.handle_timer(now)
        b.handle_timer(now)
    elapsed = time.perf_counter() - t0
    txns = flows * 3  # REGISTER, INVITE, BYE (ACK of a 2xx is not a transaction)
    print(f"flows={flows} concurrent={concurrent} elapsed={elapsed:.2f}s")
    print(f"  {flows / elapsed:9.0f} full flows/s (REGISTER + INVITE/180/200/ACK + BYE)")
    print(f"  {txns / elapsed:9.0f} transactions/s")
    print(f"  {messages / elapsed:9.0f} messages/s processed (both ends, each parsed once)")
    print(f"  {elapsed / messages * 1e6:9.1f} us per message, build + parse + state")
    print(f"  counters a: {dict(a.counters)}")


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    c = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    run(n, c)
