"""Micro-benchmark of the sans-I/O SIP core, two stacks wired in memory (no sockets).

    python bench/sip_core_bench.py [--flows N] [--concurrent C] [--repeat R] [--gc-tuned]

Two measurements:

* ``flows``: REGISTER + INVITE/180/200/ACK + BYE between two stacks (the
  registrar's 200 is built by the bench). Every message is built once and
  parsed once, so "per message" is build + parse + state of both ends.
* ``caller``: what one calling endpoint costs through a proxy that challenges
  every INVITE (as Kamailio does in the test bed): INVITE, 407, ACK, INVITE
  with Proxy-Authorization, 100, 180, 200, ACK, BYE, 200 = 10 messages on the
  caller side. Only the time spent inside the caller's stack is counted (the
  callee is another stack, the 407 is built by the bench).

Times are process CPU (``time.process_time``/``perf_counter`` inside the
caller), best of ``--repeat`` runs. ``--gc-tuned`` runs with
``gc.freeze()`` and ``gc.set_threshold(50_000, 20, 100)``, what an engine
shard can do. The figures are only comparable on a quiet machine: on a
shared box they are upper bounds, and this is not a test (STYLE.md 23).
"""

from __future__ import annotations

import argparse
import gc
import random
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
CHALLENGE = (
    'Proxy-Authenticate: Digest realm="127.0.0.1", nonce="5f2a0c7e0000aa11bb22cc33", qop="auth"\r\n'
)


def registrar_answer(data: bytes) -> bytes:
    msg = parse_message(data)
    assert isinstance(msg, SipMessage)
    contact = msg.header("contact") or ""
    return build_response(
        msg, 200, "OK", A, to_tag="reg", extra=f"Contact: {contact};expires=300\r\n"
    )


def pump(a: SipStack, b: SipStack, now: float, proxy: bool = False) -> tuple[int, float]:
    """Move messages until both are idle; returns (messages, seconds spent in ``a``)."""
    moved = 0
    in_a = 0.0
    clock = time.perf_counter
    while True:
        t = clock()
        batch_a = a.messages_to_send()
        in_a += clock() - t
        batch_b = b.messages_to_send()
        if not batch_a and not batch_b:
            return moved, in_a
        for data, dest in batch_a:
            moved += 1
            if dest == R:
                answer = registrar_answer(data)
            elif proxy and data.startswith(b"INVITE") and b"Proxy-Authorization" not in data:
                answer = challenge(data)
            elif proxy and data.startswith(b"ACK") and b"CSeq: 1 ACK" in data:
                continue  # the ACK of the 407 stays at the proxy
            else:
                b.receive_message(data, A, now)
                continue
            moved += 1
            t = clock()
            a.receive_message(answer, R if dest == R else B, now)
            in_a += clock() - t
        for data, _ in batch_b:
            moved += 1
            t = clock()
            a.receive_message(data, B, now)
            in_a += clock() - t


def challenge(data: bytes) -> bytes:
    msg = parse_message(data)
    assert isinstance(msg, SipMessage)
    return build_response(
        msg, 407, "Proxy Authentication Required", A, to_tag="px", extra=CHALLENGE
    )


def stacks() -> tuple[SipStack, SipStack]:
    rng = random.Random(1)
    a = SipStack(StackConfig("127.0.0.1", 5001), RandomIdFactory(rng))
    b = SipStack(StackConfig("127.0.0.1", 5002), RandomIdFactory(rng))
    return a, b


def run_flows(flows: int, concurrent: int, caller: bool) -> tuple[int, float, float]:
    """(messages, process CPU seconds, seconds inside stack ``a``)."""
    a, b = stacks()
    messages = 0
    in_a = 0.0
    now = 0.0
    clock = time.perf_counter
    cpu0 = time.process_time()
    for start in range(0, flows, concurrent):
        batch = range(start, min(flows, start + concurrent))
        t = clock()
        for i in batch:
            acc = Account(f"u{i}", "127.0.0.1", "pw")
            if not caller:
                a.register(("a", i), acc, "sip:127.0.0.1:5003", 300, now, contact_user=f"a{i}")
            b.listen(("b", i), f"b{i}")
            a.invite(("a", i), acc, f"sip:b{i}@127.0.0.1:5002", SDP, now)
        in_a += clock() - t
        moved, spent = pump(a, b, now, proxy=caller)
        messages, in_a = messages + moved, in_a + spent
        for ev in b.events_received():
            if isinstance(ev, IncomingCall):
                b.ring(ev.call, now)
                b.answer(ev.call, SDP, now)
        moved, spent = pump(a, b, now, proxy=caller)
        messages, in_a = messages + moved, in_a + spent
        t = clock()
        calls = [ev.call for ev in a.events_received() if isinstance(ev, CallAnswered)]
        assert len(calls) == len(batch), (len(calls), len(batch))
        for call in calls:
            a.bye(call, now)
        in_a += clock() - t
        moved, spent = pump(a, b, now, proxy=caller)
        messages, in_a = messages + moved, in_a + spent
        t = clock()
        a.events_received()
        for i in batch:
            a.forget(("a", i))
        now += 1.0
        a.handle_timer(now)
        in_a += clock() - t
        b.events_received()
        for i in batch:
            b.forget(("b", i))
        b.handle_timer(now)
    return messages, time.process_time() - cpu0, in_a


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, default=5000)
    parser.add_argument("--concurrent", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gc-tuned", action="store_true")
    args = parser.parse_args()
    if args.gc_tuned:
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
    best_flow = min(run_flows(args.flows, args.concurrent, False)[1] for _ in range(args.repeat))
    n_flow = args.flows * 9
    callers = [run_flows(args.flows, args.concurrent, True) for _ in range(args.repeat)]
    best_caller = min(c[2] for c in callers)
    gc_mode = "tuned (freeze, threshold 50000/20/100)" if args.gc_tuned else "default"
    print(f"flows={args.flows} concurrent={args.concurrent} repeat={args.repeat} gc={gc_mode}")
    print("flows (REGISTER + INVITE/180/200/ACK + BYE, both ends in one process):")
    print(f"  {args.flows / best_flow:9.0f} flows/s of CPU, {n_flow / best_flow:9.0f} messages/s")
    print(f"  {best_flow / n_flow * 1e6:9.1f} us per message (build + parse + state, both ends)")
    print("caller through a challenging proxy (10 messages per call on the caller side):")
    print(f"  {best_caller / args.flows * 1e6:9.1f} us of caller-stack time per call")
    print(f"  {best_caller / args.flows / 10 * 1e6:9.1f} us per caller-side message")


if __name__ == "__main__":
    main()
