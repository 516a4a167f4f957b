"""Run lifecycle: the transition table, the timeline, InvalidState."""

from __future__ import annotations

import pytest

from sipswarm.controller.lifecycle import TERMINAL, TRANSITIONS, RunLifecycle, RunStatus
from sipswarm.errors import InvalidState

S = RunStatus


def test_happy_path_timeline() -> None:
    run = RunLifecycle("r-1", created_ms=1000)
    assert run.status is S.PENDING
    run.transition(S.QUEUED, 1100)
    run.transition(S.RUNNING, 1200)
    run.transition(S.COMPLETED, 9000, "all assignments finished")
    assert [(e.ts_ms, e.status) for e in run.timeline] == [
        (1000, S.PENDING),
        (1100, S.QUEUED),
        (1200, S.RUNNING),
        (9000, S.COMPLETED),
    ]
    assert run.is_terminal and run.reason == "all assignments finished"
    assert run.entered_ms(S.RUNNING) == 1200 and run.entered_ms(S.FAILED) is None


def test_cancel_goes_through_stopping() -> None:
    run = RunLifecycle("r-1", 0)
    run.transition(S.QUEUED, 1)
    run.transition(S.RUNNING, 2)
    run.transition(S.STOPPING, 3, "user")
    with pytest.raises(InvalidState, match="cannot go from STOPPING to COMPLETED"):
        run.transition(S.COMPLETED, 4)
    run.transition(S.CANCELLED, 5)


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_statuses_never_change(terminal: RunStatus) -> None:
    assert TRANSITIONS[terminal] == frozenset()
    run = RunLifecycle("r", 0)
    path = {
        S.COMPLETED: [S.QUEUED, S.RUNNING, S.COMPLETED],
        S.FAILED: [S.FAILED],
        S.CANNOT_RUN_FOR_NOW: [S.CANNOT_RUN_FOR_NOW],
        S.CANCELLED: [S.CANCELLED],
    }[terminal]
    for i, s in enumerate(path):
        run.transition(s, i)
    for target in RunStatus:
        with pytest.raises(InvalidState, match="allowed: none"):
            run.transition(target, 99)
    assert run.status is terminal


def test_forward_only() -> None:
    run = RunLifecycle("r", 0)
    run.transition(S.QUEUED, 1)
    with pytest.raises(InvalidState):
        run.transition(S.PENDING, 2)
    run.transition(S.RUNNING, 2)
    with pytest.raises(InvalidState):
        run.transition(S.QUEUED, 3)
    assert not run.can(S.CANNOT_RUN_FOR_NOW)


def test_refusal_detail_is_summarized_for_the_run_reason() -> None:
    from sipswarm.controller.runs import summarize_detail

    # a worker lists one problem per endpoint: 30 endpoints made a reason of pages
    detail = "; ".join(
        f"endpoints[{i}].actions[1].at_s 20.0 comes after the call ends" for i in range(30)
    )
    short = summarize_detail(detail)
    assert short.startswith(
        "endpoints[0].actions[1].at_s 20.0 comes after the call ends; endpoints[1]"
    )
    assert short.endswith("; and 28 more (see the run's assignments)")
    assert summarize_detail("one; two") == "one; two"
    assert summarize_detail(None) == "no detail"
