"""The run manager: lifecycle + dispatch + storage, driven by worker events and a tick.

Theory of operation. :meth:`RunManager.submit` stores a validated plan as a
PENDING run and starts it: capacity is checked against the connected ONLINE
workers (not enough: CANNOT_RUN_FOR_NOW), every endpoint is placed
(:func:`dispatch.allocate`), media files are pushed to workers that lack
them, and the receivers' ``assign`` frames go out (QUEUED). When every sent
assignment is accepted the run is RUNNING. :meth:`tick` (called every
:data:`TICK_S` by the controller) sends the callers once
:meth:`Dispatch.callers_due`, ends the receivers still waiting once every
caller closed and no receiver is in a call (a ``cancel`` with reason
``complete``; a receiver that answered its call has closed by itself with
SUCCESS, see docs/plan.md "Receivers' lifetime"),
applies the lost-worker grace period and the STOPPING timeout, and ends the
run: COMPLETED when every assignment finished (or a worker was lost but
others finished theirs), FAILED when every worker of the run was lost for
longer than the grace period or an assignment was refused as invalid.
:meth:`cancel` moves a run to STOPPING (CANCELLED once workers report the
endpoints closed, or after :data:`STOP_TIMEOUT_S`).

``sipswarm run`` composes this: ``submit`` -> :meth:`wait` -> report.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from sipswarm.controller import aggregates as agg
from sipswarm.controller.dispatch import CapacityError, Dispatch, Placed, WorkerSlot, allocate
from sipswarm.controller.dispatch import assign_json as assign_to_json
from sipswarm.controller.hub import WorkerHub, WorkerSession, now_ms
from sipswarm.controller.lifecycle import RunLifecycle, RunStatus
from sipswarm.controller.plan import Plan
from sipswarm.controller.storage import Storage
from sipswarm.controller.thresholds import ThresholdResult, evaluate
from sipswarm.errors import ConfigError
from sipswarm.protocol import (
    Assign,
    AssignResult,
    Cancel,
    FinishedItem,
    Item,
    OutcomeItem,
    PhaseItem,
    RefusalReason,
)

log = logging.getLogger("sipswarm.controller.runs")

TICK_S = 0.25
START_LEAD_MS = 500  # start_at this far ahead, so that every worker holds the assign in time
COMPLETE_LINGER_MS = 1000  # after the last caller closed, before receivers are told to end
STOP_TIMEOUT_S = 15.0  # PROTOCOL.md gives workers 5 s to hang up; allow for slow links
LOST_GRACE_S = 60.0
ACCEPT_TIMEOUT_S = 30.0


@dataclass
class AssignmentState:
    assign: Assign
    worker_id: str
    accepted: bool | None = None
    finished: bool = False
    lost: bool = False

    @property
    def open(self) -> bool:
        return self.accepted is not False and not self.finished and not self.lost


@dataclass
class RunState:
    run_id: str
    plan: Plan
    life: RunLifecycle
    dispatch: Dispatch | None = None
    assignments: dict[str, AssignmentState] = field(default_factory=dict)
    callers_sent: bool = False
    callers_done_ms: int | None = None
    complete_sent: bool = False
    stop_started: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    notes: list[str] = field(default_factory=list)

    def workers(self) -> set[str]:
        return {a.worker_id for a in self.assignments.values()}


class RunManager:
    """Owns every run of this controller process. See the module docstring."""

    def __init__(
        self, storage: Storage, hub: WorkerHub | None = None, lost_grace_s: float = LOST_GRACE_S
    ) -> None:
        self.storage = storage
        self.hub: WorkerHub | None = hub
        self.lost_grace_s = lost_grace_s
        self.runs: dict[str, RunState] = {}
        self._ids = itertools.count(1)
        for run_id in storage.interrupted_runs():
            life = RunLifecycle(run_id, 0, storage.timeline(run_id))
            if life.can(RunStatus.FAILED):
                entry = life.transition(RunStatus.FAILED, now_ms(), "controller restarted")
                storage.record_transition(run_id, entry)

    # ------------------------------------------------------------------ public API

    async def submit(self, plan: Plan) -> str:
        """Store ``plan`` as a new run and start it; returns the run id."""
        run_id = f"r-{secrets.token_hex(3)}{next(self._ids)}"
        created = now_ms()
        self.storage.create_run(run_id, plan.name, plan.source_text, created)
        run = RunState(run_id, plan, RunLifecycle(run_id, created))
        self.runs[run_id] = run
        await self._start(run)
        return run_id

    async def cancel(self, run_id: str, reason: str = "user") -> RunStatus:
        """Stop a run: STOPPING while workers hang up, then CANCELLED."""
        run = self._run(run_id)
        if run.life.is_terminal or run.life.status is RunStatus.STOPPING:
            return run.life.status
        if run.life.status is RunStatus.PENDING:
            self._transition(run, RunStatus.CANCELLED, reason)
            return run.life.status
        self._transition(run, RunStatus.STOPPING, reason)
        run.stop_started = asyncio.get_running_loop().time()
        for wid in run.workers():
            await self._send(wid, Cancel(run_id=run_id, reason=reason))
        await self._check_end(run)
        return run.life.status

    async def wait(self, run_id: str, timeout: float | None = None) -> RunStatus:
        """Wait until the run is terminal; returns its status."""
        run = self._run(run_id)
        await asyncio.wait_for(run.done.wait(), timeout)
        return run.life.status

    def aggregates(self, run_id: str) -> agg.RunAggregates:
        s = self.storage
        run = self.runs.get(run_id)
        return agg.compute(
            s.call_records(run_id),
            s.metric_samples(run_id),
            s.outcome_records(run_id),
            s.registration_records(run_id),
            [g.name for g in run.plan.groups] if run is not None else s.group_names(run_id),
        )

    def thresholds(self, run_id: str) -> list[ThresholdResult]:
        run = self._run(run_id)
        return evaluate(run.plan.thresholds, self.aggregates(run_id))

    def snapshot(self, run_id: str) -> dict[str, Any]:
        """What the live view shows: status, elapsed, phases, calls, ASR, MOS, workers."""
        run = self._run(run_id)
        started = run.life.entered_ms(RunStatus.RUNNING) or run.life.created_ms
        ended = run.life.timeline[-1].ts_ms if run.life.is_terminal else now_ms()
        workers = self.hub.workers if self.hub else {}
        return {
            "run_id": run_id,
            "name": run.plan.name,
            "status": run.life.status.value,
            "reason": run.life.reason,
            "elapsed_s": max(0, ended - started) / 1000,
            "endpoints": run.plan.total_endpoints,
            "phases": self.storage.phase_counts(run_id),
            **self.storage.live_figures(run_id),
            "workers": {
                wid: workers[wid].status if wid in workers else "UNKNOWN"
                for wid in sorted(run.workers())
            },
        }

    # ------------------------------------------------------------------ start

    def _slots(self) -> list[WorkerSlot]:
        if self.hub is None:
            return []
        return [WorkerSlot(w.worker_id, w.free) for w in self.hub.workers.values() if w.free > 0]

    async def _start(self, run: RunState) -> None:
        try:
            placed = allocate(run.plan, run.run_id, self._slots())
        except CapacityError as exc:
            self._transition(run, RunStatus.CANNOT_RUN_FOR_NOW, str(exc))
            return
        run.dispatch = Dispatch(run.plan, run.run_id, placed)
        self._reserve_callers(run, placed)
        self._transition(run, RunStatus.QUEUED, f"{len(placed)} endpoints placed")
        assigns = run.dispatch.receiver_assigns(now_ms() + START_LEAD_MS)
        if not assigns:
            await self._send_callers(run)
        else:
            await self._send_assigns(run, assigns)

    def _reserve_callers(self, run: RunState, placed: list[Placed]) -> None:
        """Hold the callers' capacity until they are sent, so that no other run takes it."""
        if self.hub is None:
            return
        for p in placed:
            if p.group.role == "caller":
                held = self.hub.workers[p.worker_id].outstanding
                held[f"{run.run_id}:callers"] = held.get(f"{run.run_id}:callers", 0) + 1

    def _release_reservation(self, run: RunState) -> None:
        if self.hub is None:
            return
        for worker in self.hub.workers.values():
            worker.outstanding.pop(f"{run.run_id}:callers", None)

    async def _send_assigns(self, run: RunState, assigns: list[tuple[str, Assign]]) -> None:
        assert self.hub is not None
        for wid, assign in assigns:
            for sha, media in run.plan.media_files.items():
                await self.hub.push_media(wid, sha, media.name, media.data)
            state = AssignmentState(assign, wid)
            run.assignments[assign.assignment_id] = state
            worker = self.hub.workers[wid]
            worker.outstanding[assign.assignment_id] = len(assign.endpoints)
            rows = [
                (
                    e.endpoint_id,
                    e.group,
                    e.role.value,
                    int(e.endpoint_id.rsplit("/", 1)[-1]),
                    e.account.username,
                    e.call.target if e.call else None,
                )
                for e in assign.endpoints
            ]
            self.storage.add_assignment(assign.assignment_id, run.run_id, wid, rows, now_ms())
            await self.hub.send(wid, assign_to_json(assign, run.plan))

    async def _send_callers(self, run: RunState) -> None:
        assert run.dispatch is not None
        run.callers_sent = True
        self._release_reservation(run)
        assigns, unreachable = run.dispatch.caller_assigns(now_ms() + START_LEAD_MS)
        if unreachable:
            self._record_unreachable(run, unreachable)
        await self._send_assigns(run, assigns)

    def _record_unreachable(self, run: RunState, unreachable: list[Placed]) -> None:
        rows = [
            (
                p.endpoint_id,
                p.group.name,
                p.group.role,
                f"no reachable receiver in group {p.group.target_group!r} "
                f"after the {run.plan.registration_window_s:g} s registration window",
            )
            for p in unreachable
        ]
        self.storage.add_controller_outcome(run.run_id, rows, now_ms())
        run.notes.append(f"{len(rows)} caller(s) not started: no reachable receiver")

    # ------------------------------------------------------------------ worker events

    async def worker_up(self, worker: WorkerSession) -> None:
        """A worker (re)connected: resend what it has not answered (assign is idempotent)."""
        for run in list(self.runs.values()):
            if run.life.is_terminal:
                continue
            for a in run.assignments.values():
                if a.worker_id == worker.worker_id and a.accepted is None and not a.lost:
                    await self._send(worker.worker_id, assign_to_json(a.assign, run.plan))
            if run.life.status is RunStatus.STOPPING and worker.worker_id in run.workers():
                await self._send(worker.worker_id, Cancel(run_id=run.run_id, reason="user"))

    def worker_down(self, worker: WorkerSession) -> None:
        log.warning("worker %s disconnected", worker.worker_id)

    async def assign_result(self, worker: WorkerSession, result: AssignResult) -> None:
        for run in list(self.runs.values()):
            state = run.assignments.get(result.assignment_id)
            if state is None or state.accepted is not None:
                continue
            state.accepted = result.accepted
            self.storage.set_assignment_result(
                result.assignment_id,
                result.accepted,
                result.reason.value if result.reason else None,
                result.detail,
            )
            if not result.accepted:
                worker.outstanding.pop(result.assignment_id, None)
                await self._refused(run, worker, result)
            elif run.life.status is RunStatus.QUEUED and all(
                a.accepted for a in run.assignments.values()
            ):
                self._transition(run, RunStatus.RUNNING, "every assignment accepted")

    async def _refused(self, run: RunState, worker: WorkerSession, result: AssignResult) -> None:
        why = f"worker {worker.worker_id} refused {result.assignment_id}: " + (
            f"{result.reason.value if result.reason else '?'} ({summarize_detail(result.detail)})"
        )
        for wid in run.workers():
            await self._send(wid, Cancel(run_id=run.run_id, reason="refused"))
        capacity = result.reason in (RefusalReason.CAPACITY, RefusalReason.DRAINING)
        if run.life.status is RunStatus.QUEUED and capacity:
            self._transition(run, RunStatus.CANNOT_RUN_FOR_NOW, why)
        elif run.life.can(RunStatus.FAILED):
            self._transition(run, RunStatus.FAILED, why)

    async def items_stored(self, worker: WorkerSession, items: list[Item]) -> None:
        """Route stored items to their runs: phases to dispatch, finished to assignments."""
        for item in items:
            run = self.runs.get(item.run_id)
            if run is None or run.dispatch is None:
                continue
            if isinstance(item, PhaseItem):
                run.dispatch.receive_phase(item.endpoint_id, item.phase, item.contact)
            elif isinstance(item, OutcomeItem):
                run.dispatch.receive_outcome(item.endpoint_id)
            elif isinstance(item, FinishedItem):
                state = run.assignments.get(item.assignment_id)
                if state is not None:
                    state.finished = True
                    worker.outstanding.pop(item.assignment_id, None)

    # ------------------------------------------------------------------ tick

    async def tick(self) -> None:
        """Advance every live run; the controller calls this every :data:`TICK_S`."""
        if self.hub is not None:
            for worker in self.hub.check_heartbeats(now_ms()):
                log.warning("worker %s: no heartbeat, marked OFFLINE", worker.worker_id)
        for run in list(self.runs.values()):
            if run.life.is_terminal:
                continue
            try:
                await self._advance(run)
            except ConfigError as exc:  # a bug in a plan that validation let through
                self._transition(run, RunStatus.FAILED, str(exc))

    async def _advance(self, run: RunState) -> None:
        now = now_ms()
        self._apply_grace(run, now)
        queued_since = run.life.entered_ms(RunStatus.QUEUED)
        if (
            run.life.status is RunStatus.QUEUED
            and queued_since is not None
            and now - queued_since > ACCEPT_TIMEOUT_S * 1000
        ):
            silent = sorted({a.worker_id for a in run.assignments.values() if a.accepted is None})
            why = f"no assign_result within {ACCEPT_TIMEOUT_S:g} s from {', '.join(silent)}"
            for wid in run.workers():
                await self._send(wid, Cancel(run_id=run.run_id, reason="not accepted"))
            self._transition(run, RunStatus.FAILED, why)
            return
        active = run.life.status in (RunStatus.QUEUED, RunStatus.RUNNING)
        if active and not run.callers_sent and run.dispatch and run.dispatch.callers_due(now):
            await self._send_callers(run)
        if run.life.status is RunStatus.RUNNING and run.callers_sent:
            await self._end_receivers(run, now)
        await self._check_end(run)

    def _apply_grace(self, run: RunState, now: int) -> None:
        if self.hub is None:
            return
        limit = int(self.lost_grace_s * 1000)
        for a in run.assignments.values():
            worker = self.hub.workers.get(a.worker_id)
            down_since = worker.disconnected_ms if worker else None
            if a.open and down_since is not None and now - down_since > limit:
                a.lost = True
                if worker:
                    worker.outstanding.pop(a.assign.assignment_id, None)
                run.notes.append(f"worker {a.worker_id} lost for more than {self.lost_grace_s:g} s")

    async def _end_receivers(self, run: RunState, now: int) -> None:
        """End the receivers nobody called once every caller closed and none is in a call."""
        callers = [a for a in run.assignments.values() if a.assign.endpoints[0].role == "caller"]
        receivers_open = [
            a
            for a in run.assignments.values()
            if a.open and a.assign.endpoints[0].role == "receiver"
        ]
        if not callers or any(a.open for a in callers) or not receivers_open or run.complete_sent:
            return
        if run.dispatch is not None and run.dispatch.receivers_in_call():
            run.callers_done_ms = None  # a receiver finishing its call closes by itself
            return
        if run.callers_done_ms is None:
            run.callers_done_ms = now
        if now - run.callers_done_ms >= COMPLETE_LINGER_MS:
            run.complete_sent = True
            for wid in {a.worker_id for a in receivers_open}:
                await self._send(wid, Cancel(run_id=run.run_id, reason="complete"))

    async def _check_end(self, run: RunState) -> None:
        status = run.life.status
        if status not in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.STOPPING):
            return
        states = list(run.assignments.values())
        if states and all(a.lost for a in states):
            lost = ", ".join(sorted(run.workers()))
            self._transition(run, RunStatus.FAILED, f"every worker of the run was lost: {lost}")
            return
        if status is RunStatus.STOPPING:
            loop_now = asyncio.get_running_loop().time()
            timed_out = run.stop_started is not None and (
                loop_now - run.stop_started > STOP_TIMEOUT_S
            )
            if timed_out or not any(a.open for a in states):
                why = "workers did not confirm in time" if timed_out else "every endpoint closed"
                self._transition(run, RunStatus.CANCELLED, why)
            return
        if status is RunStatus.RUNNING and run.callers_sent and not any(a.open for a in states):
            self._transition(run, RunStatus.COMPLETED, "; ".join(run.notes) or "run finished")

    # ------------------------------------------------------------------ helpers

    def _run(self, run_id: str) -> RunState:
        run = self.runs.get(run_id)
        if run is None:
            raise KeyError(run_id)
        return run

    async def _send(self, worker_id: str, frame: Any) -> None:
        if self.hub is not None:
            await self.hub.send(worker_id, frame)

    def _transition(self, run: RunState, to: RunStatus, reason: str) -> None:
        entry = run.life.transition(to, now_ms(), reason)
        self.storage.record_transition(run.run_id, entry)
        log.info("run %s: %s (%s)", run.run_id, to.value, reason)
        if run.life.is_terminal:
            self._finish(run)

    def _finish(self, run: RunState) -> None:
        self._release_reservation(run)
        if self.hub is not None:
            for a in run.assignments.values():
                worker = self.hub.workers.get(a.worker_id)
                if worker is not None:
                    worker.outstanding.pop(a.assign.assignment_id, None)
        self.storage.save_aggregates(run.run_id, aggregates_json(self.aggregates(run.run_id)))
        run.done.set()


def summarize_detail(detail: str | None, keep: int = 2) -> str:
    """A worker's refusal detail for the run's reason: its first ``keep`` problems and
    how many more (a worker lists one per endpoint: a 1,000-endpoint assignment made a
    reason of pages). The full text stays in the assignment row (report, JSON, API)."""
    if not detail:
        return "no detail"
    problems = detail.split("; ")
    if len(problems) <= keep:
        return detail
    more = len(problems) - keep
    return f"{'; '.join(problems[:keep])}; and {more} more (see the run's assignments)"


def aggregates_json(result: agg.RunAggregates) -> dict[str, Any]:
    """Aggregates as JSON: ``overall`` and ``groups``, each a nested object plus ``metrics``."""
    from dataclasses import asdict

    def one(a: agg.Aggregates) -> dict[str, Any]:
        return {**asdict(a), "metrics": agg.flatten(a)}

    return {"overall": one(result.overall), "groups": {g: one(a) for g, a in result.groups.items()}}
