"""One heap of deadlines for every transaction, dialog and registration.

Theory of operation
-------------------
A stack serves thousands of transactions, each with a few timers (RFC 3261
§17). Scanning them per tick would cost O(n); instead every deadline goes into
one binary heap and :meth:`Timers.next_deadline` is the stack's
``get_timer()``. Cancelling is lazy: the heap entry stays, the ``_live``
dict forgets it, and a stale entry is skipped when it reaches the top. When
stale entries outnumber live ones three to one the heap is rebuilt, so memory
stays proportional to live timers and every operation is amortised O(log n).

A target is any object with ``on_timer(name, now)``; it holds at most one
deadline per timer name (setting it again replaces the previous one).
"""

from __future__ import annotations

import heapq
from typing import Protocol

__all__ = ["TimerTarget", "Timers"]


class TimerTarget(Protocol):
    """Something that owns named timers."""

    def on_timer(self, name: str, now: float) -> None:
        """Timer ``name`` reached its deadline; ``now`` is at or after it."""


_Key = tuple[TimerTarget, str]


class Timers:
    """Deadline heap with lazy deletion. Call :meth:`fire_due` from ``handle_timer``."""

    __slots__ = ("_heap", "_live", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerTarget, str]] = []
        self._live: dict[_Key, int] = {}
        self._seq = 0

    def __len__(self) -> int:
        """Number of armed (live) timers."""
        return len(self._live)

    def set(self, target: TimerTarget, name: str, deadline: float) -> None:
        """Arm (or re-arm) ``target``'s timer ``name`` for absolute time ``deadline``."""
        self._seq += 1
        self._live[(target, name)] = self._seq
        heapq.heappush(self._heap, (deadline, self._seq, target, name))
        if len(self._heap) > 1024 and len(self._heap) > 4 * len(self._live):
            self._compact()

    def cancel(self, target: TimerTarget, name: str) -> None:
        """Disarm ``target``'s timer ``name``; no-op if it is not armed."""
        self._live.pop((target, name), None)

    def cancel_all(self, target: TimerTarget, names: tuple[str, ...]) -> None:
        """Disarm several timers of one target."""
        for name in names:
            self._live.pop((target, name), None)

    def is_set(self, target: TimerTarget, name: str) -> bool:
        """True if ``target``'s timer ``name`` is armed."""
        return (target, name) in self._live

    def next_deadline(self) -> float | None:
        """Earliest live deadline, or None when nothing is armed."""
        heap = self._heap
        live = self._live
        while heap:
            deadline, seq, target, name = heap[0]
            if live.get((target, name)) == seq:
                return deadline
            heapq.heappop(heap)
        return None

    def fire_due(self, now: float) -> int:
        """Fire every live timer with deadline <= ``now``, in deadline order.

        Timers armed by a callback that are already due fire in the same call.
        Returns the number fired.
        """
        heap = self._heap
        live = self._live
        fired = 0
        while heap and heap[0][0] <= now:
            _, seq, target, name = heapq.heappop(heap)
            key = (target, name)
            if live.get(key) != seq:
                continue
            del live[key]
            fired += 1
            target.on_timer(name, now)
        return fired

    def _compact(self) -> None:
        live = self._live
        self._heap = [e for e in self._heap if live.get((e[2], e[3])) == e[1]]
        heapq.heapify(self._heap)
