"""Is the generator itself keeping up? Loop lag and send lateness, per second, judged.

Theory of operation
-------------------
A load generator that falls behind makes the system under test look bad:
late RTP looks like jitter, a late answer like a slow PBX. So the engine
judges itself. Once per :data:`INTERVAL_S` :class:`GeneratorHealth` reads the
media clock's figures for the interval just closed
(:meth:`~sipswarm.engine.media_engine.MediaEngine.take_clock_stats`: event
loop lag and RTP send lateness, reset on read, so this is their one reader)
and calls the interval *overloaded* when

* the loop lag p99 is above :data:`LOOP_LAG_P99_LIMIT_MS` (20 ms), or
* the send lateness p99 is above :data:`SEND_LATENESS_P99_LIMIT_MS` (10 ms:
  half a 20 ms packet time, where a receiver's jitter figures start to move)
  in two intervals in a row: one stall of a dozen milliseconds (a burst of
  call set-ups, a garbage collection) already puts a dozen late sends above
  the p99 of a small run's thousand sends, and it is the receiver's jitter
  figures, not a verdict on the run; lateness that lasts is, or
* the media clock skipped ticks: it fell more than its catch-up bound
  (100 ms) behind and dropped those sends instead of sending them late, so
  that one long stall, invisible in a p99 of a thousand samples, still counts.

Overloaded intervals are remembered (the last :data:`KEEP_INTERVALS`), so that

* each ``metrics`` item carries a ``generator`` block (docs/protocol.md):
  the worst p99s of the intervals closed since the run's previous item and
  ``overloaded`` if any of them was (:meth:`GeneratorHealth.block_since`);
* an endpoint whose call overlapped an overloaded interval ends
  COMPLETED_WITH_WARNINGS (:meth:`GeneratorHealth.overload_between`).

Next: :meth:`GeneratorHealth.start` once the media clock runs; the engine
reads :attr:`GeneratorHealth.loop_lag_p99_ms` for its heartbeat counters.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sipswarm.engine.media_engine import ClockStats
from sipswarm.engine.scheduler import ScheduledCall, Scheduler

__all__ = [
    "INTERVAL_S",
    "LOOP_LAG_P99_LIMIT_MS",
    "SEND_LATENESS_P99_LIMIT_MS",
    "GeneratorHealth",
    "HealthInterval",
]

#: Length of one judged interval (seconds).
INTERVAL_S = 1.0
#: An interval whose event-loop lag p99 exceeds this is overloaded (ms).
LOOP_LAG_P99_LIMIT_MS = 20.0
#: An interval whose RTP send lateness p99 exceeds this is overloaded (ms).
SEND_LATENESS_P99_LIMIT_MS = 10.0
#: Overloaded intervals remembered for the calls still running (about 3 h of seconds).
KEEP_INTERVALS = 10_000


@dataclass(frozen=True, slots=True)
class HealthInterval:
    """One judged interval, on the loop clock; p99s in ms (None: nothing measured)."""

    start: float
    end: float
    loop_lag_p99_ms: float | None
    send_lateness_p99_ms: float | None
    skipped_ticks: int = 0
    sustained_lateness: bool = False
    """Send lateness over the limit in this interval and the one before or after it."""

    @property
    def late(self) -> bool:
        """Send lateness p99 over the limit in this interval alone."""
        return (self.send_lateness_p99_ms or 0.0) > SEND_LATENESS_P99_LIMIT_MS

    @property
    def overloaded(self) -> bool:
        return (
            (self.loop_lag_p99_ms or 0.0) > LOOP_LAG_P99_LIMIT_MS
            or self.sustained_lateness
            or self.skipped_ticks > 0
        )

    def describe(self) -> str:
        """In words, for an outcome reason."""
        return (
            f"generator overloaded (loop lag p99 {self.loop_lag_p99_ms or 0.0:g} ms, "
            f"send lateness p99 {self.send_lateness_p99_ms or 0.0:g} ms, "
            f"{self.skipped_ticks} media clock ticks skipped; limits "
            f"{LOOP_LAG_P99_LIMIT_MS:g}/{SEND_LATENESS_P99_LIMIT_MS:g}/0)"
        )


def _worst(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


class GeneratorHealth:
    """Judges the generator once per interval. Next: :meth:`start`, :meth:`block_since`,
    :meth:`overload_between`, :meth:`stop`."""

    def __init__(
        self,
        scheduler: Scheduler,
        take_stats: Callable[[], ClockStats],
        now: Callable[[], float],
    ) -> None:
        self._scheduler = scheduler
        self._take_stats = take_stats
        self._now = now
        self._handle: ScheduledCall | None = None
        self._started_at = 0.0
        self.recent: deque[HealthInterval] = deque(maxlen=64)
        self.overloads: deque[HealthInterval] = deque(maxlen=KEEP_INTERVALS)
        self.loop_lag_p99_ms = 0.0
        self.send_lateness_p99_ms = 0.0

    def start(self) -> None:
        """Begin judging (idempotent); the first interval starts now."""
        if self._handle is None:
            self._started_at = self._now()
            self._take_stats()  # discard what came before
            self._handle = self._scheduler.call_later(INTERVAL_S, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self, now: float) -> None:
        self.close_interval(now)
        self._handle = self._scheduler.call_later(INTERVAL_S, self._tick)

    def close_interval(self, now: float) -> HealthInterval:
        """Judge the interval that ends ``now`` (the tick calls it; tests may too)."""
        stats = self._take_stats()
        interval = HealthInterval(
            self._started_at,
            now,
            stats.loop_lag_p99_ms,
            stats.lateness_p99_ms,
            stats.skipped_ticks,
        )
        self._started_at = now
        self.loop_lag_p99_ms = stats.loop_lag_p99_ms or 0.0
        self.send_lateness_p99_ms = stats.lateness_p99_ms or 0.0
        previous = self.recent[-1] if self.recent else None
        if interval.late and previous is not None and previous.late:
            interval = dataclasses.replace(interval, sustained_lateness=True)
            if not previous.sustained_lateness:  # the first of the streak counts too
                self._mark_sustained(previous)
        self.recent.append(interval)
        if interval.overloaded:
            self.overloads.append(interval)
        return interval

    def _mark_sustained(self, previous: HealthInterval) -> None:
        marked = dataclasses.replace(previous, sustained_lateness=True)
        self.recent[-1] = marked
        if self.overloads and self.overloads[-1] is previous:
            self.overloads[-1] = marked
        else:
            self.overloads.append(marked)

    def block_since(self, since: float) -> dict[str, object]:
        """The ``generator`` block of a ``metrics`` item: intervals that ended after ``since``."""
        lag: float | None = None
        late: float | None = None
        overloaded = False
        skipped = 0
        for interval in self.recent:
            if interval.end > since:
                lag = _worst(lag, interval.loop_lag_p99_ms)
                late = _worst(late, interval.send_lateness_p99_ms)
                overloaded = overloaded or interval.overloaded
                skipped += interval.skipped_ticks
        return {
            "loop_lag_ms_p99": lag,
            "send_lateness_ms_p99": late,
            "skipped_ticks": skipped,
            "overloaded": overloaded,
        }

    def overload_between(self, start: float, end: float) -> HealthInterval | None:
        """The worst overloaded interval overlapping ``[start, end]``, or None."""
        worst: HealthInterval | None = None
        for interval in reversed(self.overloads):
            if interval.end < start:
                break
            if interval.start <= end and (
                worst is None or (interval.loop_lag_p99_ms or 0.0) > (worst.loop_lag_p99_ms or 0.0)
            ):
                worst = interval
        return worst
