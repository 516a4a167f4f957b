"""The shared deadline heap: order, re-arming, lazy cancellation, compaction."""

from __future__ import annotations

from dataclasses import dataclass, field

from sipswarm.sip.timers import Timers


@dataclass(eq=False)
class Target:
    fired: list[tuple[str, float]] = field(default_factory=list)

    def on_timer(self, name: str, now: float) -> None:
        self.fired.append((name, now))


def test_fires_in_deadline_order_and_rearm_replaces() -> None:
    timers = Timers()
    a, b = Target(), Target()
    timers.set(a, "x", 3.0)
    timers.set(b, "y", 1.0)
    timers.set(a, "x", 2.0)  # re-arm: only the new deadline counts
    assert timers.next_deadline() == 1.0
    assert timers.fire_due(10.0) == 2
    assert b.fired == [("y", 10.0)] and a.fired == [("x", 10.0)]
    assert timers.next_deadline() is None and len(timers) == 0


def test_cancel_is_lazy_but_invisible() -> None:
    timers = Timers()
    t = Target()
    timers.set(t, "a", 1.0)
    timers.set(t, "b", 2.0)
    timers.cancel(t, "a")
    assert timers.next_deadline() == 2.0
    assert not timers.is_set(t, "a") and timers.is_set(t, "b")
    timers.fire_due(1.5)
    assert t.fired == []


def test_callback_arming_due_timer_fires_in_same_call() -> None:
    timers = Timers()

    @dataclass(eq=False)
    class Chain:
        n: int = 0

        def on_timer(self, name: str, now: float) -> None:
            self.n += 1
            if self.n < 3:
                timers.set(self, "again", now)

    c = Chain()
    timers.set(c, "again", 0.0)
    timers.fire_due(0.0)
    assert c.n == 3


def test_compaction_keeps_heap_proportional_to_live_timers() -> None:
    timers = Timers()
    targets = [Target() for _ in range(5000)]
    for t in targets:
        timers.set(t, "x", 100.0)
        timers.cancel(t, "x")
    keep = Target()
    timers.set(keep, "x", 50.0)
    assert len(timers._heap) < 5000  # stale entries were dropped on the way
    assert timers.next_deadline() == 50.0
