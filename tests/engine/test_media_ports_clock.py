"""PortPool (even/odd pairs, skipping, exhaustion) and MediaClock (slots, pacing, lateness)."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time

import pytest

from sipswarm.engine.media_clock import BUCKET_S, LatencyHistogram, MediaClock, TimerKind
from sipswarm.engine.ports import PortPool
from sipswarm.errors import ConfigError, ResourceError


def free_even_range(pairs: int) -> tuple[int, int]:
    """A range of ``pairs`` even/odd pairs that nothing holds right now (probed by binding)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1] & ~1
        if base + 2 * pairs > 65535 or base < 1024:
            continue
        socks = []
        try:
            for port in range(base, base + 2 * pairs):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base, base + 2 * pairs - 1
    raise RuntimeError("no free port range found")


def test_pairs_are_even_odd_and_skip_foreign_ports() -> None:
    low, high = free_even_range(3)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", low + 1))  # another process holds the first RTCP port
    pool = PortPool(low, high)
    try:
        a = pool.allocate()
        b = pool.allocate()
        assert (a.port, b.port) == (low + 2, low + 4)
        assert a.rtp_sock.getsockname()[1] == a.port
        assert a.rtcp_sock is not None and a.rtcp_sock.getsockname()[1] == a.port + 1
        assert pool.foreign_skips == 1
        with pytest.raises(ResourceError, match=rf"{low}-{high}.*widen the port range"):
            pool.allocate()
        pool.release(a)
        blocker.close()
        c = pool.allocate()  # round robin: the old first pair is free now
        assert c.port == low
        d = pool.allocate()
        assert d.port == low + 2  # the released pair comes back last
        for alloc in (b, c, d):
            pool.release(alloc)
        assert pool.in_use == 0
    finally:
        blocker.close()


@pytest.mark.parametrize(("low", "high"), [(80, 2000), (3000, 3000), (5000, 70000), (4001, 4002)])
def test_bad_ranges_are_config_errors(low: int, high: int) -> None:
    with pytest.raises(ConfigError, match="range"):
        PortPool(low, high)


def test_histogram_percentiles() -> None:
    h = LatencyHistogram()
    assert h.percentile(99) is None
    for _ in range(98):
        h.record(0.0001)  # bucket 2 (100-150 µs)
    h.record(0.005)
    h.record(-0.001)  # early: counted as 0
    assert h.count == 100
    assert h.percentile(50) == pytest.approx(3 * BUCKET_S)
    assert h.percentile(99) == pytest.approx(3 * BUCKET_S)
    assert h.percentile(100) == pytest.approx(0.005 + BUCKET_S)
    assert h.max == 0.005


@pytest.mark.parametrize("timer", ["timerfd", "loop"])
def test_clock_spreads_streams_over_slots_and_keeps_the_pace(timer: TimerKind) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        clock = MediaClock(loop, timer=timer)
        calls: dict[int, list[float]] = {i: [] for i in range(100)}
        callbacks = [lambda due, i=i: calls[i].append(due) for i in range(100)]
        for cb in callbacks:
            clock.add(cb, 20)
        clock.add_chore(lambda due: None, 1000)
        with pytest.raises(ConfigError, match="multiple"):
            clock.add(lambda due: None, 0)
        # 100 streams over 20 slots of 1 ms: 5 per slot
        assert sorted(len(s) for s in clock._wheels[20].slots) == [5] * 20
        start = time.monotonic()
        clock.start()
        assert clock.timer == timer
        await asyncio.sleep(0.5)
        clock.remove(callbacks[0])
        n0 = len(calls[0])
        await asyncio.sleep(0.1)
        clock.stop()
        elapsed = time.monotonic() - start
        assert len(calls[0]) == n0  # removed: not called again
        for i in range(1, 100):
            dues = calls[i]
            # one call per 20 ms on an exact 20 ms grid
            assert all(abs(b - a - 0.02) < 1e-9 for a, b in itertools.pairwise(dues))
            assert abs(len(dues) - elapsed / 0.02) <= 2
        phases = {round((calls[i][0] - start) * 1000) % 20 for i in range(1, 100)}
        assert len(phases) == 20  # the streams are spread over every 1 ms slot
        lateness, lag, skipped = clock.take_stats()
        assert lateness.count == sum(len(c) for c in calls.values())
        assert lag.count > 0 and skipped == 0
        assert clock.take_stats()[0].count == 0

    asyncio.run(run())


@pytest.mark.parametrize("timer", ["timerfd", "loop"])
def test_clock_sleeps_while_empty_and_wakes_on_the_same_grid(timer: TimerKind) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        clock = MediaClock(loop, timer=timer)
        clock.start()
        await asyncio.sleep(0.05)
        # nothing registered: the first tick found no work and the timer was not re-armed
        assert not clock.armed
        assert clock.take_stats()[1].count <= 1
        dues: list[float] = []
        clock.add(dues.append, 20)
        await asyncio.sleep(0.1)
        clock.remove(dues.append)
        await asyncio.sleep(0.03)
        assert not clock.armed
        lateness, _lag, skipped = clock.take_stats()
        assert lateness.count == len(dues)
        assert skipped == 0  # the idle spell is not counted as skipped ticks
        assert 3 <= len(dues) <= 6
        # still on the grid started at start(): whole ticks after t0
        for due in dues:
            ticks = (due - clock._t0) / clock.tick
            assert abs(ticks - round(ticks)) < 1e-6
        assert all(abs(b - a - 0.02) < 1e-9 for a, b in itertools.pairwise(dues))
        clock.stop()

    asyncio.run(run())


def test_wheel_placement_fills_evenly_and_refills_holes() -> None:
    async def run() -> None:
        clock = MediaClock(asyncio.get_running_loop())
        cbs = [lambda due, i=i: None for i in range(2000)]
        for cb in cbs:
            clock.add_chore(cb, 1000)
        assert {len(s) for s in clock._chores[1000].slots} == {2}
        for cb in cbs[100:110]:  # ten sessions leave, ten new ones come
            clock.remove_chore(cb)
        for i in range(10):
            clock.add_chore(lambda due, i=i: None, 1000)
        assert {len(s) for s in clock._chores[1000].slots} == {2}

    asyncio.run(run())


def test_timerfd_clock_never_sends_before_the_schedule_and_closes_its_descriptor() -> None:
    async def run() -> None:
        clock = MediaClock(asyncio.get_running_loop(), timer="timerfd")
        early: list[float] = []
        clock.add(lambda due: early.append(due - time.monotonic()), 2)
        clock.start()
        assert clock._tfd is not None
        fd = clock._tfd.fd
        await asyncio.sleep(0.1)
        clock.stop()
        assert len(early) >= 20
        # the kernel wakes the loop after the deadline: nothing goes out before its time
        # (the loop timer's fallback runs a tick up to half a tick early)
        assert max(early) <= 10e-6
        assert clock.timer == "loop" and not clock.armed
        with pytest.raises(OSError):
            os.fstat(fd)

    asyncio.run(run())


def test_clock_refuses_an_unknown_timer() -> None:
    async def run() -> None:
        with pytest.raises(ConfigError, match="timerfd or loop"):
            MediaClock(asyncio.get_running_loop(), timer="select")  # type: ignore[arg-type]

    asyncio.run(run())
