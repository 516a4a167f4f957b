"""One deadline heap for every endpoint timer of a process, on one ``loop.call_at``.

Endpoints need a few timers each (start time, answer delay, call duration,
idle timeout, a close guard). A ``loop.call_at`` per timer would put tens of
thousands of handles into the loop's own heap and allocate one per arming; a
:class:`Scheduler` keeps its own heap of ``(deadline, seq, entry)`` and one
:class:`~sipswarm.engine.timer.TimerSlot` armed at the earliest deadline.
Cancelling is O(1) (the entry is marked and skipped when it surfaces)::

    scheduler = Scheduler(loop)
    handle = scheduler.call_at(loop.time() + 5, endpoint.hang_up)   # callback(now)
    handle.cancel()

Callbacks get the loop time at which they run. An exception in a callback is
counted in :attr:`Scheduler.errors` and handed to ``on_error``; it never
stops the other callbacks due at the same time.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable

from sipswarm.engine.timer import TimerSlot

__all__ = ["ScheduledCall", "Scheduler"]

Callback = Callable[[float], None]


def _spent(now: float) -> None:
    """The callback of a cancelled or fired :class:`ScheduledCall`."""


class ScheduledCall:
    """A pending callback; :meth:`cancel` it if it must not run.

    Once cancelled or run it drops its callback, so an owner that keeps its
    handle (an endpoint's timers, a run's metrics tick) is not on a reference
    cycle through it, and nothing waits in the heap for the deadline to free
    what the callback holds.
    """

    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callback) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Never run the callback (O(1); the heap entry is skipped later)."""
        self.cancelled = True
        self.callback = _spent


class Scheduler:
    """Deadline heap on one timer slot. Next: :meth:`call_at`, :meth:`close` at exit."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, ScheduledCall]] = []
        self._seq = 0
        self._slot = TimerSlot(loop, self._fire)
        self._on_error = on_error
        self.errors = 0

    def __len__(self) -> int:
        return len(self._heap)

    def call_at(self, deadline: float, callback: Callback) -> ScheduledCall:
        """Run ``callback(now)`` at ``deadline`` (loop clock); returns the cancel handle."""
        entry = ScheduledCall(deadline, callback)
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, entry))
        if self._heap[0][2] is entry:
            self._slot.arm(deadline)
        return entry

    def call_later(self, delay: float, callback: Callback) -> ScheduledCall:
        """:meth:`call_at` ``delay`` seconds from now."""
        return self.call_at(self._loop.time() + max(0.0, delay), callback)

    def close(self) -> None:
        """Drop every pending callback."""
        self._heap.clear()
        self._slot.cancel()

    def _fire(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, entry = heapq.heappop(heap)
            if entry.cancelled:
                continue
            entry.cancelled = True
            callback, entry.callback = entry.callback, _spent
            try:
                callback(now)
            except Exception as exc:  # one endpoint's bug must not stop the others
                self.errors += 1
                if self._on_error is not None:
                    self._on_error(exc)
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        self._slot.arm(heap[0][0] if heap else None)
