"""What an endpoint reports: its phase table, outcome rules and the ``call`` item.

Pure functions and small tables, no I/O, so the rules can be read (and
tested) in one place. PROTOCOL.md is the contract; docs/protocol.md
("Worker extensions and choices") defines the timings precisely.

Phases
    :data:`PHASE_TRANSITIONS` allows every later phase (skips) and never an
    earlier or the same one (PROTOCOL.md: forward only).

Outcomes (issue 4)
    :func:`outcome_for_call_failure` maps a failed INVITE to an outcome;
    :class:`OutcomeState` keeps the worst one (a replacement only by a
    strictly higher severity, :meth:`~sipswarm.protocol.Outcome.replaced_by`).

Call item
    :func:`call_item` builds the ``call`` item from a
    :class:`~sipswarm.sip.call.Call` and the first RTP time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sipswarm.errors import InvalidState
from sipswarm.protocol import Outcome, Phase, call_result_for
from sipswarm.sip.call import Call

__all__ = [
    "LOSS_WARNING_FRACTION",
    "PHASE_TRANSITIONS",
    "OutcomeState",
    "call_item",
    "check_transition",
    "outcome_for_call_failure",
]

#: phase -> phases it may move to: every later one (skips allowed), never back.
PHASE_TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    p: frozenset(q for q in Phase if q.order > p.order) for p in Phase
}

#: An answered call whose received media lost more than this fraction ends with warnings.
LOSS_WARNING_FRACTION = 0.05

# final code of a failed INVITE -> outcome; codes not listed are CALL_FAILED.
_FAILURE_OUTCOMES: dict[int, Outcome] = {
    408: Outcome.TIMEOUT,  # no final response (Timer B) or 408 from the far end
    480: Outcome.CALL_FAILED,
    487: Outcome.TIMEOUT,  # our CANCEL after ring_timeout_s (a run cancel is handled first)
    488: Outcome.NEGOTIATION_FAILED,
    606: Outcome.NEGOTIATION_FAILED,  # RFC 3261 21.6.4 Not Acceptable (global)
}


def check_transition(current: Phase | None, new: Phase, who: str) -> None:
    """Raise InvalidState unless ``current -> new`` is in :data:`PHASE_TRANSITIONS`."""
    if current is None:
        return
    if new not in PHASE_TRANSITIONS[current]:
        raise InvalidState(
            f"endpoint {who}: phase {current.value} cannot go to {new.value} "
            "(phases only move forward)"
        )


def outcome_for_call_failure(code: int | None) -> Outcome:
    """Outcome of a call that failed with final ``code`` (None: no final response)."""
    if code is None:
        return Outcome.TIMEOUT
    return _FAILURE_OUTCOMES.get(code, Outcome.CALL_FAILED)


@dataclass(slots=True)
class OutcomeState:
    """The worst outcome so far with its final code and reason in words."""

    outcome: Outcome | None = None
    final_code: int | None = None
    reason: str | None = None

    def offer(self, outcome: Outcome, reason: str, code: int | None = None) -> bool:
        """Take ``outcome`` if it is the first or strictly more severe; True if taken."""
        if self.outcome is not None and self.outcome.replaced_by(outcome) is self.outcome:
            return False
        self.outcome, self.reason = outcome, reason
        if code is not None:
            self.final_code = code
        return True

    def final(self) -> tuple[Outcome, int | None, str]:
        """The outcome to send: SUCCESS when nothing went wrong."""
        if self.outcome is None:
            return Outcome.SUCCESS, self.final_code, "completed"
        return self.outcome, self.final_code, self.reason or self.outcome.value.lower()


def _delta(later: int | None, earlier: int | None) -> float | None:
    if later is None or earlier is None:
        return None
    return float(later - earlier)


def call_item(
    call: Call,
    run_id: str,
    endpoint_id: str,
    epoch_ms: Callable[[float | None], int | None],
    first_rtp_ts: int | None,
    final_ts: float | None,
) -> dict[str, Any]:
    """The PROTOCOL.md ``call`` item; times epoch ms, durations ms (docs/protocol.md).

    ``final_ts`` is when the final response was sent/received (loop clock),
    the end of post-dial delay for calls that never rang.
    """
    invite = epoch_ms(call.invite_ts)
    ringing = epoch_ms(call.ringing_ts)
    answer = epoch_ms(call.answer_ts)
    bye = epoch_ms(call.bye_ts)
    first_response = ringing if ringing is not None else epoch_ms(final_ts)
    code = call.final_code
    return {
        "kind": "call",
        "run_id": run_id,
        "endpoint_id": endpoint_id,
        "direction": call.direction,
        "final_code": code,
        "result": call_result_for(code).value,
        "invite_ts": invite,
        "ringing_ts": ringing,
        "answer_ts": answer,
        "first_rtp_ts": first_rtp_ts,
        "bye_ts": bye,
        "pdd_ms": _delta(first_response, invite),
        "ttr_ms": _delta(ringing, invite),
        "setup_ms": _delta(answer, invite),
        "ttfm_ms": _delta(first_rtp_ts, invite),
        "duration_ms": _delta(bye, answer) if answer is not None else None,
    }
