"""``trace: failures``: an endpoint's SIP messages held until its outcome is known.

docs/protocol.md: the worker holds the first :data:`HEAD` and the last
:data:`TAIL` trace items of each endpoint, in order, and sends them just
before the endpoint's ``outcome`` only when that outcome is not SUCCESS.
The bound keeps a long-lived endpoint (a receiver taking calls for hours,
re-registering every few minutes) at a fixed memory cost: the beginning
says how it started, the tail how it failed. Next: :meth:`FailureTrace.add`
per message, :meth:`FailureTrace.items` once at close.

What is held is up to the owner: the endpoint holds each message's raw record
and builds the ``trace`` items only for an outcome that sends them, so the
calls that succeed (most of them) never pay for items nobody reads.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

__all__ = ["HEAD", "TAIL", "FailureTrace"]

#: Trace items kept from the start of an endpoint's life.
HEAD = 50
#: Trace items kept from the end (older ones beyond the head are dropped).
TAIL = 150

T = TypeVar("T")


class FailureTrace(Generic[T]):
    """The first ``head`` and last ``tail`` entries added; ``dropped`` counts the middle."""

    __slots__ = ("_head", "_head_size", "_tail", "dropped")

    def __init__(self, head: int = HEAD, tail: int = TAIL) -> None:
        self._head_size = head
        self._head: list[T] = []
        self._tail: deque[T] = deque(maxlen=tail)
        self.dropped = 0

    def add(self, item: T) -> None:
        """Hold one entry."""
        if len(self._head) < self._head_size:
            self._head.append(item)
            return
        if len(self._tail) == self._tail.maxlen:
            self.dropped += 1
        self._tail.append(item)

    def items(self) -> list[T]:
        """Everything held, in the order added (head, then tail)."""
        return [*self._head, *self._tail]

    def clear(self) -> None:
        """Forget everything (the outcome was SUCCESS, or the items were sent)."""
        self._head.clear()
        self._tail.clear()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._head) + len(self._tail)
