"""Injected randomness: branches, tags, Call-IDs and cnonces (STYLE.md rule 4).

The core never imports ``random``. A stack takes an :class:`IdFactory`;
production code passes :class:`RandomIdFactory` built on a ``random.Random``
(or ``secrets.SystemRandom``) instance it owns, tests pass
:class:`SequentialIdFactory` so that every byte on the wire is predictable.
"""

from __future__ import annotations

import zlib
from typing import Protocol

__all__ = [
    "BRANCH_MAGIC",
    "IdFactory",
    "RandomIdFactory",
    "RandomSource",
    "SequentialIdFactory",
    "draw",
]

BRANCH_MAGIC = "z9hG4bK"  # RFC 3261 8.1.1.7: every branch we create starts with it


class IdFactory(Protocol):
    """Source of the identifiers a SIP user agent must invent."""

    def branch(self) -> str:
        """A Via branch, starting with :data:`BRANCH_MAGIC`, unique in space and time."""

    def tag(self) -> str:
        """A From/To tag (RFC 3261 19.3), at least 32 bits of randomness."""

    def call_id(self) -> str:
        """A globally unique Call-ID (RFC 3261 8.1.1.4)."""

    def cnonce(self) -> str:
        """A digest client nonce (RFC 7616 3.4)."""


def draw(ids: IdFactory, steps: int) -> int:
    """A uniform integer in [0, steps) from ``ids``: its ``draw`` method if it has one
    (both factories here do), else derived from a fresh cnonce (any IdFactory)."""
    method = getattr(ids, "draw", None)
    if method is not None:
        return int(method(steps))
    return zlib.crc32(ids.cnonce().encode()) % steps


class RandomSource(Protocol):
    """The part of ``random.Random`` used here."""

    def getrandbits(self, k: int, /) -> int: ...


class RandomIdFactory:
    """Ids from a random source passed in, e.g. ``RandomIdFactory(random.Random())``.

    One ``getrandbits`` call per id keeps this cheap (well under a microsecond).
    """

    __slots__ = ("_rng",)

    def __init__(self, rng: RandomSource) -> None:
        self._rng = rng

    def branch(self) -> str:
        return f"{BRANCH_MAGIC}{self._rng.getrandbits(64):016x}"

    def tag(self) -> str:
        return f"{self._rng.getrandbits(48):012x}"

    def call_id(self) -> str:
        return f"{self._rng.getrandbits(96):024x}"

    def cnonce(self) -> str:
        return f"{self._rng.getrandbits(64):016x}"

    def draw(self, steps: int) -> int:
        """A uniform integer in [0, steps) (glare back-off, RFC 3261 14.1)."""
        return int(self._rng.getrandbits(32) * steps >> 32)


class SequentialIdFactory:
    """Deterministic ids for tests: ``z9hG4bK<prefix>b1``, ``<prefix>t1``, ``<prefix>c1``..."""

    __slots__ = ("_n", "_prefix")

    def __init__(self, prefix: str = "") -> None:
        self._prefix = prefix
        self._n = 0

    def _next(self, kind: str) -> str:
        self._n += 1
        return f"{self._prefix}{kind}{self._n}"

    def branch(self) -> str:
        return BRANCH_MAGIC + self._next("b")

    def tag(self) -> str:
        return self._next("t")

    def call_id(self) -> str:
        return self._next("c")

    def cnonce(self) -> str:
        return self._next("n")

    def draw(self, steps: int) -> int:
        """Always the middle of the range: predictable back-offs in tests."""
        return steps // 2
