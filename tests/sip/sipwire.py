"""In-memory wiring of stacks for tests: ``transfer(a, b)`` and a tiny network."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sipswarm.sip.config import StackConfig, TimerConfig
from sipswarm.sip.events import Event
from sipswarm.sip.ids import SequentialIdFactory
from sipswarm.sip.stack import SipStack

Address = tuple[str, int]


def make_stack(port: int, prefix: str, transport: str = "udp", **timers: float) -> SipStack:
    config = StackConfig("127.0.0.1", port, transport, timers=TimerConfig(**timers))
    return SipStack(config, SequentialIdFactory(prefix))


def addr(stack: SipStack) -> Address:
    return (stack.config.local_host, stack.config.local_port)


def transfer(a: SipStack, b: SipStack, now: float) -> list[bytes]:
    """Deliver every message ``a`` queued for ``b``'s address; return them."""
    delivered = []
    for data, dest in a.messages_to_send():
        assert dest == addr(b), f"{dest} is not {addr(b)}"
        b.receive_message(data, addr(a), now)
        delivered.append(data)
    return delivered


@dataclass
class Net:
    """Stacks by address; ``run`` delivers until nothing is queued."""

    stacks: list[SipStack]
    log: list[tuple[Address, Address, bytes]] = field(default_factory=list)
    drop: Callable[[bytes], bool] = lambda data: False
    events: dict[Address, list[Event]] = field(default_factory=dict)

    def run(self, now: float) -> int:
        moved = 0
        by_addr = {addr(s): s for s in self.stacks}
        while True:
            batch = [(s, d, dest) for s in self.stacks for d, dest in s.messages_to_send()]
            if not batch:
                break
            for src, data, dest in batch:
                self.log.append((addr(src), dest, data))
                if self.drop(data):
                    continue
                by_addr[dest].receive_message(data, addr(src), now)
                moved += 1
        for s in self.stacks:
            self.events.setdefault(addr(s), []).extend(s.events_received())
        return moved

    def tick(self, now: float) -> None:
        for s in self.stacks:
            s.handle_timer(now)
        self.run(now)

    def ev(self, stack: SipStack) -> list[Event]:
        out = self.events.get(addr(stack), [])
        self.events[addr(stack)] = []
        return out


def header(data: bytes, name: str) -> str:
    """First value of header ``name`` in raw message ``data`` (test-side, independent)."""
    for line in data.decode().split("\r\n")[1:]:
        if not line:
            break
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    raise KeyError(name)


def start_line(data: bytes) -> str:
    return data.decode().split("\r\n", 1)[0]


def status_of(data: bytes) -> int:
    return int(start_line(data).split()[1])


def reply(
    request: bytes,
    status: int,
    reason: str = "X",
    *,
    to_tag: str | None = None,
    extra: str = "",
    body: bytes = b"",
) -> bytes:
    """A response to ``request`` written by hand, as a peer would (not by the stack)."""
    lines = [f"SIP/2.0 {status} {reason}"]
    for line in request.decode().split("\r\n")[1:]:
        if not line:
            break
        key = line.partition(":")[0].strip().lower()
        if key in ("via", "from", "call-id", "cseq"):
            lines.append(line)
        elif key == "to":
            lines.append(line + (f";tag={to_tag}" if to_tag and ";tag=" not in line else ""))
    text = "\r\n".join(lines) + "\r\n" + extra + f"Content-Length: {len(body)}\r\n\r\n"
    return text.encode() + body


def request(
    method: str,
    ruri: str,
    *,
    branch: str,
    call_id: str = "peer-call-1",
    cseq: int = 1,
    from_tag: str = "peer1",
    to: str = "<sip:bob@127.0.0.1:5070>",
    extra: str = "",
    body: bytes = b"",
    via_host: str = "127.0.0.1:5099",
) -> bytes:
    """A request written by hand, as a peer would send it."""
    text = (
        f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {via_host};branch={branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:carol@127.0.0.1>;tag={from_tag}\r\nTo: {to}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return text.encode() + body


def advance(stack: SipStack, until: float) -> list[tuple[float, bytes]]:
    """Fire timers in deadline order up to ``until``; return (time, message) sent."""
    sent: list[tuple[float, bytes]] = []
    while (deadline := stack.get_timer()) is not None and deadline <= until:
        stack.handle_timer(deadline)
        sent.extend((deadline, data) for data, _ in stack.messages_to_send())
    return sent
