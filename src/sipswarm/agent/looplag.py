"""Event-loop lag probe: how late the loop runs a callback that should run now.

A late loop makes the generator, not the system under test, look bad, so it
is measured and reported (``heartbeat.loop_lag_ms_p99``, ``/metrics``). The
probe sleeps ``interval`` seconds again and again and records how much later
than asked it woke; :meth:`LoopLagProbe.p99_ms` is the 99th percentile of the
last ``window_s`` seconds of samples.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import numpy as np


class LoopLagProbe:
    """Next: ``start()`` inside the running loop; read ``p99_ms()``; ``stop()`` at exit."""

    def __init__(self, interval_s: float = 0.1, window_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._samples: deque[float] = deque(maxlen=max(1, int(window_s / interval_s)))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def record(self, lag_s: float) -> None:
        """Add one sample (seconds late); the probe calls it, tests may too."""
        self._samples.append(max(0.0, lag_s))

    def p99_ms(self) -> float:
        """99th percentile of recent lag in ms (0.0 before the first sample)."""
        if not self._samples:
            return 0.0
        return round(float(np.percentile(np.fromiter(self._samples, float), 99)) * 1000, 3)

    def max_ms(self) -> float:
        return round(max(self._samples, default=0.0) * 1000, 3)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.record(loop.time() - asked)
