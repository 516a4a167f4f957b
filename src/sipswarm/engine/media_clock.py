"""One paced media clock per process: every RTP stream is sent from here, spread over the ptime.

Theory of operation
-------------------
A timer per stream costs a heap operation per packet and fires every stream
of a call burst at the same instant; one timer for all streams at the ptime
sends them all in one burst that grows with N (lateness p99 grows with N,
see ARCHITECTURE.md "Where the time goes"). So the clock ticks every
``tick`` seconds (1 ms) and keeps, for each ptime in use, a wheel of
``ptime / tick`` slots. A stream joins the least loaded slot of its wheel and
is called once per ptime, when its slot comes round: 1000 streams at 20 ms
are 50 sends per 1 ms tick instead of 1000 every 20 ms.

The schedule is absolute: tick ``n`` is due at ``t0 + n * tick`` on
``time.monotonic()``. The timer is re-armed for the next due tick after each
run, so timer drift does not accumulate. Every send is measured against its
scheduled time (*send lateness*) and every timer wake-up against its deadline
(*loop lag*, the event loop's own delay); both go into fixed-bucket
histograms that :meth:`MediaClock.take_stats` reads and resets.

What wakes the clock: on Linux a periodic ``timerfd`` (CLOCK_MONOTONIC, the
clock of ``time.monotonic()``) registered as a reader on the loop, armed at
``t0`` with the tick as its interval. The kernel makes its descriptor
readable within tens of µs of each tick (measured here: wake-up lag p50
0.02 ms, p99 0.06 ms). The loop's own timers cannot do that: uvloop rounds a
delay to whole milliseconds and adds it to libuv's cached, millisecond loop
time, and epoll's timeout is a relative millisecond count, so a
``call_later`` wake-up lands anywhere from 0.5 ms early to 1 ms late
(measured: p99 0.6-1.0 ms), a whole millisecond of the 2 ms lateness budget
before any work is done. Where no timerfd exists (not Linux) the clock falls
back to ``call_later``; a tick is then run when it is due within ``early``
(half a tick) to avoid spinning, which is why lateness can be slightly
negative there (it is recorded as 0).

When the loop falls more than ``max_catchup`` behind (CPU saturated),
missed ticks are skipped rather than sent in a burst, and counted in
``skipped_ticks``: the receiver then sees the gap as jitter, which is the
truth about an overloaded generator.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import sys
import time
from collections.abc import Callable
from typing import Final, Literal

from sipswarm.errors import ConfigError

#: Histogram resolution and span: 50 µs buckets up to 100 ms, the last bucket holds the rest.
BUCKET_S: Final = 50e-6
BUCKETS: Final = 2000

#: A stream's per-ptime callback; gets the scheduled send time (monotonic seconds).
SendCallback = Callable[[float], None]

#: What wakes the clock: "auto" (timerfd where available, else the loop's timers),
#: "timerfd" (required: ConfigError where unavailable) or "loop" (``call_later``).
TimerKind = Literal["auto", "timerfd", "loop"]

#: timerfd(2) constants (Linux, <sys/timerfd.h>).
_CLOCK_MONOTONIC: Final = 1
_TFD_TIMER_ABSTIME: Final = 1
#: With a timerfd the wake-up follows the deadline; this only absorbs float rounding.
_TIMERFD_EARLY: Final = 10e-6


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _timespec(seconds: float) -> _Timespec:
    whole = int(seconds)
    return _Timespec(whole, int((seconds - whole) * 1e9))


class TimerFd:
    """A periodic CLOCK_MONOTONIC timerfd (Linux): readable at each expiry, on time.

    :func:`open_timerfd` builds one (None where the platform has none); then
    :meth:`arm` (absolute first expiry, interval), register :attr:`fd` as a
    reader, :meth:`read` on each readiness, :meth:`disarm`, :meth:`close`.
    """

    __slots__ = ("_libc", "fd")

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._libc = libc
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self.fd: int = fd

    def arm(self, first: float, interval: float) -> None:
        """Expire at monotonic ``first``, then every ``interval`` seconds (0: disarm)."""
        spec = _Itimerspec(_timespec(interval), _timespec(first))
        if self._libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None):
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def disarm(self) -> None:
        """No more expiries until the next :meth:`arm`."""
        self.arm(0.0, 0.0)

    def read(self) -> int:
        """Expiries since the last read; 0 on a spurious wake-up."""
        try:
            return int.from_bytes(os.read(self.fd, 8), sys.byteorder)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        """Close the descriptor (unregister it from the loop first)."""
        os.close(self.fd)


def open_timerfd() -> TimerFd | None:
    """A :class:`TimerFd`, or None where timerfd or a 64-bit ``long`` timespec is missing."""
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_long) != 8:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "timerfd_create"):
            return None
        return TimerFd(libc)
    except OSError:
        return None


class LatencyHistogram:
    """Fixed 50 µs buckets; O(1) record, percentiles by a cumulative walk."""

    __slots__ = ("count", "counts", "max")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.count = 0
        self.max = 0.0

    def record(self, seconds: float) -> None:
        """Add one sample (negative samples count as 0)."""
        i = int(seconds * (1.0 / BUCKET_S))
        if i < 0:
            i = 0
        elif i >= BUCKETS:
            i = BUCKETS - 1
        self.counts[i] += 1
        self.count += 1
        if seconds > self.max:
            self.max = seconds

    def percentile(self, p: float) -> float | None:
        """Upper edge of the bucket holding the ``p``-th percentile, in seconds; None if empty."""
        if self.count == 0:
            return None
        rank = p / 100.0 * self.count
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                return (i + 1) * BUCKET_S
        return BUCKETS * BUCKET_S

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s samples to this one."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.count += other.count
        self.max = max(self.max, other.max)


class _Wheel:
    """The slots of one period: slot ``k`` holds the callbacks run at ticks n with n % size == k.

    A callback joins a least loaded slot in O(1): the slots are kept in sets by
    load (``_by_load``) with the lowest load known. A scan of every slot cost
    ~100 µs per session on the 1000-slot per-second chore wheel, i.e. per call.
    """

    __slots__ = ("_by_load", "_low", "size", "slots")

    def __init__(self, size: int) -> None:
        self.size = size
        self.slots: list[list[SendCallback]] = [[] for _ in range(size)]
        self._by_load: dict[int, set[int]] = {0: set(range(size))}
        self._low = 0

    def add(self, cb: SendCallback) -> int:
        """Append ``cb`` to a least loaded slot; return the slot."""
        load = self._low
        low = self._by_load[load]
        slot = low.pop()
        self.slots[slot].append(cb)
        self._by_load.setdefault(load + 1, set()).add(slot)
        if not low:
            del self._by_load[load]
            self._low = load + 1
        return slot

    def remove(self, cb: SendCallback, slot: int) -> None:
        """Take ``cb`` out of ``slot`` (where :meth:`add` put it)."""
        entries = self.slots[slot]
        load = len(entries)
        entries.remove(cb)
        here = self._by_load[load]
        here.discard(slot)
        if not here:
            del self._by_load[load]
        self._by_load.setdefault(load - 1, set()).add(slot)
        if load - 1 < self._low:
            self._low = load - 1


class MediaClock:
    """The process's single media clock; streams :meth:`add` a callback, :meth:`remove` it.

    Create one per event loop, :meth:`start` it, and every RTP session adds
    its send callback with its ptime. Read :meth:`take_stats` once per
    metrics interval; :meth:`stop` when the engine shuts down.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        tick: float = 0.001,
        max_catchup: float = 0.1,
        timer: TimerKind = "auto",
    ) -> None:
        if not 0.0001 <= tick <= 0.02:
            raise ConfigError(f"media clock tick must be 0.1-20 ms, got {tick * 1000:g} ms")
        if timer not in ("auto", "timerfd", "loop"):
            raise ConfigError(f"media clock timer must be auto, timerfd or loop, got {timer!r}")
        self._loop = loop
        self._timer_kind = timer
        self._tfd: TimerFd | None = None
        self._armed = False
        self.tick = tick
        self.early = tick / 2
        self.max_catchup = max_catchup
        self._wheels: dict[int, _Wheel] = {}
        self._where: dict[SendCallback, tuple[int, int]] = {}
        self._chores: dict[int, _Wheel] = {}
        self._chore_where: dict[SendCallback, tuple[int, int]] = {}
        self._t0 = 0.0
        self._n = 0
        self._deadline = 0.0
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._running = False
        self.lateness = LatencyHistogram()
        self.loop_lag = LatencyHistogram()
        self.skipped_ticks = 0
        self.sends = 0

    @property
    def timer(self) -> str:
        """What wakes the clock once started: "timerfd" or "loop" (module docstring)."""
        return "timerfd" if self._tfd is not None else "loop"

    @property
    def armed(self) -> bool:
        """True while a wake-up is pending (False when stopped or idle: nothing registered)."""
        return self._armed

    @property
    def streams(self) -> int:
        """Number of streams on the clock."""
        return len(self._where)

    def add(self, cb: SendCallback, ptime_ms: int) -> None:
        """Call ``cb(scheduled_time)`` once every ``ptime_ms``, in the least loaded slot."""
        self._place(self._wheels, self._where, cb, ptime_ms)

    def remove(self, cb: SendCallback) -> None:
        """Stop calling ``cb``; unknown callbacks are ignored (idempotent)."""
        self._unplace(self._wheels, self._where, cb)

    def add_chore(self, cb: SendCallback, period_ms: int) -> None:
        """Like :meth:`add` for periodic housekeeping (not counted as sends, not measured).

        Chores of the same period are spread over its slots, so that per-second
        work for thousands of sessions never runs in one burst.
        """
        self._place(self._chores, self._chore_where, cb, period_ms)

    def remove_chore(self, cb: SendCallback) -> None:
        """Stop a chore; unknown callbacks are ignored."""
        self._unplace(self._chores, self._chore_where, cb)

    def _place(
        self,
        wheels: dict[int, _Wheel],
        where: dict[SendCallback, tuple[int, int]],
        cb: SendCallback,
        period_ms: int,
    ) -> None:
        ticks = round(period_ms / 1000 / self.tick)
        if ticks < 1 or abs(ticks * self.tick - period_ms / 1000) > 1e-9:
            raise ConfigError(
                f"ptime {period_ms} ms is not a multiple of the media clock tick "
                f"({self.tick * 1000:g} ms)"
            )
        if cb in where:
            return
        wheel = wheels.get(ticks)
        if wheel is None:
            wheel = wheels[ticks] = _Wheel(ticks)
        where[cb] = (ticks, wheel.add(cb))
        if self._running and not self._armed:
            self._wake()

    @staticmethod
    def _unplace(
        wheels: dict[int, _Wheel], where: dict[SendCallback, tuple[int, int]], cb: SendCallback
    ) -> None:
        place = where.pop(cb, None)
        if place is not None:
            wheels[place[0]].remove(cb, place[1])

    def start(self) -> None:
        """Start ticking; the first tick is due one tick from now.

        The clock sleeps while no stream or chore is registered (an idle shard
        costs no wake-ups) and wakes on the next :meth:`add`/:meth:`add_chore`,
        on the same tick grid. Raises ConfigError when ``timer="timerfd"``
        was asked for and the platform has none.
        """
        if self._running:
            return
        if self._timer_kind != "loop":
            self._tfd = open_timerfd()
            if self._tfd is None and self._timer_kind == "timerfd":
                raise ConfigError(
                    "media clock timer 'timerfd' needs Linux timerfd_create; use 'auto' or 'loop'"
                )
            if self._tfd is not None:
                self.early = _TIMERFD_EARLY
                self._loop.add_reader(self._tfd.fd, self._on_timerfd)
        self._running = True
        self._t0 = time.monotonic()
        self._n = 1
        self._arm(time.monotonic())

    def stop(self) -> None:
        """Stop ticking; streams stay registered (start again to resume)."""
        self._running = False
        self._disarm()
        if self._tfd is not None:
            self._loop.remove_reader(self._tfd.fd)
            self._tfd.close()
            self._tfd = None
            self.early = self.tick / 2

    def _wake(self) -> None:
        """Resume after an idle spell at the next tick of the grid; idle ticks are not skips."""
        now = time.monotonic()
        self._n = max(self._n, int((now - self._t0) / self.tick) + 1)
        self._arm(now)

    def take_stats(self) -> tuple[LatencyHistogram, LatencyHistogram, int]:
        """Return (send lateness, loop lag, skipped ticks) since the last call, and reset them."""
        out = (self.lateness, self.loop_lag, self.skipped_ticks)
        self.lateness = LatencyHistogram()
        self.loop_lag = LatencyHistogram()
        self.skipped_ticks = 0
        return out

    def _arm(self, now: float) -> None:
        """Wake at the next due tick: a periodic timerfd from there, or one ``call_later``."""
        self._deadline = self._t0 + self._n * self.tick
        if self._tfd is not None:
            if not self._armed:  # periodic on the grid: armed once per busy spell
                self._tfd.arm(self._deadline, self.tick)
        else:
            self._handle = self._loop.call_later(max(0.0, self._deadline - now), self._on_timer)
        self._armed = True

    def _disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._tfd is not None and self._armed:
            self._tfd.disarm()
        self._armed = False

    def _on_timerfd(self) -> None:
        """The timerfd is readable: one or more ticks have expired."""
        if self._tfd is not None and self._tfd.read():
            self._on_timer()

    def _on_timer(self) -> None:
        """Run every tick due by now, then go back to the loop (receives wait meanwhile)."""
        self._handle = None
        now = time.monotonic()
        self.loop_lag.record(now - self._deadline)
        due = self._t0 + self._n * self.tick
        if now - due > self.max_catchup:
            behind = int((now - due) / self.tick)
            self.skipped_ticks += behind
            self._n += behind
            due = self._t0 + self._n * self.tick
        # only the ticks due at entry: re-reading the clock here would let a saturated
        # process spiral (each catch-up tick makes the next one due) and starve I/O
        horizon = now + self.early
        while due <= horizon:
            self._run_tick(self._n, due)
            self._n += 1
            due += self.tick
        if self._where or self._chore_where:
            if self._tfd is None:
                self._armed = False
            self._arm(time.monotonic())
        else:  # nothing to send: sleep until the next add (see start)
            self._disarm()

    def _run_tick(self, n: int, due: float) -> None:
        """Send every stream whose slot is ``n``; measure each send against ``due``."""
        lat = self.lateness
        counts = lat.counts
        monotonic = time.monotonic
        scale = 1.0 / BUCKET_S
        top = BUCKETS - 1
        sent = 0
        for wheel in self._wheels.values():
            for cb in tuple(wheel.slots[n % wheel.size]):  # a callback may remove itself
                late = monotonic() - due
                i = int(late * scale)
                counts[0 if i < 0 else (i if i < top else top)] += 1
                if late > lat.max:
                    lat.max = late
                cb(due)
                sent += 1
        lat.count += sent
        self.sends += sent
        for wheel in self._chores.values():
            for cb in tuple(wheel.slots[n % wheel.size]):
                cb(due)
