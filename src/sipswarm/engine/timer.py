"""One ``loop.call_at`` handle per sans-I/O core (STYLE.md rule 3).

A core says when it next needs the clock (``get_timer()``, an absolute
deadline on the loop's clock or None); the engine re-arms one
:class:`TimerSlot` after every input and every output flush::

    slot = TimerSlot(loop, lambda now: (stack.handle_timer(now), flush()))
    ...
    slot.arm(stack.get_timer())

Re-arming with the same deadline keeps the existing handle, so the common
case (an input that did not move the deadline) costs no allocation.

The callback gets ``max(loop.time(), deadline)``. uvloop's clock advances in
whole milliseconds, once per loop iteration, and ``call_at`` rounds the delay
to the nearest millisecond (under 0.5 ms it runs as ``call_soon``), so the
handle often runs while ``loop.time()`` is still short of the deadline. An
owner handed that time finds nothing due and re-arms the same deadline, and
the loop spins through whole iterations until its clock ticks over (measured:
~16 wasted wake-ups per call in a caller shard at 200 calls/s). asyncio's own
loop treats a handle as due within its clock resolution; so does this slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["TimerSlot"]


class TimerSlot:
    """Holds at most one pending ``call_at``; ``callback(now)`` runs when it fires."""

    __slots__ = ("_callback", "_deadline", "_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[float], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._deadline: float | None = None

    @property
    def deadline(self) -> float | None:
        """The armed deadline, or None when nothing is pending."""
        return self._deadline

    def arm(self, deadline: float | None) -> None:
        """Fire at ``deadline`` (loop clock) instead of any earlier arming; None disarms."""
        if deadline == self._deadline:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._deadline = deadline
        if deadline is not None:
            self._handle = self._loop.call_at(deadline, self._fire)

    def cancel(self) -> None:
        """Disarm; call when the core is done."""
        self.arm(None)

    def _fire(self) -> None:
        deadline = self._deadline
        self._handle = None
        self._deadline = None
        now = self._loop.time()
        self._callback(now if deadline is None or now >= deadline else deadline)
