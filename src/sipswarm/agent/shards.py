"""One engine process per core behind one :class:`~sipswarm.agent.backend.Backend`.

Theory of operation
-------------------
:class:`ShardedBackend` is what the supervisor talks to when ``--shards`` is
more than one. It starts N shard processes (:mod:`.shard_process`), each
running the in-process engine built by a backend factory, and:

* **splits** every assignment across the shards by free capacity (greedy:
  each endpoint goes to the shard with the most room left, so groups spread
  evenly), as parts that keep the ``assignment_id`` and ``run_id``;
* **merges** their items into the supervisor's one ordered stream: items pass
  through as they come, except ``finished`` (one per shard part, merged into
  one per assignment once every part has finished) and ``metrics`` (one per
  shard per interval, merged into one per run per interval, see
  :class:`MetricsMerger`);
* **survives a dead shard**: every endpoint the dead shard had not closed is
  reported CLOSED with outcome OSERROR and a reason naming the shard and its
  exit status, its assignment parts are finished, and a replacement process
  is started so that capacity comes back.

Synchronous questions (free, active, phases, counters) are answered from the
status each shard pushes every 250 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from sipswarm.agent.assignment import AssignmentSpec, EndpointSpec
from sipswarm.agent.backend import EmitItem
from sipswarm.agent.config import AgentConfig
from sipswarm.agent.shard_process import encode_frame, read_frame
from sipswarm.agent.shard_process import tune_gc as tune_process_gc
from sipswarm.errors import ResourceError

log = structlog.get_logger("sipswarm.shards")

#: How long the merger waits for the other shards' sample of the same interval.
METRICS_LINGER_S = 0.3
#: Replacement shards started per shard slot before giving up on it.
MAX_RESTARTS = 5


def split_ports(port_range: tuple[int, int], count: int, index: int) -> tuple[int, int]:
    """The ``index``-th of ``count`` disjoint, even-aligned sub-ranges of ``port_range``."""
    low, high = port_range
    low += low % 2  # RTP on even ports, RTCP on the odd one above (RFC 3550 11)
    size = (high - low + 1) // count
    size -= size % 2
    if size < 2:
        raise ResourceError(
            f"RTP_PORT_RANGE {low}-{high} is too small for {count} shards; widen it or lower SHARDS"
        )
    start = low + index * size
    return start, start + size - 1


def shard_config(config: AgentConfig, count: int, index: int) -> AgentConfig:
    """The config one shard runs with: its share of ports and endpoints."""
    share = config.max_endpoints // count + (1 if index < config.max_endpoints % count else 0)
    return dataclasses.replace(
        config,
        rtp_port_range=split_ports(config.rtp_port_range, count, index),
        max_endpoints=share,
        shards=1,
    )


def split_assignment(spec: AssignmentSpec, free: list[int]) -> list[AssignmentSpec | None]:
    """Endpoints of ``spec`` spread over shards by free capacity; None for a shard
    that gets nothing. Raises ResourceError when the total does not fit."""
    total = sum(free)
    if total < len(spec.endpoints):
        raise ResourceError(f"{total} endpoints free, {len(spec.endpoints)} requested")
    room = list(free)
    parts: list[list[EndpointSpec]] = [[] for _ in free]
    for endpoint in spec.endpoints:
        best = max(range(len(room)), key=lambda i: room[i])
        parts[best].append(endpoint)
        room[best] -= 1
    return [dataclasses.replace(spec, endpoints=tuple(p)) if p else None for p in parts]


def merge_generator(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """Two shards' ``generator`` blocks (docs/protocol.md) as the worker's: the worst of each.

    The worker is overloaded when any of its shards was; the p99s are the
    worse shard's, skipped ticks add up. A shard without a media clock yet
    sends None.
    """
    if a is None or b is None:
        return a if b is None else b
    out = dict(a)
    for key in ("loop_lag_ms_p99", "send_lateness_ms_p99"):
        values = [v for v in (a.get(key), b.get(key)) if v is not None]
        out[key] = max(values) if values else None
    out["skipped_ticks"] = (a.get("skipped_ticks") or 0) + (b.get("skipped_ticks") or 0)
    out["overloaded"] = bool(a.get("overloaded")) or bool(b.get("overloaded"))
    return out


class MetricsMerger:
    """Merge per-shard ``metrics`` items into one per run per interval.

    Shards sample on their own clocks; two samples of the same run belong
    together when their ``ts`` fall in the same interval bucket. The first
    sample of a bucket waits :data:`METRICS_LINGER_S` for the others, or
    less if every shard holding the run has reported.
    """

    def __init__(self, emit: EmitItem, interval_ms: Callable[[str], int]) -> None:
        self._emit = emit
        self._interval_ms = interval_ms
        self._pending: dict[tuple[str, int], tuple[dict[str, Any], set[int], float]] = {}

    def add(self, shard: int, item: dict[str, Any], holders: set[int], now: float) -> None:
        """Take a shard's sample; emit the bucket at once when all holders are in."""
        run_id = item["run_id"]
        bucket = int(item["ts"]) // max(1, self._interval_ms(run_id))
        key = (run_id, bucket)
        entry = self._pending.get(key)
        if entry is None:
            merged = {**item, "endpoints": list(item["endpoints"])}
            entry = (merged, {shard}, now)
            self._pending[key] = entry
        else:
            entry[0]["endpoints"].extend(item["endpoints"])
            entry[0]["ts"] = max(entry[0]["ts"], item["ts"])
            if "generator" in item:
                entry[0]["generator"] = merge_generator(
                    entry[0].get("generator"), item["generator"]
                )
            entry[1].add(shard)
        if holders <= entry[1]:
            del self._pending[key]
            self._emit(entry[0])

    def flush(self, now: float, force: bool = False) -> None:
        """Emit buckets that waited long enough (all of them when ``force``)."""
        for key, (item, _shards, since) in list(self._pending.items()):
            if force or now - since >= METRICS_LINGER_S:
                del self._pending[key]
                self._emit(item)


@dataclass
class _Part:
    """One shard's part of one assignment."""

    open_endpoints: set[str]
    run_id: str
    endpoints: int
    outcomes: Counter[str] = field(default_factory=Counter)
    finished_ts: int | None = None


@dataclass
class _Assignment:
    spec: AssignmentSpec
    parts: dict[int, _Part]


class _Shard:
    """The supervisor's handle on one shard process."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.status: dict[str, Any] = {"free": 0, "active": 0, "phases": {}, "counters": {}}
        self.ready = asyncio.Event()
        self.alive = False
        self.restarts = 0
        self.started: dict[str, asyncio.Future[str | None]] = {}
        # endpoints sent in a "start" the shard has not confirmed yet: its status
        # frames until then do not count them (they may cross the start on the pipe)
        self.reserved: dict[str, int] = {}
        self.cancelled: dict[str, asyncio.Future[None]] = {}

    @property
    def free(self) -> int:
        """Free endpoints as the supervisor can promise them now."""
        return max(0, int(self.status["free"]) - sum(self.reserved.values()))

    def send(self, frame: tuple[Any, ...]) -> None:
        if self.proc is not None and self.proc.stdin is not None and self.alive:
            self.proc.stdin.write(encode_frame(frame))


class ShardedBackend:
    """A :class:`~sipswarm.agent.backend.Backend` over N shard processes (see module doc).

    ``factory`` is the ``module:function`` path of the in-process backend
    factory each shard runs. Call :meth:`start` once (``sharded_factory``
    does it for ``run_agent``).
    """

    def __init__(self, config: AgentConfig, emit: EmitItem, factory: str, count: int) -> None:
        if count < 1:
            raise ResourceError(f"SHARDS must be at least 1, got {count}")
        self._config = config
        self._emit = emit
        self._factory = factory
        self._shards = [_Shard(i) for i in range(count)]
        self._assignments: dict[str, _Assignment] = {}
        self._metrics = MetricsMerger(emit, self._interval_for)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._start_error: str | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle --------------------------------------------------------------------
    async def start(self, ready_timeout_s: float = 30.0, *, tune_gc: bool = True) -> None:
        """Start every shard process and wait until each says it is ready.

        This process is then the agent's supervisor, and ``tune_gc`` (default) tunes
        its garbage collector as each shard's (:func:`.shard_process.tune_gc`): with
        Python's default thresholds, collections took ~5 % of the supervisor's CPU
        at 400 calls/s (~110 young and 11 middle collections in a 6,000-call run,
        ~15 µs per call; gc.callbacks timing in bench/call_rate.py's driver), for
        the unpickled items and specs of every call. Tests that start shards from
        the test process pass False to leave its collector alone.
        """
        for shard in self._shards:
            await self._spawn(shard)
        self._spawn_task(self._flush_metrics())
        await asyncio.wait_for(
            asyncio.gather(*(s.ready.wait() for s in self._shards)), ready_timeout_s
        )
        if tune_gc:
            tune_process_gc()

    def start_in_background(self) -> None:
        """Schedule :meth:`start` on the running loop (for synchronous factories);
        a failure to start is logged and leaves the capacity at 0."""

        async def starter() -> None:
            try:
                await self.start()
            except (OSError, TimeoutError) as exc:
                self._start_error = f"{type(exc).__name__}: {exc}"
                log.error("shards_failed_to_start", error=str(exc))

        self._spawn_task(starter())

    async def _spawn(self, shard: _Shard) -> None:
        shard.ready.clear()
        shard.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sipswarm.agent.shard_process",
            self._factory,
            str(shard.index),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**20,
        )
        shard.alive = True
        shard.send(("config", shard_config(self._config, len(self._shards), shard.index)))
        self._spawn_task(self._read(shard, shard.proc))

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop every shard (they close their endpoints' sockets) and wait for them."""
        self._closing = True
        for shard in self._shards:
            shard.send(("close",))
        for shard in self._shards:
            if shard.proc is None:
                continue
            try:
                await asyncio.wait_for(shard.proc.wait(), 10)
            except TimeoutError:
                shard.proc.kill()
                await shard.proc.wait()
        self._metrics.flush(0.0, force=True)
        for task in list(self._tasks):
            task.cancel()

    # -- Backend: questions -----------------------------------------------------------
    def free_endpoints(self) -> int:
        return sum(s.free for s in self._shards if s.alive and s.ready.is_set())

    def active_endpoints(self) -> int:
        return sum(int(s.status["active"]) for s in self._shards if s.alive)

    def problem(self) -> str | None:
        """ERROR detail: the shards failed to start, or none is alive (see Backend)."""
        if self._start_error is not None:
            return f"engine shards failed to start ({self._start_error}); see the worker log"
        live = [s for s in self._shards if s.alive]
        if not self._closing and not live:
            return f"all {len(self._shards)} engine shard processes exited; see the worker log"
        problems = [(s.index, s.status.get("problem")) for s in live if s.ready.is_set()]
        if problems and all(p for _, p in problems):  # one healthy shard can still run
            return "; ".join(f"shard {index}: {p}" for index, p in problems)
        return None

    def phase_counts(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for shard in self._shards:
            if shard.alive:
                total.update(shard.status["phases"])
        return dict(total)

    def counters(self) -> dict[str, float]:
        result: dict[str, float] = {}
        lag = 0.0
        for shard in self._shards:
            counters = dict(shard.status["counters"])
            lag = max(lag, float(counters.pop("loop_lag_ms_p99", 0.0) or 0.0))
            for key, value in counters.items():
                if value is not None:
                    result[key] = result.get(key, 0.0) + float(value)
        result["loop_lag_ms_p99"] = lag
        result["shards_alive"] = float(sum(s.alive for s in self._shards))
        result["shard_restarts_total"] = float(sum(s.restarts for s in self._shards))
        return result

    # -- Backend: actions -------------------------------------------------------------
    async def start_assignment(self, spec: AssignmentSpec) -> None:
        """Split ``spec`` over the live shards and start every part (ResourceError if
        it does not fit or a shard refuses; parts already started are cancelled)."""
        live = [s for s in self._shards if s.alive and s.ready.is_set()]
        parts = split_assignment(spec, [s.free for s in live])
        entry = _Assignment(spec, {})
        for shard, part in zip(live, parts, strict=True):
            if part is not None:
                ids = {e.endpoint_id for e in part.endpoints}
                entry.parts[shard.index] = _Part(ids, spec.run_id, len(ids))
                shard.reserved[spec.assignment_id] = len(part.endpoints)
        self._assignments[spec.assignment_id] = entry
        self._idle.clear()
        loop = asyncio.get_running_loop()
        waits = []
        for shard, part in zip(live, parts, strict=True):
            if part is None:
                continue
            future: asyncio.Future[str | None] = loop.create_future()
            shard.started[spec.assignment_id] = future
            shard.send(("start", part))
            waits.append(future)
        errors = [e for e in await asyncio.gather(*waits) if e]
        if errors:
            await self.cancel_run(spec.run_id, "assignment refused by a shard")
            raise ResourceError("; ".join(errors))

    async def cancel_run(self, run_id: str, reason: str) -> None:
        """Cancel ``run_id`` on every live shard and wait for each to confirm."""
        loop = asyncio.get_running_loop()
        waits = []
        for shard in self._shards:
            if shard.alive:
                future: asyncio.Future[None] = loop.create_future()
                shard.cancelled[run_id] = future
                shard.send(("cancel", run_id, reason))
                waits.append(future)
        await asyncio.gather(*waits)

    async def wait_idle(self) -> None:
        """Return once every assignment has finished (its merged ``finished`` emitted)."""
        await self._idle.wait()

    # -- shard output -------------------------------------------------------------------
    async def _read(self, shard: _Shard, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        handlers: dict[str, Callable[[_Shard, tuple[Any, ...]], None]] = {
            "ready": self._on_ready,
            "status": self._on_status,
            "items": self._on_items,
            "started": self._on_started,
            "cancelled": self._on_cancelled,
            "closed": lambda s, f: None,
        }
        while (frame := await read_frame(proc.stdout)) is not None:
            handler = handlers.get(frame[0])
            if handler is not None:
                handler(shard, frame)
        code = await proc.wait()
        if proc is shard.proc:
            await self._on_death(shard, code)

    def _on_ready(self, shard: _Shard, frame: tuple[Any, ...]) -> None:
        shard.status = frame[1]
        shard.ready.set()

    def _on_status(self, shard: _Shard, frame: tuple[Any, ...]) -> None:
        shard.status = frame[1]

    def _on_started(self, shard: _Shard, frame: tuple[Any, ...]) -> None:
        # the shard's own status frames count these endpoints from now on; the
        # next status is sent after this frame, so until then keep the estimate
        reserved = shard.reserved.pop(frame[1], 0)
        if frame[2] is None:
            shard.status["free"] = max(0, int(shard.status["free"]) - reserved)
        future = shard.started.pop(frame[1], None)
        if future is not None and not future.done():
            future.set_result(frame[2])

    def _on_cancelled(self, shard: _Shard, frame: tuple[Any, ...]) -> None:
        future = shard.cancelled.pop(frame[1], None)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_items(self, shard: _Shard, frame: tuple[Any, ...]) -> None:
        now = time.monotonic()
        for item in frame[1]:
            kind = item.get("kind")
            if kind == "metrics":
                self._metrics.add(shard.index, item, self._holders(item["run_id"]), now)
            elif kind == "finished":
                self._part_finished(shard.index, item["assignment_id"], item)
            else:
                if kind == "outcome":
                    self._endpoint_closed(shard.index, item)
                self._emit(item)

    def _holders(self, run_id: str) -> set[int]:
        return {
            index
            for entry in self._assignments.values()
            for index, part in entry.parts.items()
            if part.run_id == run_id and part.finished_ts is None
        }

    def _interval_for(self, run_id: str) -> int:
        for entry in self._assignments.values():
            if entry.spec.run_id == run_id:
                return entry.spec.metrics_interval_ms
        return 1000

    def _endpoint_closed(self, shard: int, item: dict[str, Any]) -> None:
        for entry in self._assignments.values():
            part = entry.parts.get(shard)
            if part is not None and item["endpoint_id"] in part.open_endpoints:
                part.open_endpoints.discard(item["endpoint_id"])
                return

    def _part_finished(self, shard: int, assignment_id: str, item: dict[str, Any]) -> None:
        entry = self._assignments.get(assignment_id)
        part = entry.parts.get(shard) if entry else None
        if entry is None or part is None or part.finished_ts is not None:
            return
        part.finished_ts = int(item["ts"])
        part.outcomes.update(item["outcomes"])
        self._maybe_finish(assignment_id, entry)

    def _maybe_finish(self, assignment_id: str, entry: _Assignment) -> None:
        if any(p.finished_ts is None for p in entry.parts.values()):
            return
        self._metrics.flush(time.monotonic(), force=True)
        outcomes: Counter[str] = Counter()
        for part in entry.parts.values():
            outcomes.update(part.outcomes)
        self._emit(
            {
                "kind": "finished",
                "run_id": entry.spec.run_id,
                "assignment_id": assignment_id,
                "ts": max(p.finished_ts or 0 for p in entry.parts.values()),
                "endpoints": sum(p.endpoints for p in entry.parts.values()),
                "outcomes": dict(outcomes),
            }
        )
        del self._assignments[assignment_id]
        if not self._assignments:
            self._idle.set()

    async def _on_death(self, shard: _Shard, code: int) -> None:
        shard.alive = False
        for started in shard.started.values():
            if not started.done():
                started.set_result(f"engine shard {shard.index} died")
        for cancelled in shard.cancelled.values():
            if not cancelled.done():
                cancelled.set_result(None)
        shard.started.clear()
        shard.reserved.clear()
        shard.cancelled.clear()
        if self._closing:
            return
        reason = f"engine shard {shard.index} died (exit status {code})"
        log.error("shard_died", shard=shard.index, exit_status=code)
        self._close_orphans(shard.index, reason)
        if shard.restarts < MAX_RESTARTS:
            shard.restarts += 1
            with contextlib.suppress(OSError):
                await self._spawn(shard)

    def _close_orphans(self, index: int, reason: str) -> None:
        """Report every endpoint the dead shard left open as CLOSED/OSERROR."""
        ts = int(time.time() * 1000)
        for assignment_id, entry in list(self._assignments.items()):
            part = entry.parts.get(index)
            if part is None or part.finished_ts is not None:
                continue
            for endpoint_id in sorted(part.open_endpoints):
                base = {"run_id": part.run_id, "endpoint_id": endpoint_id, "ts": ts}
                self._emit({"kind": "phase", **base, "phase": "CLOSED"})
                outcome = {"outcome": "OSERROR", "final_code": None, "reason": reason}
                self._emit({"kind": "outcome", **base, **outcome})
                part.outcomes["OSERROR"] += 1
            part.open_endpoints.clear()
            part.finished_ts = ts
            self._maybe_finish(assignment_id, entry)

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_LINGER_S / 3)
            self._metrics.flush(time.monotonic())


#: The in-process engine every shard runs.
ENGINE_FACTORY = "sipswarm.engine.engine:engine_backend_factory"


def sharded_backend_factory(config: AgentConfig, emit: EmitItem) -> ShardedBackend:
    """A :data:`~sipswarm.agent.backend.BackendFactory` for ``run_agent``: ``config.shards``
    engine processes. Call it with the event loop running; the processes start in
    the background and report capacity (0 until then)."""
    backend = ShardedBackend(config, emit, ENGINE_FACTORY, config.shards)
    backend.start_in_background()
    return backend
