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
