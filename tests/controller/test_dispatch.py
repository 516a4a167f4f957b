"""Dispatch: capacity split, buildup offsets, phasing and round-robin targets."""

from __future__ import annotations

import textwrap

import pytest

from sipswarm.controller.dispatch import (
    CapacityError,
    Dispatch,
    WorkerSlot,
    allocate,
    assign_json,
    buildup_offsets,
    group_of,
    quotas,
)
from sipswarm.controller.plan import load_plan
from sipswarm.protocol.enums import Phase

DIRECT = textwrap.dedent(
    """\
    groups:
      - {name: rx, size: 3, role: receiver, accounts: {user: "{200..202}"}}
      - {name: tx, size: 4, role: caller, target: rx, accounts: {user: "{100..103}"},
         call: {duration_s: 5}}
    buildup: {rate_per_s: 4}
    registration_window_s: 2
    """
)
REGISTERED = textwrap.dedent(
    """\
    registrars: {pbx: {domain: pbx.test, host: 127.0.0.1, port: 5080}}
    groups:
      - {name: rx, size: 2, role: receiver, accounts: {user: "{200..201}", password: "s{user}"}}
      - {name: tx, size: 3, role: caller, target: rx, accounts: {user: "{100..102}"}}
      - {name: uri, size: 1, role: caller, target: "sip:echo@pbx.test", accounts: {user: "9"}}
    buildup: {total_s: 1}
    trace: all
    """
)


def test_quotas_proportional_to_free_capacity() -> None:
    assert quotas(10, [WorkerSlot("a", 300), WorkerSlot("b", 100)]) == {"a": 8, "b": 2}
    assert quotas(3, [WorkerSlot("a", 1), WorkerSlot("b", 1), WorkerSlot("c", 1)]) == {
        "a": 1,
        "b": 1,
        "c": 1,
    }
    assert quotas(2, [WorkerSlot("a", 0), WorkerSlot("b", 5)]) == {"b": 2}
    with pytest.raises(CapacityError, match="needs 7 endpoints, 6 are free"):
        quotas(7, [WorkerSlot("a", 5), WorkerSlot("b", 1)])
    with pytest.raises(CapacityError, match="no worker connected"):
        quotas(1, [])


def test_buildup_offsets() -> None:
    assert buildup_offsets(4, 4.0, None) == [0, 250, 500, 750]
    assert buildup_offsets(4, None, 2.0) == [0, 500, 1000, 1500]
    assert buildup_offsets(3, None, 0.0) == [0, 0, 0]
    assert buildup_offsets(0, 1.0, None) == []


def test_allocate_spreads_every_group_over_workers() -> None:
    plan = load_plan(DIRECT)
    placed = allocate(plan, "r-1", [WorkerSlot("a", 100), WorkerSlot("b", 100)])
    assert [p.endpoint_id for p in placed[:3]] == ["r-1/rx/0", "r-1/rx/1", "r-1/rx/2"]
    by = {w: [p.group.name for p in placed if p.worker_id == w] for w in "ab"}
    assert sorted(by["a"] + by["b"]) == ["rx"] * 3 + ["tx"] * 4
    assert "rx" in by["a"] and "rx" in by["b"] and "tx" in by["a"] and "tx" in by["b"]
    assert abs(len(by["a"]) - len(by["b"])) <= 1
    assert group_of("r-1/rx/2") == "rx"


def test_direct_phasing_uses_contacts_round_robin() -> None:
    plan = load_plan(DIRECT)
    d = Dispatch(plan, "r-1", allocate(plan, "r-1", [WorkerSlot("w", 10)]))
    assert d.get_timer() is None
    ((wid, rx),) = d.receiver_assigns(start_at_ms=10_000)
    assert wid == "w" and [e.start_offset_ms for e in rx.endpoints] == [0, 250, 500]
    assert all(e.role == "receiver" and e.registrar.register_ is False for e in rx.endpoints)
    assert rx.start_at == 10_000 and rx.run_id == "r-1"
    # 4 callers dealt round-robin over 3 receivers: each is told how many calls to expect
    assert [e.call.expected_calls for e in rx.endpoints if e.call] == [2, 1, 1]
    # window: last receiver starts at +500, plus 2 s
    assert d.get_timer() == 12_500
    assert not d.callers_due(11_000)
    d.receive_phase("r-1/rx/0", Phase.REGISTERED, "sip:200@127.0.0.1:40000")
    d.receive_phase("r-1/rx/2", Phase.REGISTERED, "sip:202@127.0.0.1:40002")
    d.receive_phase("r-1/rx/0", Phase.REGISTERED, "sip:200@127.0.0.1:40000")  # replay
    assert not d.callers_due(11_000)
    d.receive_outcome("r-1/rx/1")  # rx/1 failed and closed: settled, but no contact
    assert d.callers_due(11_000)
    ((wid, tx),), unreachable = d.caller_assigns(start_at_ms=11_000)
    # a caller only calls its planned receiver (it expects exactly its callers' calls):
    # rx/1's caller is not re-routed to another receiver but reported unreachable
    assert [u.endpoint_id for u in unreachable] == ["r-1/tx/1"]
    targets = [e.call.target for e in tx.endpoints if e.call]
    assert targets == [
        "sip:200@127.0.0.1:40000",
        "sip:202@127.0.0.1:40002",
        "sip:200@127.0.0.1:40000",
    ]
    assert [e.start_offset_ms for e in tx.endpoints] == [0, 500, 750]
    assert tx.assignment_id != rx.assignment_id


def test_window_end_without_contacts_leaves_callers_unreachable() -> None:
    plan = load_plan(DIRECT)
    d = Dispatch(plan, "r-1", allocate(plan, "r-1", [WorkerSlot("w", 10)]))
    d.receiver_assigns(0)
    assert d.callers_due(2_500)
    assigns, unreachable = d.caller_assigns(2_500)
    assert assigns == [] and [u.endpoint_id for u in unreachable] == [
        "r-1/tx/0",
        "r-1/tx/1",
        "r-1/tx/2",
        "r-1/tx/3",
    ]


def test_registered_receivers_are_dialled_by_aor() -> None:
    plan = load_plan(REGISTERED)
    d = Dispatch(plan, "r-2", allocate(plan, "r-2", [WorkerSlot("w", 10)]))
    ((_, rx),) = d.receiver_assigns(0)
    ep = rx.endpoints[0]
    assert ep.account.username == "200" and ep.account.password == "s200"
    assert ep.registrar.domain == "pbx.test" and ep.registrar.port == 5080
    assert ep.registrar.register_ is True
    assert [e.start_offset_ms for e in rx.endpoints] == [0, 500]
    d.receive_phase("r-2/rx/1", Phase.REGISTERED, "sip:201@127.0.0.1:5999")
    d.receive_phase("r-2/rx/0", Phase.CLOSED, None)
    assert d.callers_due(1)
    ((_, tx),), unreachable = d.caller_assigns(5)
    assert [e.call.target for e in tx.endpoints if e.call] == [
        "sip:201@pbx.test",
        "sip:echo@pbx.test",
    ]
    assert [u.endpoint_id for u in unreachable] == ["r-2/tx/0", "r-2/tx/2"]  # rx/0's callers
    frame = assign_json(tx, plan)
    assert frame["type"] == "assign" and frame["settings"] == {
        "trace": "all",
        "metrics_interval_ms": 1000,
    }
    first = frame["endpoints"][0]
    assert first["registrar"]["register"] is True and "tls" not in first["registrar"]
    assert first["media"] == {
        "codecs": ["PCMU", "PCMA"],
        "ptime_ms": 20,
        "source": {"kind": "tone", "frequency_hz": 1000.0, "sha256": None},
        "srtp": "off",
        "dscp": 46,
    }
    assert first["call"] == {
        "target": "sip:201@pbx.test",
        "duration_s": 30.0,
        "ring_timeout_s": 30.0,
        "answer_delay_ms": 0,
    }


def test_callers_only_plan_is_due_at_once() -> None:
    plan = load_plan(
        "groups: [{name: c, size: 2, role: caller, target: 'sip:x@y', accounts: {user: '{1..2}'}}]"
    )
    d = Dispatch(plan, "r", allocate(plan, "r", [WorkerSlot("w", 2)]))
    assert d.receiver_assigns(0) == [] and d.callers_due(0)
    assigns, unreachable = d.caller_assigns(0)
    assert len(assigns) == 1 and unreachable == []


def test_tls_options_travel_as_an_extra_field() -> None:
    plan = load_plan(
        "registrars: {edge: {domain: sbc.test, transport: tls,"
        " tls: {verify: false, server_name: sbc.test, ca_file: /etc/ca.pem}}}\n"
        "groups: [{name: c, size: 1, role: caller, target: 'sip:x@sbc.test',"
        " accounts: {user: '1'}}]"
    )
    d = Dispatch(plan, "r", allocate(plan, "r", [WorkerSlot("w", 1)]))
    ((_, assign),), _ = d.caller_assigns(0)
    reg = assign_json(assign, plan)["endpoints"][0]["registrar"]
    assert reg["transport"] == "tls"
    assert reg["tls"] == {"verify": False, "server_name": "sbc.test", "ca_file": "/etc/ca.pem"}


def test_callers_are_dealt_to_receivers_once_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # Dealing was redone for every receiver's assign entry (expected_calls) and again for
    # the callers: O(receivers^2 x callers), 33 s of blocked event loop at 1,000 + 1,000.
    deals = 0
    original = Dispatch._deal_callers

    def counting(self: Dispatch) -> dict:
        nonlocal deals
        deals += 1
        return original(self)

    monkeypatch.setattr(Dispatch, "_deal_callers", counting)
    plan = load_plan(
        "groups:\n"
        '  - {name: rx, size: 40, role: receiver, accounts: {user: "{200..239}"}}\n'
        '  - {name: tx, size: 90, role: caller, target: rx, accounts: {user: "{1000..1089}"}}\n'
    )
    d = Dispatch(plan, "r-1", allocate(plan, "r-1", [WorkerSlot("w1", 200)]))
    ((_, assign),) = d.receiver_assigns(0)
    for r in d.receivers:
        d.receive_phase(r.endpoint_id, Phase.REGISTERED, f"sip:{r.n}@127.0.0.1:{5000 + r.n}")
    callers, unreachable = d.caller_assigns(0)
    assert deals == 1 and unreachable == []
    # 90 callers over 40 receivers: the first 10 receivers expect 3 calls, the others 2
    expected = [e.call.expected_calls for e in assign.endpoints]  # type: ignore[union-attr]
    assert expected == [3] * 10 + [2] * 30
    assert sum(len(a.endpoints) for _, a in callers) == 90
