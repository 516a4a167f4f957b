"""The shard factory of the benchmarks: the agent's engine plus send-lateness counters.

``EndpointEngine.counters()`` reports the media clock's loop lag p99 but not
its send lateness (``MediaEngine.take_clock_stats()`` resets both on read, and
the engine keeps only the lag). The benchmarks need both, so each shard runs
this subclass, which takes the clock stats once per second itself and adds
``bench_lateness_p50_ms``, ``bench_lateness_p99_ms``, ``bench_lateness_max_ms``,
``bench_loop_lag_p99_ms`` (figures of the last full second with streams,
numbered by ``bench_seconds``), and ``bench_skipped_ticks_total`` to the
counters the shard pushes every 250 ms. The driver polls them and keeps one
sample per shard per second (:meth:`harness.SwarmDriver.poll_clock`).
"""

from __future__ import annotations

import cProfile
import os
from pathlib import Path

from sipswarm.agent.backend import EmitItem
from sipswarm.agent.config import AgentConfig
from sipswarm.engine.engine import EndpointEngine, engine_backend_factory


class BenchEngine(EndpointEngine):
    """EndpointEngine whose counters carry the media clock's lateness (see module doc)."""

    _bench_taken = 0.0
    _bench: dict[str, float] | None = None

    def counters(self) -> dict[str, float]:
        now = self.loop.time()
        self._lag_taken = now  # keep the base class from resetting the clock stats
        out = super().counters()
        if self._bench is None:
            self._bench = {"bench_skipped_ticks_total": 0.0, "bench_seconds": 0.0}
        if self.media is not None and now - self._bench_taken >= 1.0:
            self._bench_taken = now
            stats = self.media.take_clock_stats()
            b = self._bench
            b["bench_skipped_ticks_total"] += stats.skipped_ticks
            b["bench_sends_total"] = b.get("bench_sends_total", 0.0) + stats.sends
            if stats.streams:
                b["bench_seconds"] += 1
                self._lag_p99 = stats.loop_lag_p99_ms or 0.0
                b["bench_lateness_p50_ms"] = stats.lateness_p50_ms or 0.0
                b["bench_lateness_p99_ms"] = stats.lateness_p99_ms or 0.0
                b["bench_lateness_max_ms"] = stats.lateness_max_ms or 0.0
                b["bench_loop_lag_p99_ms"] = stats.loop_lag_p99_ms or 0.0
        out.update(self._bench)
        out["bench_streams"] = float(self.media.clock.streams if self.media else 0)
        return out


def bench_engine_factory(config: AgentConfig, emit: EmitItem) -> EndpointEngine:
    """Shard factory (``bench_engine:bench_engine_factory``): the agent's engine settings."""
    base = engine_backend_factory(config, emit)
    engine = BenchEngine(base.settings, emit)
    _profile_if_asked(engine)
    return engine


def _profile_if_asked(engine: EndpointEngine) -> None:
    """``SIPSWARM_BENCH_PROFILE=<dir>``: run this shard under cProfile and write
    ``<dir>/shard-<pid>.prof`` every 2 s (the shard is stopped by signal, so no
    exit hook would run). For finding per-call work: the counts are exact, the
    times inflated by the profiler."""
    out = os.environ.get("SIPSWARM_BENCH_PROFILE")
    if not out:
        return
    profiler = cProfile.Profile()
    profiler.enable()
    path = Path(out) / f"shard-{os.getpid()}.prof"

    def dump() -> None:
        profiler.dump_stats(path)  # create_stats() disables the profiler
        profiler.enable()
        engine.loop.call_later(2.0, dump)

    engine.loop.call_later(2.0, dump)
