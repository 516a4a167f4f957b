"""DTMF as RTP events (RFC 4733): a sender that plans the packets, a receiver that detects digits.

Theory of operation
-------------------
An RFC 4733 event payload is four octets::

     0                   1                   2                   3
    |     event     |E|R| volume    |          duration             |

Every packet of one key press carries the *same* RTP timestamp (the start of the event) and a
growing duration; the first has the marker bit; the last says E (end) and is sent three times
(§2.5.1.4) because nothing acknowledges it. The next key press gets a new timestamp.

:class:`DtmfSender` turns digits into a list of :class:`DtmfPacket`, each with the time to send
it (``send_offset_ms`` from now) and the timestamp offset to add to the stream's timestamp at the
start; the engine sends them in place of audio on the same SSRC and sequence numbers.

:class:`DtmfReceiver` is fed every payload of the negotiated telephone-event type with its
RTP timestamp; ``events_received()`` yields each key press once: retransmitted end packets and
reordered packets of a recent event are recognised by their (timestamp, event) and dropped.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from dataclasses import dataclass

from sipswarm.errors import ConfigError

__all__ = [
    "DIGITS",
    "DtmfEvent",
    "DtmfPacket",
    "DtmfReceiver",
    "DtmfSender",
    "build_event_payload",
    "parse_event_payload",
]

DIGITS = "0123456789*#ABCD"  # RFC 4733 §3.2 Table 7: events 0-15
_EVENT_OF = {d: i for i, d in enumerate(DIGITS)}
_PAYLOAD = struct.Struct("!BBH")
END_REPEATS = 3  # RFC 4733 §2.5.1.4: the final packet is sent three times
MAX_DURATION = 0xFFFF  # 16-bit duration field (longer events need segments, §2.5.1.3)
RECENT_EVENTS = 16


def build_event_payload(event: int, end: bool, volume: int, duration: int) -> bytes:
    """The 4-octet payload of RFC 4733 §2.3 (R bit zero)."""
    return _PAYLOAD.pack(event, (0x80 if end else 0) | (volume & 0x3F), duration & 0xFFFF)


def parse_event_payload(payload: bytes) -> tuple[int, bool, int, int] | None:
    """(event, end, volume, duration), or ``None`` when the payload is shorter than 4 octets."""
    if len(payload) < 4:
        return None
    event, flags, duration = _PAYLOAD.unpack_from(payload)
    return event, bool(flags & 0x80), flags & 0x3F, duration


@dataclass(frozen=True, slots=True)
class DtmfPacket:
    """One RTP packet to send: put ``payload`` in an RTP packet of the telephone-event type.

    ``timestamp_offset`` (clock units) and ``send_offset_ms`` are relative to the start of the
    digit sequence; ``marker`` is the RTP marker bit.
    """

    payload: bytes
    timestamp_offset: int
    marker: bool
    is_end: bool
    send_offset_ms: int
    digit: str


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """A key press detected by :class:`DtmfReceiver` (reported once, at its first packet)."""

    digit: str
    event: int
    timestamp: int
    volume: int


class DtmfSender:
    """Plans RFC 4733 packets for a string of digits; call :meth:`packets` per action.

    ``duration_ms`` is each tone's length, ``gap_ms`` the pause after its end packets,
    ``volume`` the power in -dBm0 (0-63), ``clock_rate`` the telephone-event clock (the audio
    codec's RTP clock, RFC 4733 §2.3.1), ``ptime_ms`` the packet interval.
    """

    def __init__(
        self,
        clock_rate: int = 8000,
        ptime_ms: int = 20,
        duration_ms: int = 100,
        gap_ms: int = 100,
        volume: int = 10,
    ) -> None:
        if ptime_ms <= 0 or duration_ms < ptime_ms:
            raise ConfigError(
                f"DTMF duration_ms ({duration_ms}) must be at least one ptime ({ptime_ms} ms)"
            )
        if duration_ms * clock_rate // 1000 > MAX_DURATION:
            raise ConfigError(
                f"DTMF duration_ms {duration_ms} exceeds the 16-bit duration field at "
                f"{clock_rate} Hz (max {MAX_DURATION * 1000 // clock_rate} ms)"
            )
        if not 0 <= volume <= 63:
            raise ConfigError(f"DTMF volume must be 0-63 (-dBm0), got {volume}")
        if gap_ms < 0:
            raise ConfigError(f"DTMF gap_ms must be >= 0, got {gap_ms}")
        self.clock_rate = clock_rate
        self.ptime_ms = ptime_ms
        self.duration_ms = duration_ms
        self.gap_ms = gap_ms
        self.volume = volume

    def _event_packets(self, digit: str, start_ms: int) -> list[DtmfPacket]:
        event = _EVENT_OF[digit]
        step = self.clock_rate * self.ptime_ms // 1000
        count = math.ceil(self.duration_ms / self.ptime_ms)
        ts = start_ms * self.clock_rate // 1000
        out = []
        for i in range(count - 1):  # RFC 4733 §2.5.1.2: updates with a growing duration
            payload = build_event_payload(event, False, self.volume, (i + 1) * step)
            out.append(DtmfPacket(payload, ts, i == 0, False, start_ms + i * self.ptime_ms, digit))
        final = build_event_payload(event, True, self.volume, count * step)
        for j in range(END_REPEATS):
            at = start_ms + (count - 1 + j) * self.ptime_ms
            out.append(DtmfPacket(final, ts, count == 1 and j == 0, True, at, digit))
        return out

    def packets(self, digits: str) -> list[DtmfPacket]:
        """Every packet for ``digits`` (0-9, *, #, A-D), in send order."""
        bad = sorted({d for d in digits.upper() if d not in _EVENT_OF})
        if bad:
            raise ConfigError(f"DTMF digits may be 0-9, *, #, A-D; got {''.join(bad)!r}")
        out: list[DtmfPacket] = []
        start = 0
        for digit in digits.upper():
            event = self._event_packets(digit, start)
            out += event
            start = event[-1].send_offset_ms + self.ptime_ms + self.gap_ms
        return out


class DtmfReceiver:
    """Detects key presses in received telephone-event payloads (RFC 4733 §2.5.2).

    Call :meth:`receive` for each RTP packet of the telephone-event payload type, then drain
    :meth:`events_received`. Never raises: short payloads are counted in ``malformed``,
    events above 15 (flash, tones) in ``ignored``, repeats in ``duplicates``.
    """

    def __init__(self) -> None:
        self._recent: deque[tuple[int, int]] = deque(maxlen=RECENT_EVENTS)
        self._events: list[DtmfEvent] = []
        self.malformed = 0
        self.ignored = 0
        self.duplicates = 0

    def receive(self, payload: bytes, timestamp: int) -> None:
        """Feed one payload and its RTP timestamp; a new (timestamp, event) is a new key press."""
        parsed = parse_event_payload(payload)
        if parsed is None:
            self.malformed += 1
            return
        event, _, volume, _ = parsed
        if event >= len(DIGITS):
            self.ignored += 1
            return
        key = (timestamp & 0xFFFFFFFF, event)
        if key in self._recent:
            self.duplicates += 1
            return
        self._recent.append(key)
        self._events.append(DtmfEvent(DIGITS[event], event, key[0], volume))

    def events_received(self) -> list[DtmfEvent]:
        """Key presses detected since the last call, in arrival order."""
        events, self._events = self._events, []
        return events
