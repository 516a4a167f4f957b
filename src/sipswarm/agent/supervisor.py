"""The supervisor: ties the controller link, the data stream and the backend together.

Theory of operation
-------------------
The supervisor is the link's :class:`~sipswarm.agent.link.LinkHandler`. It
builds ``hello`` and ``heartbeat``, answers controller frames (one handler
per ``type`` from a dict, STYLE.md rule 10) and is the backend's ``emit``
sink: items go to the data stream and wake the link; a ``finished`` item
closes its assignment.

``assign``, in this order (docs/protocol.md):

1. an ``assignment_id`` already held → ``accepted: true``, nothing changes;
2. DRAINING → refused ``draining``;
3. validation (every problem listed) → refused ``invalid``;
4. an endpoint id already active in another assignment → refused ``duplicate``;
5. more endpoints than free (or status ERROR) → refused ``capacity``;
6. ``backend.start_assignment`` → ``accepted: true``.

Faults: when a session ends the orphan timer starts (``orphan_timeout_s``
from the last welcome); if no welcome comes in time, every active run is
cancelled with reason ``orphaned`` and its data kept for replay. Status
ERROR (:meth:`Supervisor.refresh_status`): a 401 at the upgrade, until the
next successful upgrade, or ``backend.problem()`` while it names one.

Drain (``drain`` frame or SIGTERM): status DRAINING at once (a heartbeat
says so), new work refused, wait for the backend to go idle, wait (bounded)
until every data frame is acked, close the connection, return exit code 0.
A second SIGTERM while draining cancels the remaining runs (reason
``terminated``). Next: ``attach(backend)`` then ``await run()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
import structlog
from pydantic import BaseModel

from sipswarm import __version__
from sipswarm.agent.assignment import validate_assignment
from sipswarm.agent.backend import Backend
from sipswarm.agent.config import AgentConfig
from sipswarm.agent.datastream import DataStream
from sipswarm.agent.link import ControllerLink
from sipswarm.agent.looplag import LoopLagProbe
from sipswarm.agent.media_store import MediaStore
from sipswarm.errors import InvalidState, SipswarmError
from sipswarm.protocol import (
    Assign,
    AssignEnvelope,
    AssignResult,
    Cancel,
    Capacity,
    ControllerFrame,
    ErrorFrame,
    Heartbeat,
    Hello,
    MediaAnnounce,
    RefusalReason,
    Resume,
    Welcome,
    WorkerStatus,
    unknown_paths,
)

log = structlog.get_logger("sipswarm.agent.supervisor")
STATUS_TRANSITIONS: dict[WorkerStatus, frozenset[WorkerStatus]] = {
    WorkerStatus.ONLINE: frozenset({WorkerStatus.ERROR, WorkerStatus.DRAINING}),
    WorkerStatus.ERROR: frozenset({WorkerStatus.ONLINE, WorkerStatus.ERROR, WorkerStatus.DRAINING}),
    WorkerStatus.DRAINING: frozenset(),  # final: the process exits after the drain
}
"""Legal status changes (OFFLINE is the controller's view, never the worker's)."""
HELD_ASSIGNMENT_IDS = 10_000
"""How many assignment ids are remembered for idempotency after they finish."""


@dataclass(slots=True)
class _Held:
    run_id: str
    endpoint_ids: frozenset[str]
    finished: bool = False


@dataclass(slots=True)
class SupervisorCounters:
    assigns_accepted: int = 0
    assigns_refused: dict[str, int] = field(default_factory=dict)
    runs_orphaned: int = 0
    items_emitted: int = 0


class Supervisor:
    """One per worker process. Next: ``attach(backend)``, ``await run()``."""

    def __init__(self, config: AgentConfig, stream: DataStream, media: MediaStore) -> None:
        self.config = config
        self.stream = stream
        self.media = media
        self.link = ControllerLink(config, stream, self)
        self.lag = LoopLagProbe(config.timings.loop_probe_interval_s)
        self.status = WorkerStatus.ONLINE
        self.detail: str | None = None
        self.counters = SupervisorCounters()
        self._token_refused = False
        self._backend: Backend | None = None
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._orphan_timeout_s = config.timings.orphan_timeout_s
        self._orphan_timer: asyncio.TimerHandle | None = None
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handlers: dict[str, Callable[[Any], Awaitable[list[BaseModel]]]] = {
            "media": self._on_media,
            "assign": self._on_assign,
            "cancel": self._on_cancel,
            "drain": self._on_drain,
        }

    def set_status(self, status: WorkerStatus, detail: str | None = None) -> None:
        """Change status per :data:`STATUS_TRANSITIONS`; an illegal change raises InvalidState."""
        if status not in STATUS_TRANSITIONS[self.status]:
            raise InvalidState(f"worker status cannot go from {self.status} to {status}")
        self.status, self.detail = status, detail

    def attach(self, backend: Backend) -> None:
        self._backend = backend

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise InvalidState("Supervisor.attach(backend) must be called before run()")
        return self._backend

    # ------------------------------------------------------------------ backend sink

    def emit(self, item: dict[str, Any]) -> None:
        """The backend's sink: queue the item for the controller (never blocks)."""
        self.counters.items_emitted += 1
        self.stream.append(item)
        if item.get("kind") == "finished":
            held = self._held.get(str(item.get("assignment_id")))
            if held is not None:
                held.finished = True
        self.link.notify_data()

    # ------------------------------------------------------------------ link handler

    def refresh_status(self) -> WorkerStatus:
        """ERROR while the backend reports a problem (detail says why) or the token was
        refused; back to ONLINE once neither holds. DRAINING stays. Returns the status."""
        if self.status is WorkerStatus.DRAINING:
            return self.status
        problem = self.backend.problem()
        if self._token_refused:
            return self.status
        if problem is not None:
            if self.detail != problem or self.status is not WorkerStatus.ERROR:
                log.error("worker cannot run endpoints", detail=problem)
            self.set_status(WorkerStatus.ERROR, problem)
        elif self.status is WorkerStatus.ERROR:
            log.info("worker can run endpoints again")
            self.set_status(WorkerStatus.ONLINE)
        return self.status

    def hello(self) -> Hello:
        # built after a successful upgrade: a token refused earlier is good now
        self._token_refused = False
        self.refresh_status()
        resume = self.stream.resume()
        return Hello(
            worker_id=self.config.worker_id,
            name=self.config.name,
            version=__version__,
            status=self.status,
            capacity=Capacity(
                max_endpoints=self.config.max_endpoints,
                cpus=os.cpu_count() or 1,
                memory_mb=psutil.virtual_memory().total // (1024 * 1024),
            ),
            labels=dict(self.config.labels),
            media=self.media.held(),
            resume=Resume(**resume) if resume else None,
            stream=self.stream.stream_id,
        )

    def heartbeat(self) -> Heartbeat:
        self.refresh_status()
        return Heartbeat(
            ts=int(time.time() * 1000),
            status=self.status,
            active_endpoints=self.backend.active_endpoints(),
            free_endpoints=self.free_endpoints(),
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_percent=psutil.virtual_memory().percent,
            loop_lag_ms_p99=self.loop_lag_ms_p99(),
            detail=self.detail,
            data_unacked_frames=self.stream.unacked_frames,
            data_buffer_bytes=self.stream.buffered_bytes,
            data_dropped_items=self.stream.counters.dropped_items,
        )

    async def handle_frame(self, frame: ControllerFrame) -> list[BaseModel]:
        handler = self._handlers.get(frame.type)
        return [] if handler is None else await handler(frame)

    def handle_binary(self, data: bytes) -> list[BaseModel]:
        sha, problem = self.media.receive_binary(data)
        if problem is not None:
            log.warning("media refused", detail=problem)
            return [ErrorFrame(in_reply_to="media", detail=problem)]
        log.info("media stored", sha256=sha, bytes=len(data))
        return []

    def handle_text_received(self) -> list[BaseModel]:
        problem = self.media.receive_text()
        return [] if problem is None else [ErrorFrame(in_reply_to="media", detail=problem)]

    def session_started(self, welcome: Welcome) -> None:
        self._orphan_timeout_s = welcome.orphan_timeout_s
        if self._orphan_timer is not None:
            self._orphan_timer.cancel()
            self._orphan_timer = None
        self.media.reset()
        self._token_refused = False
        self.refresh_status()

    def session_ended(self) -> None:
        self.media.reset()
        if self._orphan_timer is None:
            loop = asyncio.get_running_loop()
            self._orphan_timer = loop.call_later(self._orphan_timeout_s, self._orphaned)

    def connect_failed(self, status_code: int | None, detail: str) -> None:
        if status_code in (401, 403) and self.status is not WorkerStatus.DRAINING:
            self._token_refused = True
            self.set_status(WorkerStatus.ERROR, detail)

    # ------------------------------------------------------------------ frame handlers

    async def _on_media(self, frame: MediaAnnounce) -> list[BaseModel]:
        problem = self.media.receive_announce(frame)
        return [] if problem is None else [ErrorFrame(in_reply_to="media", detail=problem)]

    async def _on_assign(self, envelope: AssignEnvelope) -> list[BaseModel]:
        aid = envelope.assignment_id
        if aid in self._held:
            return [AssignResult(assignment_id=aid, accepted=True, detail="already held")]
        if self.status is WorkerStatus.DRAINING:
            return [self._refuse(aid, RefusalReason.DRAINING, "worker is draining")]
        for path in unknown_paths(Assign, envelope.raw, "assign"):
            self.link.log_once(path, "unknown field ignored")
        spec, problems = validate_assignment(envelope.raw, self.media.held())
        if spec is None:
            return [self._refuse(aid, RefusalReason.INVALID, "; ".join(problems))]
        clash = spec.endpoint_ids & self._active_endpoint_ids()
        if clash:
            shown = ", ".join(sorted(clash)[:5])
            detail = f"{len(clash)} endpoint id(s) already running here: {shown}"
            return [self._refuse(aid, RefusalReason.DUPLICATE, detail)]
        free, wanted = self.free_endpoints(), len(spec.endpoints)
        if self.refresh_status() is WorkerStatus.ERROR or wanted > free:
            why = f"{free} endpoints free, {wanted} requested"
            if self.status is WorkerStatus.ERROR:
                why = f"worker in ERROR: {self.detail}"
            return [self._refuse(aid, RefusalReason.CAPACITY, why)]
        try:
            await self.backend.start_assignment(spec)
        except SipswarmError as exc:
            return [self._refuse(aid, RefusalReason.CAPACITY, str(exc))]
        self._hold(aid, _Held(spec.run_id, spec.endpoint_ids))
        self.counters.assigns_accepted += 1
        log.info("assignment accepted", assignment_id=aid, run_id=spec.run_id, endpoints=wanted)
        return [AssignResult(assignment_id=aid, accepted=True)]

    async def _on_cancel(self, frame: Cancel) -> list[BaseModel]:
        if frame.run_id not in self.active_runs():
            log.info("cancel for a run not active here", run_id=frame.run_id)
            return []
        self._spawn(self._cancel_run(frame.run_id, frame.reason))
        return []

    async def _on_drain(self, frame: Any) -> list[BaseModel]:
        self.request_drain("controller")
        return []

    def _refuse(self, aid: str, reason: RefusalReason, detail: str) -> AssignResult:
        refused = self.counters.assigns_refused
        refused[reason.value] = refused.get(reason.value, 0) + 1
        log.warning("assignment refused", assignment_id=aid, reason=reason.value, detail=detail)
        return AssignResult(assignment_id=aid, accepted=False, reason=reason, detail=detail)

    def _hold(self, aid: str, held: _Held) -> None:
        self._held[aid] = held
        while len(self._held) > HELD_ASSIGNMENT_IDS:
            oldest = next(iter(self._held))
            if not self._held[oldest].finished:
                break
            del self._held[oldest]

    # ------------------------------------------------------------------ runs

    def active_runs(self) -> set[str]:
        return {h.run_id for h in self._held.values() if not h.finished}

    def _active_endpoint_ids(self) -> frozenset[str]:
        ids: set[str] = set()
        for held in self._held.values():
            if not held.finished:
                ids |= held.endpoint_ids
        return frozenset(ids)

    def free_endpoints(self) -> int:
        backend = self.backend
        own_limit = self.config.max_endpoints - backend.active_endpoints()
        return max(0, min(backend.free_endpoints(), own_limit))

    def loop_lag_ms_p99(self) -> float:
        shard_lag = float(self.backend.counters().get("loop_lag_ms_p99", 0.0))
        return max(self.lag.p99_ms(), shard_lag)

    async def _cancel_run(self, run_id: str, reason: str) -> None:
        limit = self.config.timings.cancel_timeout_s
        try:
            await asyncio.wait_for(self.backend.cancel_run(run_id, reason), limit * 2)
        except TimeoutError:
            log.error("run did not close in time after cancel", run_id=run_id, limit_s=limit)

    def _orphaned(self) -> None:
        self._orphan_timer = None
        runs = self.active_runs()
        if not runs:
            return
        log.warning("no controller: cancelling every run", runs=sorted(runs))
        self.counters.runs_orphaned += len(runs)
        for run_id in runs:
            self._spawn(self._cancel_run(run_id, "orphaned"))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ lifecycle

    def request_drain(self, why: str) -> None:
        """Turn DRAINING (drain frame, SIGTERM); a second request cancels what still runs."""
        if self.status is WorkerStatus.DRAINING:
            log.warning("second drain request: cancelling remaining runs", why=why)
            for run_id in self.active_runs():
                self._spawn(self._cancel_run(run_id, "terminated"))
            return
        log.info("draining", why=why)
        self.set_status(WorkerStatus.DRAINING)
        self._spawn(self._announce_status())
        self._stop.set()

    async def _announce_status(self) -> None:
        await self.link.send(self.heartbeat())

    async def run(self) -> int:
        """Run until drained; return the process exit code (0 after a clean drain)."""
        self.backend  # noqa: B018 - fail early if no backend is attached
        self.lag.start()
        link_task = asyncio.create_task(self.link.run())
        stop_task = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait(
                {link_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if link_task in done and link_task.exception() is not None:
                log.error("controller link failed", exc_info=link_task.exception())
                return 1
            await self._drain()
            return 0
        finally:
            stop_task.cancel()
            await self._shutdown(link_task)

    async def _drain(self) -> None:
        await self.backend.wait_idle()
        log.info("runs finished; flushing data", unacked_frames=self.stream.unacked_frames)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timings.drain_flush_timeout_s
        while not self.stream.all_acked and loop.time() < deadline:
            self.link.notify_data()
            await asyncio.sleep(0.05)
        if not self.stream.all_acked:
            log.warning(
                "drain: data not acknowledged in time",
                unacked_frames=self.stream.unacked_frames,
                pending_items=self.stream.pending_items,
            )

    async def _shutdown(self, link_task: asyncio.Task[None]) -> None:
        await self.link.close()
        link_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await link_task
        if self._orphan_timer is not None:
            self._orphan_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.lag.stop()
        await self.backend.close()
        log.info("worker stopped")
