"""When endpoints start, and whether the callers' calls fit their receivers.

:func:`buildup_offsets` gives the start offsets of a phase's endpoints (the
dispatcher uses it for ``start_offset_ms``). :func:`overlapping_calls` is a
plan check: callers targeting a group are dealt round-robin over its
receivers (docs/plan.md "Receivers' lifetime"), and a receiver takes one call
at a time, so with more callers than receivers the buildup must leave each
receiver time to finish a call before its next caller dials. If it does not,
the later calls are sure to get 486 Busy Here: the plan is refused with the
rate that would work, before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sipswarm.controller.plan import Group, Plan

# INVITE transit, BYE and its 200, the receiver ready again: slack between two calls
TURNAROUND_S = 1.0


def buildup_offsets(count: int, rate_per_s: float | None, total_s: float | None) -> list[int]:
    """Start offsets (ms): ``rate_per_s`` apart, or ``count`` spread over ``total_s``."""
    if count <= 0:
        return []
    step = 1000.0 / rate_per_s if rate_per_s is not None else (total_s or 0.0) * 1000.0 / count
    return [int(i * step) for i in range(count)]


@dataclass(frozen=True, slots=True)
class Overlap:
    """Two callers of one receiver dial ``gap_s`` apart; a call holds it ``hold_s``."""

    caller_group: str
    receiver_group: str
    receiver: int
    gap_s: float
    hold_s: float
    receivers: int
    callers: int

    def __str__(self) -> str:
        return (
            f"callers of {self.caller_group!r} reach receiver {self.receiver_group}/"
            f"{self.receiver} {self.gap_s:g} s apart, but a call holds a receiver "
            f"{self.hold_s:g} s (ringing + call + {TURNAROUND_S:g} s): its next "
            f"call would get 486 Busy Here. {self.callers} callers share {self.receivers} "
            "receivers; slow the buildup (rate_per_s at most "
            f"{self.receivers / self.hold_s:.3g}), shorten call.duration_s or add receivers"
        )


def _hold_s(caller: Group, receiver: Group) -> float:
    """How long one call keeps a receiver busy: ringing then the call, whose side that
    reaches its duration first hangs up; or ringing until the caller's ring timeout."""
    ringing = receiver.call.answer_delay_ms / 1000.0
    if ringing >= caller.call.ring_timeout_s:
        return caller.call.ring_timeout_s + TURNAROUND_S
    return ringing + min(caller.call.duration_s, receiver.call.duration_s) + TURNAROUND_S


def overlapping_calls(plan: Plan) -> Overlap | None:
    """The first pair of calls that would reach a receiver while it is still in a call."""
    callers = [(g, n) for g in plan.groups if g.role == "caller" for n in range(g.size)]
    offsets = buildup_offsets(len(callers), plan.rate_per_s, plan.total_s)
    dealt: dict[str, int] = {}
    last: dict[tuple[str, int], tuple[int, Group]] = {}  # receiver -> (offset, caller group)
    for (group, _), offset in zip(callers, offsets, strict=True):
        if group.target_group is None:
            continue
        receivers = plan.group(group.target_group)
        k = dealt.get(receivers.name, 0)
        dealt[receivers.name] = k + 1
        key = (receivers.name, k % receivers.size)
        previous = last.get(key)
        last[key] = (offset, group)
        if previous is None:
            continue
        hold = _hold_s(previous[1], receivers)
        gap = (offset - previous[0]) / 1000.0
        if gap < hold:
            total = sum(g.size for g in plan.groups if g.target_group == receivers.name)
            return Overlap(group.name, receivers.name, key[1], gap, hold, receivers.size, total)
    return None
