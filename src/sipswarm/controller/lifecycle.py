"""Run statuses and their legal transitions, with a timeline.

::

    PENDING --> QUEUED --> RUNNING --> COMPLETED
       |          |           |------> FAILED
       |          |           '------> STOPPING --> CANCELLED
       |          |------------------> STOPPING       (or FAILED)
       |          '--> CANNOT_RUN_FOR_NOW | FAILED
       '--> CANNOT_RUN_FOR_NOW | FAILED | CANCELLED

PENDING: the plan is valid; media and capacity are being checked.
QUEUED: assignments are out, waiting for the workers to accept them.
RUNNING: workers accepted; endpoints run. COMPLETED means the run finished,
not that calls succeeded (the results say which). CANNOT_RUN_FOR_NOW: no
worker, or not enough free capacity. STOPPING: a cancel was sent, workers
are hanging up; then CANCELLED. Forward only: a terminal status never
changes. Call :meth:`RunLifecycle.transition`; it raises
:class:`InvalidState` on anything not in :data:`TRANSITIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from sipswarm.errors import InvalidState


class RunStatus(StrEnum):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANNOT_RUN_FOR_NOW = "CANNOT_RUN_FOR_NOW"
    STOPPING = "STOPPING"
    CANCELLED = "CANCELLED"


S = RunStatus
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.PENDING: frozenset({S.QUEUED, S.CANNOT_RUN_FOR_NOW, S.FAILED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.CANNOT_RUN_FOR_NOW, S.FAILED, S.STOPPING}),
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.STOPPING}),
    S.STOPPING: frozenset({S.CANCELLED, S.FAILED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.CANNOT_RUN_FOR_NOW: frozenset(),
    S.CANCELLED: frozenset(),
}
TERMINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    ts_ms: int
    status: RunStatus
    reason: str = ""


@dataclass(slots=True)
class RunLifecycle:
    """The status of one run and the time of every transition (Unix ms)."""

    run_id: str
    created_ms: int
    timeline: list[TimelineEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.timeline:
            self.timeline.append(TimelineEntry(self.created_ms, RunStatus.PENDING))

    @property
    def status(self) -> RunStatus:
        return self.timeline[-1].status

    @property
    def reason(self) -> str:
        return self.timeline[-1].reason

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    def can(self, to: RunStatus) -> bool:
        return to in TRANSITIONS[self.status]

    def transition(self, to: RunStatus, now_ms: int, reason: str = "") -> TimelineEntry:
        """Move to ``to`` at ``now_ms``; raise :class:`InvalidState` if not allowed."""
        if to not in TRANSITIONS[self.status]:
            allowed = ", ".join(sorted(s.value for s in TRANSITIONS[self.status])) or "none"
            raise InvalidState(
                f"run {self.run_id}: cannot go from {self.status.value} to {to.value} "
                f"(allowed: {allowed})"
            )
        entry = TimelineEntry(now_ms, to, reason)
        self.timeline.append(entry)
        return entry

    def entered_ms(self, status: RunStatus) -> int | None:
        """When the run entered ``status``, or None if it never did."""
        for entry in self.timeline:
            if entry.status is status:
                return entry.ts_ms
        return None
