"""The controller's side of receivers' lifetime (docs/plan.md), on the pure Dispatch."""

from __future__ import annotations

from sipswarm.controller.dispatch import (
    IDLE_MARGIN_S,
    Dispatch,
    WorkerSlot,
    allocate,
    assign_json,
)
from sipswarm.controller.plan import load_plan
from sipswarm.protocol.enums import Phase

PLAN = """
name: t
groups:
  - {name: rx, size: 2, role: receiver, register: false, accounts: {user: "{100..101}"}}
  - {name: other, size: 1, role: receiver, register: false, accounts: {user: "300"}}
  - {name: tx, size: 2, role: caller, register: false, target: rx, accounts: {user: "{200..201}"}}
buildup: {rate_per_s: 2}
registration_window_s: 10
"""


def make() -> Dispatch:
    plan = load_plan(PLAN)
    return Dispatch(plan, "r-1", allocate(plan, "r-1", [WorkerSlot("w", 10)]))


def test_targeted_receivers_get_an_idle_timeout_others_and_callers_do_not() -> None:
    d = make()
    ((_, rx),) = d.receiver_assigns(0)
    frame = assign_json(rx, d.plan)
    idle = {e["group"]: e["call"].get("idle_timeout_s") for e in frame["endpoints"]}
    # receivers span 1 s (3 at 2/s), window 10 s, callers span 0.5 s, plus the margin
    assert idle == {"rx": 1.0 + 10 + 0.5 + IDLE_MARGIN_S, "other": None}
    assert all("idle_timeout_s" not in e["call"] for e in frame["endpoints"] if e["group"] != "rx")
    for e in frame["endpoints"]:
        d.receive_phase(e["endpoint_id"], Phase.REGISTERED, f"sip:{e['endpoint_id']}@h")
    ((_, tx),) = d.caller_assigns(0)[0]
    assert all("idle_timeout_s" not in e["call"] for e in assign_json(tx, d.plan)["endpoints"])


def test_receivers_in_call_counts_calling_to_disconnecting_only() -> None:
    d = make()
    d.receiver_assigns(0)
    a, b, c = (r.endpoint_id for r in d.receivers)
    d.receive_phase(a, Phase.INCALL, None)
    d.receive_phase(b, Phase.REGISTERED, "sip:b@h")
    assert d.receivers_in_call() == 1
    d.receive_phase(a, Phase.RINGING, None)  # a replayed, older phase changes nothing
    assert d.receivers_in_call() == 1
    d.receive_outcome(a)
    d.receive_phase(c, Phase.DISCONNECTING, None)
    assert d.receivers_in_call() == 1
