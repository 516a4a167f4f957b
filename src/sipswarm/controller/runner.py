"""Run one plan to its end on a started controller: the body of ``sipswarm run``.

``sipswarm run plan.yaml`` is: start a :class:`Controller` on loopback, start
a local agent pointed at ``controller.worker_url``, then
``await run_plan(controller, plan, RunOptions(...), stop)``. This waits for
workers, submits the plan, shows the live view, cancels the run when
``stop`` is set (Ctrl-C) or the timeout passes, writes the report and JSON,
prints the thresholds and returns the exit code:

- 0: the run COMPLETED and every threshold passed;
- 1: the run COMPLETED and a threshold failed;
- 3: the run did not complete (FAILED, CANNOT_RUN_FOR_NOW, CANCELLED).

(2 is left to the command line for a bad plan or bad options.)
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from sipswarm.controller.lifecycle import RunStatus
from sipswarm.controller.live import LiveView
from sipswarm.controller.plan import Plan
from sipswarm.controller.report import build_report, write_html, write_json
from sipswarm.controller.server import Controller
from sipswarm.controller.thresholds import (
    ThresholdResult,
    all_passed,
    evaluate,
    parse_thresholds,
)

EXIT_OK, EXIT_THRESHOLD, EXIT_NOT_COMPLETED = 0, 1, 3


@dataclass
class RunOptions:
    thresholds: Sequence[str] = ()  # extra expressions (``--threshold``), checked up front
    report_path: str | None = None
    json_path: str | None = None
    workers: int = 1  # wait for this many workers before submitting
    workers_timeout_s: float = 30.0
    timeout_s: float | None = None  # cancel the run after this long
    live: bool = True
    out: TextIO = field(default_factory=lambda: sys.stdout)


@dataclass
class RunSummary:
    run_id: str
    status: RunStatus
    reason: str
    thresholds: list[ThresholdResult]
    exit_code: int


async def run_plan(
    controller: Controller, plan: Plan, options: RunOptions, stop: asyncio.Event | None = None
) -> RunSummary:
    """Run ``plan`` to a terminal status; see the module docstring for the exit codes."""
    extra = parse_thresholds(options.thresholds)  # ConfigError before anything starts
    online = await controller.wait_for_workers(options.workers, options.workers_timeout_s)
    if online < options.workers:
        print(
            f"only {online} of {options.workers} worker(s) connected after "
            f"{options.workers_timeout_s:g} s; submitting anyway",
            file=options.out,
        )
    runs = controller.runs
    run_id = await runs.submit(plan)
    view = LiveView(lambda: runs.snapshot(run_id), out=options.out) if options.live else None
    async with view if view is not None else contextlib.nullcontext():
        await _wait_or_cancel(controller, run_id, stop, options.timeout_s)
    state = runs.runs[run_id]
    thresholds = [*plan.thresholds, *extra]
    report = build_report(controller.storage, run_id, thresholds, [g.name for g in plan.groups])
    if options.report_path:
        write_html(report, options.report_path)
    if options.json_path:
        write_json(report, options.json_path)
    results = evaluate(thresholds, runs.aggregates(run_id))
    for r in results:
        print(str(r), file=options.out)
    status = state.life.status
    if status is not RunStatus.COMPLETED:
        code = EXIT_NOT_COMPLETED
    else:
        code = EXIT_OK if all_passed(results) else EXIT_THRESHOLD
    print(f"run {run_id}: {status.value} ({state.life.reason})", file=options.out)
    return RunSummary(run_id, status, state.life.reason, results, code)


async def _wait_or_cancel(
    controller: Controller, run_id: str, stop: asyncio.Event | None, timeout_s: float | None
) -> None:
    runs = controller.runs
    done: asyncio.Future[Any] = asyncio.ensure_future(runs.wait(run_id))
    stopper: asyncio.Future[Any] | None = None
    waiters: set[asyncio.Future[Any]] = {done}
    if stop is not None:
        stopper = asyncio.ensure_future(stop.wait())
        waiters.add(stopper)
    try:
        finished, _ = await asyncio.wait(
            waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if done not in finished:
            reason = "user" if stopper is not None and stopper in finished else "timeout"
            await runs.cancel(run_id, reason)
            await done
    finally:
        if stopper is not None:
            stopper.cancel()
