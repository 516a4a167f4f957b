"""A small deterministic backend for link tests: it emits scripted items, no SIP, no RTP.

Each accepted assignment plays: INITIALIZING and REGISTERED phases for every
endpoint, a ``metrics`` item every ``metrics_every_s`` while it runs, then
after ``hold_s`` (None = until cancelled) an outcome and CLOSED per endpoint
and one ``finished``. ``cancel_run`` ends it at once with CANCELLED.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from sipswarm.agent.assignment import AssignmentSpec
from sipswarm.agent.backend import EmitItem
from sipswarm.agent.config import AgentConfig


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Play:
    spec: AssignmentSpec
    task: asyncio.Task[None] | None = None
    done: bool = False


@dataclass
class Script:
    hold_s: float | None = 0.3
    metrics_every_s: float | None = None
    metrics_pad: int = 0


@dataclass
class ScriptedBackend:
    config: AgentConfig
    emit: EmitItem
    script: Script = field(default_factory=Script)
    started: list[AssignmentSpec] = field(default_factory=list)
    cancelled: list[tuple[str, str]] = field(default_factory=list)
    closed: bool = False
    _plays: list[_Play] = field(default_factory=list)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def free_endpoints(self) -> int:
        return self.config.max_endpoints - self.active_endpoints()

    def active_endpoints(self) -> int:
        return sum(len(p.spec.endpoints) for p in self._plays if not p.done)

    def problem(self) -> str | None:
        return None

    def phase_counts(self) -> dict[str, int]:
        return {"REGISTERED": self.active_endpoints()} if self.active_endpoints() else {}

    def counters(self) -> dict[str, float]:
        return {"calls_total": float(sum(len(p.spec.endpoints) for p in self._plays if p.done))}

    async def start_assignment(self, spec: AssignmentSpec) -> None:
        self.started.append(spec)
        play = _Play(spec)
        self._plays.append(play)
        self._idle.clear()
        for ep in spec.endpoints:
            for phase in ("INITIALIZING", "REGISTERED"):
                self.emit(
                    {
                        "kind": "phase",
                        "run_id": spec.run_id,
                        "endpoint_id": ep.endpoint_id,
                        "ts": now_ms(),
                        "phase": phase,
                        **(
                            {"contact": f"sip:{ep.account.username}@127.0.0.1"}
                            if phase == "REGISTERED"
                            else {}
                        ),
                    }
                )
        play.task = asyncio.create_task(self._play(play))

    async def _play(self, play: _Play) -> None:
        loop = asyncio.get_running_loop()
        end = None if self.script.hold_s is None else loop.time() + self.script.hold_s
        while end is None or loop.time() < end:
            step = self.script.metrics_every_s or 0.05
            await asyncio.sleep(step if end is None else max(0.0, min(step, end - loop.time())))
            if self.script.metrics_every_s:
                self._metrics(play.spec)
        self._finish(play, "SUCCESS", None)

    def _metrics(self, spec: AssignmentSpec) -> None:
        self.emit(
            {
                "kind": "metrics",
                "run_id": spec.run_id,
                "ts": now_ms(),
                "endpoints": [
                    {
                        "endpoint_id": e.endpoint_id + "#" * self.script.metrics_pad,
                        "phase": "INCALL",
                        "send": {"packets_sent": 1},
                    }
                    for e in spec.endpoints
                ],
            }
        )

    def _finish(self, play: _Play, outcome: str, reason: str | None) -> None:
        if play.done:
            return
        spec = play.spec
        for ep in spec.endpoints:
            self.emit(
                {
                    "kind": "outcome",
                    "run_id": spec.run_id,
                    "endpoint_id": ep.endpoint_id,
                    "ts": now_ms(),
                    "outcome": outcome,
                    "final_code": None,
                    "reason": reason,
                }
            )
            self.emit(
                {
                    "kind": "phase",
                    "run_id": spec.run_id,
                    "endpoint_id": ep.endpoint_id,
                    "ts": now_ms(),
                    "phase": "CLOSED",
                }
            )
        self.emit(
            {
                "kind": "finished",
                "run_id": spec.run_id,
                "assignment_id": spec.assignment_id,
                "ts": now_ms(),
                "endpoints": len(spec.endpoints),
                "outcomes": {outcome: len(spec.endpoints)},
            }
        )
        play.done = True
        if all(p.done for p in self._plays):
            self._idle.set()

    async def cancel_run(self, run_id: str, reason: str) -> None:
        self.cancelled.append((run_id, reason))
        for play in self._plays:
            if play.spec.run_id == run_id and not play.done:
                if play.task is not None:
                    play.task.cancel()
                self._finish(play, "CANCELLED", reason)

    async def wait_idle(self) -> None:
        if all(p.done for p in self._plays):
            return
        await self._idle.wait()

    async def close(self) -> None:
        for play in self._plays:
            if play.task is not None:
                play.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await play.task
        self.closed = True


def assign_frame(
    aid: str = "a-1", run: str = "r-1", n: int = 2, **overrides: Any
) -> dict[str, Any]:
    """A valid ``assign`` as PROTOCOL.md shows it, with ``n`` callers."""
    endpoints = [
        {
            "endpoint_id": f"{run}/callers/{i}",
            "group": "callers",
            "role": "caller",
            "start_offset_ms": 0,
            "account": {"username": f"10{i:02d}", "password": "pw"},
            "registrar": {
                "domain": "pbx.test",
                "host": "127.0.0.1",
                "port": 5060,
                "transport": "udp",
                "register": True,
                "expires_s": 300,
            },
            "call": {"target": "sip:2000@pbx.test", "duration_s": 30},
            "media": {
                "codecs": ["PCMU"],
                "ptime_ms": 20,
                "source": {"kind": "tone", "frequency_hz": 1000},
                "srtp": "off",
            },
            "actions": [],
        }
        for i in range(n)
    ]
    frame = {
        "type": "assign",
        "assignment_id": aid,
        "run_id": run,
        "start_at": None,
        "settings": {"trace": "none", "metrics_interval_ms": 1000},
        "endpoints": endpoints,
    }
    frame.update(overrides)
    return frame
