"""Storage: items stored once per (stream, seq), readers feed the aggregates."""

from __future__ import annotations

from pathlib import Path

from sipswarm.controller.aggregates import compute
from sipswarm.controller.lifecycle import RunLifecycle, RunStatus
from sipswarm.controller.storage import Storage
from sipswarm.protocol.parse import parse_item

RUN = "r-1"


def _items(*objs: dict) -> list:
    out = []
    for obj in objs:
        item, problems = parse_item(obj)
        assert item is not None, problems
        out.append(item)
    return out


def _frame_one() -> list:
    return _items(
        {"kind": "phase", "run_id": RUN, "endpoint_id": "r-1/tx/0", "ts": 1000, "phase": "CALLING"},
        {
            "kind": "registration",
            "run_id": RUN,
            "endpoint_id": "r-1/rx/0",
            "ts": 900,
            "status_code": 200,
            "register_ms": 12.5,
            "expires_granted_s": 300,
        },
        {
            "kind": "call",
            "run_id": RUN,
            "endpoint_id": "r-1/tx/0",
            "direction": "out",
            "final_code": 200,
            "result": "answered",
            "invite_ts": 1000,
            "pdd_ms": 120.0,
            "setup_ms": 130.0,
        },
        {
            "kind": "metrics",
            "run_id": RUN,
            "ts": 2000,
            "endpoints": [
                {
                    "endpoint_id": "r-1/tx/0",
                    "phase": "INCALL",
                    "send": {"packets_sent": 50},
                    "recv": {
                        "packets_received": 49,
                        "packets_lost": 1,
                        "jitter_ms": 3.0,
                        "mos": 4.3,
                    },
                },
                {"endpoint_id": "r-1/rx/0", "phase": "INCALL"},
            ],
        },
        {
            "kind": "trace",
            "run_id": RUN,
            "endpoint_id": "r-1/tx/0",
            "ts": 1000,
            "dir": "out",
            "transport": "udp",
            "local": "127.0.0.1:5000",
            "remote": "127.0.0.1:5001",
            "message": "INVITE sip:a@b SIP/2.0\r\n\r\n",
        },
        {
            "kind": "outcome",
            "run_id": RUN,
            "endpoint_id": "r-1/tx/0",
            "ts": 3000,
            "outcome": "SUCCESS",
            "final_code": 200,
            "reason": None,
        },
        {
            "kind": "finished",
            "run_id": RUN,
            "assignment_id": "r-1-a2",
            "ts": 3100,
            "endpoints": 1,
            "outcomes": {"SUCCESS": 1},
        },
        {"kind": "gap", "run_id": RUN, "from_ts": 1, "to_ts": 2, "dropped_items": 3},
    )


def test_replayed_frame_is_stored_once(tmp_path: Path) -> None:
    db = Storage(tmp_path / "s.db")
    db.add_assignment("r-1-a1", RUN, "w1", [("r-1/rx/0", "rx", "receiver", 0, "200", None)], 1)
    db.add_assignment("r-1-a2", RUN, "w1", [("r-1/tx/0", "tx", "caller", 0, "100", "sip:x")], 2)
    assert db.acked_seq("stream-A") is None
    assert db.store_data("stream-A", "w1", 7, _frame_one()) is True
    assert db.acked_seq("stream-A") == 7
    # replay after a reconnect: same stream, same seq -> nothing stored twice
    assert db.store_data("stream-A", "w1", 7, _frame_one()) is False
    assert db.store_data("stream-A", "w1", 6, _frame_one()) is False
    calls = db.call_records(RUN)
    assert len(calls) == 1 and calls[0].group == "tx" and calls[0].pdd_ms == 120.0
    assert len(db.metric_samples(RUN)) == 2
    assert [o.outcome for o in db.outcome_records(RUN)] == ["SUCCESS"]
    assert len(db.registration_records(RUN)) == 1
    assert len(db.traces("r-1/tx/0")) == 1
    # a new process of the same worker (new stream) starts its own seq
    assert db.store_data("stream-B", "w1", 1, []) is True
    db.close()
    # data survives a controller restart
    again = Storage(tmp_path / "s.db")
    assert again.acked_seq("stream-A") == 7
    agg = compute(
        again.call_records(RUN),
        again.metric_samples(RUN),
        again.outcome_records(RUN),
        again.registration_records(RUN),
    )
    assert agg.overall.asr == 1.0 and agg.overall.mos.mean == 4.3
    assert agg.overall.loss == 0.02
    eps = {e["endpoint_id"]: e for e in again.endpoints(RUN)}
    assert eps["r-1/tx/0"]["phase"] == "CALLING" and eps["r-1/tx/0"]["outcome"] == "SUCCESS"
    assert eps["r-1/rx/0"]["phase"] is None
    (a1, a2) = again.assignments(RUN)
    assert a2["finished_ms"] == 3100 and a1["finished_ms"] is None
    again.close()


def test_phase_only_moves_forward() -> None:
    db = Storage()
    db.add_assignment("a", RUN, "w", [("r-1/rx/0", "rx", "receiver", 0, "200", None)], 1)
    items = _items(
        {"kind": "phase", "run_id": RUN, "endpoint_id": "r-1/rx/0", "ts": 5, "phase": "INCALL"},
        {
            "kind": "phase",
            "run_id": RUN,
            "endpoint_id": "r-1/rx/0",
            "ts": 3,
            "phase": "REGISTERED",
            "contact": "sip:200@127.0.0.1:7000",
        },
    )
    db.store_data("s", "w", 1, items)
    (ep,) = db.endpoints(RUN)
    assert ep["phase"] == "INCALL" and ep["contact"] == "sip:200@127.0.0.1:7000"
    assert db.phase_counts(RUN) == {"INCALL": 1}


def test_series_and_timeline() -> None:
    db = Storage()
    db.add_assignment(
        "a",
        RUN,
        "w",
        [("r-1/tx/0", "tx", "caller", 0, "1", None), ("r-1/rx/0", "rx", "receiver", 0, "2", None)],
        1,
    )
    items = _items(
        {
            "kind": "metrics",
            "run_id": RUN,
            "ts": 1200,
            "endpoints": [
                {"endpoint_id": "r-1/tx/0", "phase": "INCALL", "recv": {"mos": 4.0}},
                {"endpoint_id": "r-1/rx/0", "phase": "INCALL", "recv": {"mos": 3.0}},
            ],
        },
        {
            "kind": "metrics",
            "run_id": RUN,
            "ts": 2100,
            "endpoints": [{"endpoint_id": "r-1/tx/0", "phase": "CLOSED"}],
        },
    )
    db.store_data("s", "w", 1, items)
    s1, s2 = db.series(RUN)
    assert s1["ts"] == 1000 and s1["phases"] == {"INCALL": 2} and s1["active_calls"] == 1
    assert s1["mos"] == 3.5 and s2["mos"] is None and s2["phases"] == {"CLOSED": 1}
    db.create_run(RUN, "n", "plan", 10)
    life = RunLifecycle(RUN, 10)
    db.record_transition(RUN, life.transition(RunStatus.FAILED, 20, "boom"))
    assert [e.status for e in db.timeline(RUN)] == [RunStatus.PENDING, RunStatus.FAILED]
    assert db.run(RUN)["status"] == "FAILED"  # type: ignore[index]
    assert db.interrupted_runs() == []


def test_live_figures_show_callers_in_a_call_before_their_call_item() -> None:
    # call items come when a call ends: without this the live view read
    # "0 answered / 0 attempted" for the whole call while every endpoint was INCALL
    db = Storage()
    rows = [
        ("r-1/tx/0", "tx", "caller", 0, "1", "sip:x"),
        ("r-1/rx/0", "rx", "receiver", 0, "2", None),
    ]
    db.add_assignment("a", RUN, "w", rows, 1)
    items = _items(
        {"kind": "phase", "run_id": RUN, "endpoint_id": "r-1/tx/0", "ts": 5, "phase": "INCALL"},
        {"kind": "phase", "run_id": RUN, "endpoint_id": "r-1/rx/0", "ts": 5, "phase": "INCALL"},
    )
    db.store_data("s", "w", 1, items)
    live = db.live_figures(RUN)
    assert live["calls_active"] == 1 and live["calls_attempted"] == 0


def _metrics_with(ts: int, generator: dict | None) -> list:
    item: dict = {"kind": "metrics", "run_id": RUN, "ts": ts, "endpoints": []}
    item["endpoints"].append({"endpoint_id": "r-1/tx/0", "phase": "INCALL"})
    if generator is not None:
        item["generator"] = generator
    return _items(item)


def _gen(lag: float, late: float | None, skipped: int, overloaded: bool) -> dict:
    return {
        "loop_lag_ms_p99": lag,
        "send_lateness_ms_p99": late,
        "skipped_ticks": skipped,
        "overloaded": overloaded,
    }


def test_generator_blocks_per_worker_and_second_reach_series_and_report() -> None:
    from sipswarm.controller.report import build_report, render_html

    db = Storage()
    db.create_run(RUN, "gen", "groups: []", 1)
    db.store_data("a", "w1", 1, _metrics_with(1000, _gen(1.0, 0.5, 0, False)))
    db.store_data("b", "w2", 1, _metrics_with(1010, _gen(30.0, 12.0, 4, True)))
    db.store_data("a", "w1", 2, _metrics_with(2000, _gen(2.0, None, 0, False)))
    db.store_data("b", "w2", 2, _metrics_with(1900, _gen(25.0, 11.0, 0, True)))  # same second
    db.store_data("a", "w1", 3, _metrics_with(3000, None))  # a worker without the extension
    health = db.generator_health(RUN)
    assert health == {
        "seconds": 2,
        "overloaded_seconds": 1,
        "loop_lag_ms_p99_max": 30.0,
        "send_lateness_ms_p99_max": 12.0,
        "skipped_ticks": 4,
        "overloaded_seconds_by_worker": {"w1": 0, "w2": 1},
    }
    flags = [(p["ts"], p["generator_overloaded"]) for p in db.series(RUN)]
    assert flags == [(1000, True), (2000, False), (3000, None)]
    html = render_html(build_report(db, RUN))
    assert "Generator overloaded in 1 of 2 seconds (w2: 1;" in html
    assert "4 media clock ticks skipped" in html


def test_report_says_the_generator_kept_up() -> None:
    from sipswarm.controller.report import build_report, render_html

    db = Storage()
    db.create_run(RUN, "gen", "groups: []", 1)
    db.store_data("a", "w1", 1, _metrics_with(1000, _gen(1.5, 0.7, 0, False)))
    html = render_html(build_report(db, RUN))
    assert "Generator kept up in all 1 seconds" in html
