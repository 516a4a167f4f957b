"""The ordered, acknowledged ``data`` stream of one worker process (sans-I/O).

Theory of operation
-------------------
Items (plain dicts, exactly as PROTOCOL.md ``data`` items) are appended with
:meth:`DataStream.append`. They wait in *pending* until the link asks for
:meth:`DataStream.frames_to_send` while connected; then they are *sealed* into
``data`` frames whose ``seq`` grows by one per frame over the life of the
process (``stream_id`` names that life, a uuid). A sealed frame is kept,
byte for byte, until an ``ack`` (or ``welcome.acked_seq``) covers it, and is
resent in order after every reconnect: :meth:`connection_made` rewinds the
send cursor to the first unacknowledged frame.

At most ``window_frames`` frames are in flight (sent, not acked), so sealed
frames stay few and a slow controller is not flooded; everything else waits
in pending, where it can still be dropped. The bytes held (pending plus
sealed) are bounded by ``max_bytes``: past it, pending ``metrics`` items are
dropped oldest first, then pending ``trace`` items oldest first (traces are
diagnostics whose volume grows with SIP traffic; docs/protocol.md), and a
``gap`` item per run says what went missing (``from_ts``, ``to_ts``,
``dropped_items``, plus ``dropped_kinds``). ``phase``, ``registration``,
``call``, ``outcome``, ``finished`` and ``gap`` items are never dropped; if
they alone exceed the bound the stream holds them anyway and counts it in
:attr:`over_bound`.

No clock, no socket: the link calls ``append``, ``frames_to_send``,
``receive_ack``, ``connection_made`` and ``connection_lost``.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sipswarm.protocol import MAX_FRAME_BYTES

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_FRAME_BYTES = 1024 * 1024
DEFAULT_MAX_ITEMS_PER_FRAME = 1000
DEFAULT_WINDOW_FRAMES = 64
DROP_ORDER = ("metrics", "trace")
"""Kinds that may be dropped when the buffer is full, in the order they are sacrificed."""
_FRAME_OVERHEAD = 64
_MAX_ITEM_CHARS = (MAX_FRAME_BYTES - _FRAME_OVERHEAD) // 4


@dataclass(slots=True)
class _Entry:
    kind: str
    run_id: str
    ts: int
    text: str
    gap: dict[str, Any] | None = None  # set on a gap entry, re-encoded when sealed
    dropped: bool = False
    sealed: bool = False


@dataclass(slots=True)
class _Frame:
    seq: int
    text: str


@dataclass(slots=True)
class StreamCounters:
    """Totals over the life of the stream, for /metrics and logs."""

    items_appended: int = 0
    frames_sealed: int = 0
    frames_resent: int = 0
    dropped_items: int = 0
    dropped_by_kind: dict[str, int] = field(default_factory=dict)
    oversize_dropped: int = 0
    stale_acks: int = 0
    future_acks: int = 0


class DataStream:
    """One process's data stream.

    Next: ``append`` items; after ``connection_made``, transmit ``frames_to_send``.
    """

    def __init__(
        self,
        stream_id: str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_items_per_frame: int = DEFAULT_MAX_ITEMS_PER_FRAME,
        window_frames: int = DEFAULT_WINDOW_FRAMES,
    ) -> None:
        self.stream_id = stream_id
        self.max_bytes = max_bytes
        self.max_frame_bytes = min(max_frame_bytes, MAX_FRAME_BYTES)
        self.max_items_per_frame = max_items_per_frame
        self.window_frames = window_frames
        self.counters = StreamCounters()
        self._pending: deque[_Entry] = deque()
        self._droppable: dict[str, deque[_Entry]] = {k: deque() for k in DROP_ORDER}
        self._open_gaps: dict[str, _Entry] = {}
        self._frames: deque[_Frame] = deque()
        self._cursor = 0  # index in _frames of the next frame to send on this connection
        self._connected = False
        self._last_seq = 0
        self._acked_seq = 0
        self._bytes = 0

    # ------------------------------------------------------------------ input

    def append(self, item: dict[str, Any]) -> None:
        """Queue one item (a ``data`` item dict); drops metrics/traces if over the bound."""
        text = _encode_item(item)
        kind = item.get("kind", "")
        ts = item.get("ts")
        entry = _Entry(
            kind if type(kind) is str else str(kind),
            str(item.get("run_id", "")),
            ts if isinstance(ts, int) and not isinstance(ts, bool) else 0,
            text,
        )
        self.counters.items_appended += 1
        # UTF-8 takes at most 4 bytes a character: only a long text needs encoding to measure
        if len(text) > _MAX_ITEM_CHARS and len(text.encode()) + _FRAME_OVERHEAD > MAX_FRAME_BYTES:
            self.counters.oversize_dropped += 1  # cannot be sent at all (PROTOCOL.md 16 MiB)
            if entry.kind in self._droppable:
                self._record_gap(entry)
            return
        self._push(entry)
        if self._bytes > self.max_bytes:
            self._enforce_bound()

    def receive_ack(self, seq: int) -> None:
        """An ``ack``: forget every frame up to ``seq``. Stale or future acks are counted."""
        if seq <= self._acked_seq:
            self.counters.stale_acks += 1
            return
        if seq > self._last_seq:
            self.counters.future_acks += 1
            seq = self._last_seq
        while self._frames and self._frames[0].seq <= seq:
            frame = self._frames.popleft()
            self._bytes -= len(frame.text)
            self._cursor = max(0, self._cursor - 1)
        self._acked_seq = max(self._acked_seq, seq)

    def connection_made(self, acked_seq: int | None) -> int:
        """``welcome`` received: apply its ``acked_seq``; return how many frames will be resent."""
        if acked_seq is not None:
            self.receive_ack(acked_seq)
        self._connected = True
        self._cursor = 0
        return len(self._frames)

    def connection_lost(self) -> None:
        """The connection is gone: stop sending; everything unacked stays for replay."""
        self._connected = False
        self._cursor = 0

    # ------------------------------------------------------------------ output

    def frames_to_send(self) -> list[tuple[int, str]]:
        """Frames to transmit now, in order: unacked ones not yet resent, then newly sealed ones.

        Returns ``[]`` when not connected. Sealing stops when ``window_frames``
        frames are in flight; call again after the next ``receive_ack``.
        """
        if not self._connected:
            return []
        out: list[tuple[int, str]] = []
        while self._cursor < len(self._frames):
            frame = self._frames[self._cursor]
            self.counters.frames_resent += 1
            out.append((frame.seq, frame.text))
            self._cursor += 1
        while self._pending and len(self._frames) < self.window_frames:
            sealed = self._seal()
            if sealed is None:
                break
            out.append((sealed.seq, sealed.text))
            self._cursor += 1
        return out

    # ------------------------------------------------------------------ state

    def resume(self) -> dict[str, Any] | None:
        """``hello.resume``: None while this process has sealed no frame (a fresh start)."""
        if self._last_seq == 0:
            return None
        return {"stream": self.stream_id, "last_seq": self._last_seq}

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def acked_seq(self) -> int:
        return self._acked_seq

    @property
    def unacked_frames(self) -> int:
        return len(self._frames)

    @property
    def pending_items(self) -> int:
        return sum(1 for e in self._pending if not e.dropped)

    @property
    def buffered_bytes(self) -> int:
        """Bytes held: pending items plus sealed, unacknowledged frames."""
        return self._bytes

    @property
    def over_bound(self) -> bool:
        """True when undroppable items alone hold the stream above ``max_bytes``."""
        return self._bytes > self.max_bytes

    @property
    def all_acked(self) -> bool:
        """Nothing pending and nothing unacknowledged: safe to close (drain)."""
        return not self._frames and not any(not e.dropped for e in self._pending)

    # ------------------------------------------------------------------ internals

    def _push(self, entry: _Entry) -> None:
        self._pending.append(entry)
        self._bytes += len(entry.text)
        queue = self._droppable.get(entry.kind)
        if queue is not None:
            queue.append(entry)

    def _enforce_bound(self) -> None:
        while self._bytes > self.max_bytes:
            victim = self._oldest_droppable()
            if victim is None:
                return
            victim.dropped = True
            self._bytes -= len(victim.text)
            self._record_gap(victim)

    def _oldest_droppable(self) -> _Entry | None:
        for kind in DROP_ORDER:
            queue = self._droppable[kind]
            while queue:
                entry = queue.popleft()
                if not entry.sealed and not entry.dropped:
                    return entry
        return None

    def _record_gap(self, victim: _Entry) -> None:
        """Count a dropped item in its run's open gap item (created at the end of pending)."""
        self.counters.dropped_items += 1
        by_kind = self.counters.dropped_by_kind
        by_kind[victim.kind] = by_kind.get(victim.kind, 0) + 1
        gap_entry = self._open_gaps.get(victim.run_id)
        if gap_entry is None or gap_entry.sealed:
            fresh: dict[str, Any] = {
                "kind": "gap",
                "run_id": victim.run_id,
                "from_ts": victim.ts,
                "to_ts": victim.ts,
                "dropped_items": 0,
                "dropped_kinds": {},
            }
            gap_entry = _Entry("gap", victim.run_id, victim.ts, _encode(fresh), gap=fresh)
            self._open_gaps[victim.run_id] = gap_entry
            self._push(gap_entry)
        gap: dict[str, Any] | None = gap_entry.gap
        assert gap is not None
        gap["from_ts"] = min(gap["from_ts"], victim.ts)
        gap["to_ts"] = max(gap["to_ts"], victim.ts)
        gap["dropped_items"] += 1
        gap["dropped_kinds"][victim.kind] = gap["dropped_kinds"].get(victim.kind, 0) + 1

    def _seal(self) -> _Frame | None:
        texts: list[str] = []
        size = _FRAME_OVERHEAD
        while self._pending and len(texts) < self.max_items_per_frame:
            entry = self._pending[0]
            if entry.dropped:
                self._pending.popleft()
                continue
            if entry.gap is not None:
                self._bytes -= len(entry.text)
                entry.text = _encode(entry.gap)
                self._bytes += len(entry.text)
            if texts and size + len(entry.text) + 1 > self.max_frame_bytes:
                break
            self._pending.popleft()
            entry.sealed = True
            texts.append(entry.text)
            size += len(entry.text) + 1
        if not texts:
            return None
        self._last_seq += 1
        text = f'{{"type":"data","seq":{self._last_seq},"items":[{",".join(texts)}]}}'
        # The items' bytes are now held by the frame instead of pending.
        self._bytes += len(text) - sum(len(t) for t in texts)
        frame = _Frame(self._last_seq, text)
        self._frames.append(frame)
        self.counters.frames_sealed += 1
        return frame


def _encode(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


_ITEM_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)


def _item_encoder() -> Callable[[dict[str, Any]], str]:
    """``json.dumps(item, separators=(",", ":"), ensure_ascii=False, default=str)``, made once.

    Why: every item of a run passes here (ten per call of a caller), and
    ``json.dumps`` with arguments builds a JSONEncoder and then its C encoder
    for each one: half of the ~4.6 µs an item took (bench/item_pipe.py). This is
    the C encoder that ``JSONEncoder.encode`` makes, made once; the same bytes.
    No circular-reference check (items are trees built by the engine).
    """
    make = _c_make_encoder
    if make is None:  # an interpreter without the json C accelerator
        return _ITEM_ENCODER.encode
    chunks = make(None, str, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    join = "".join

    def encode(item: dict[str, Any]) -> str:
        return join(chunks(item, 0))

    return encode


_encode_item = _item_encoder()
