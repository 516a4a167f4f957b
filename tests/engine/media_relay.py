"""A user-space UDP relay for media tests: drops and delays RTP on purpose, records what it did."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

Address = tuple[str, int]


@dataclass
class RelayLog:
    """What one direction of the relay did, by RTP sequence number relative to the first one."""

    dropped: list[int] = field(default_factory=list)
    forwarded: list[int] = field(default_factory=list)
    forwarded_at: list[float] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)


class _Leg(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.relay.receive(data)


class UdpRelay:
    """Forward datagrams arriving on ``port`` to ``target``; ``policy(index)`` decides.

    ``policy`` gets the 0-based index of the packet in arrival order and returns
    ``None`` to drop it or a delay in seconds. ``fifo=True`` never lets a packet
    overtake an earlier one (a delay stalls the queue, like a congested link);
    ``fifo=False`` delays packets individually, so later ones overtake them.
    """

    def __init__(
        self, target: Address, policy: Callable[[int], float | None], *, fifo: bool
    ) -> None:
        self.target = target
        self.policy = policy
        self.fifo = fifo
        self.log = RelayLog()
        self._count = 0
        self._release = 0.0
        self._first_seq: int | None = None
        self._in: asyncio.DatagramTransport | None = None
        self._out: asyncio.DatagramTransport | None = None

    async def open(self) -> int:
        """Bind on an ephemeral loopback port; return it."""
        loop = asyncio.get_running_loop()
        self._in, _ = await loop.create_datagram_endpoint(
            lambda: _Leg(self), local_addr=("127.0.0.1", 0)
        )
        self._out, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        return int(self._in.get_extra_info("sockname")[1])

    def receive(self, data: bytes) -> None:
        raw_seq, ts = struct.unpack_from("!HI", data, 2)
        if self._first_seq is None:
            self._first_seq = raw_seq
        seq = (raw_seq - self._first_seq) & 0xFFFF  # relative: the random start may wrap
        delay = self.policy(self._count)
        self._count += 1
        if delay is None:
            self.log.dropped.append(seq)
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        when = now + delay
        if self.fifo:
            when = max(when, self._release)
            self._release = when
        if when <= now:
            self._forward(data, seq, ts)
        else:
            loop.call_at(when, self._forward, data, seq, ts)

    def _forward(self, data: bytes, seq: int, ts: int) -> None:
        assert self._out is not None
        self._out.sendto(data, self.target)
        self.log.forwarded.append(seq)
        self.log.forwarded_at.append(asyncio.get_running_loop().time())
        self.log.timestamps.append(ts)

    def close(self) -> None:
        for transport in (self._in, self._out):
            if transport is not None:
                transport.close()


def expected_loss(log: RelayLog) -> int:
    """Packets lost as RFC 3550 A.3 sees them: dropped ones between the first and highest seen."""
    first, highest = log.forwarded[0], max(log.forwarded)
    return sum(1 for s in log.dropped if first < s < highest)


def expected_out_of_order(log: RelayLog) -> int:
    """Packets forwarded after a packet with a higher sequence number (no wrap in these tests)."""
    count, top = 0, -1
    for seq in log.forwarded:
        if seq < top:
            count += 1
        top = max(top, seq)
    return count


def reference_jitter(log: RelayLog, clock_rate: int) -> tuple[float, float]:
    """RFC 3550 §6.4.1 jitter (final, max) in ms from the relay's own forwarding times."""
    j = jmax = 0.0
    for i in range(1, len(log.forwarded)):
        ts_delta = ((log.timestamps[i] - log.timestamps[i - 1] + 2**31) % 2**32) - 2**31
        d = (log.forwarded_at[i] - log.forwarded_at[i - 1]) * clock_rate - ts_delta
        j += (abs(d) - j) / 16
        jmax = max(jmax, j)
    return j * 1000 / clock_rate, jmax * 1000 / clock_rate


def expected_gaps(log: RelayLog) -> int:
    """Forward jumps of more than one in the sequence as received (a hole opens)."""
    count, top = 0, None
    for seq in log.forwarded:
        if top is not None and seq > top + 1:
            count += 1
        top = seq if top is None else max(top, seq)
    return count
