"""Bounded memos: a dict of parse or build results that empties itself when full.

The hot paths remember what repeats from call to call (a dialog's From/To tags,
the proxy's URI, an SDP shape). Recent entries are what matters and a flood of
distinct values must not grow memory, so a full memo is simply emptied::

    parsed = _CSEQS.get(value)
    if parsed is None:
        parsed = remember(_CSEQS, value, _parse_cseq(value), MEMO_SIZE)

Pure (no I/O): the sans-I/O cores use it too.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["remember"]

K = TypeVar("K")
V = TypeVar("V")


def remember(memo: dict[K, V], key: K, value: V, size: int) -> V:
    """Store ``value`` under ``key`` (emptying ``memo`` first when it holds ``size``
    entries) and return it."""
    if len(memo) >= size:
        memo.clear()
    memo[key] = value
    return value
