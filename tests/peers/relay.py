"""A user-space UDP relay that loses and delays packets (the kernel here has no netem).

    with UdpRelay(target=("127.0.0.1", 5070), drop_every=10, delay=0.05, jitter=0.02) as relay:
        send to relay.address instead of the target ...
    relay.stats  # {"to_target": n, "to_client": n, "dropped": n}

Packets from anyone but the target go to the target, and the sender becomes
"the client"; packets from the target go back to the last client. Every
``drop_every``-th packet of each direction is dropped (0 = none); with
``match`` only packets for which ``match(data)`` is true are counted and
dropped (e.g. only SIP requests: SIPp cannot recover a lost ACK); each kept
packet waits ``delay`` s plus a uniform ``0..jitter`` s (seeded, so runs
repeat; jitter can reorder packets, as a real network does). It runs in a
daemon thread and stops on ``stop()`` or leaving the ``with`` block.
"""

from __future__ import annotations

import heapq
import random
import select
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

from .procs import LOOPBACK


class UdpRelay:
    def __init__(
        self,
        target: tuple[str, int],
        *,
        drop_every: int = 0,
        delay: float = 0.0,
        jitter: float = 0.0,
        seed: int = 1,
        match: Callable[[bytes], bool] | None = None,
        host: str = LOOPBACK,
    ) -> None:
        if drop_every < 0 or delay < 0 or jitter < 0:
            raise ValueError("drop_every, delay and jitter must be >= 0")
        self.target = target
        self.drop_every = drop_every
        self.delay = delay
        self.jitter = jitter
        self.match = match
        self._rng = random.Random(seed)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.address: tuple[str, int] = self._sock.getsockname()
        self.client: tuple[str, int] | None = None
        self.stats = {"to_target": 0, "to_client": 0, "dropped": 0}
        self._counts = {"to_target": 0, "to_client": 0}
        self._queue: list[tuple[float, int, bytes, tuple[str, int]]] = []
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="udp-relay", daemon=True)

    def start(self) -> UdpRelay:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> UdpRelay:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            while self._queue and self._queue[0][0] <= now:
                _, _, data, dest = heapq.heappop(self._queue)
                self._sock.sendto(data, dest)
            wait = min(0.05, self._queue[0][0] - now) if self._queue else 0.05
            readable, _, _ = select.select([self._sock], [], [], max(wait, 0))
            if readable:
                data, sender = self._sock.recvfrom(65535)
                self._route(data, sender)

    def _route(self, data: bytes, sender: tuple[str, int]) -> None:
        if sender == self.target:
            if self.client is None:
                return
            direction, dest = "to_client", self.client
        else:
            self.client = sender
            direction, dest = "to_target", self.target
        if self.match is None or self.match(data):
            self._counts[direction] += 1
            if self.drop_every and self._counts[direction] % self.drop_every == 0:
                self.stats["dropped"] += 1
                return
        self.stats[direction] += 1
        due = (
            time.monotonic()
            + self.delay
            + (self._rng.uniform(0, self.jitter) if self.jitter else 0)
        )
        self._seq += 1
        heapq.heappush(self._queue, (due, self._seq, data, dest))
