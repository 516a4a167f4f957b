"""Aggregates against figures computed by hand."""

from __future__ import annotations

import pytest

from sipswarm.controller.aggregates import (
    CallRecord,
    MetricSample,
    OutcomeRecord,
    RegistrationRecord,
    compute,
    flatten,
)

CALLS = [
    # caller side: 5 attempts, 3 answered, one 486 (counts for NER), one 408
    CallRecord("c", "out", 200, "answered", pdd_ms=100, setup_ms=150, ttfm_ms=160),
    CallRecord("c", "out", 200, "answered", pdd_ms=200, setup_ms=250, ttfm_ms=260),
    CallRecord("c", "out", 200, "answered", pdd_ms=300, setup_ms=350, ttfm_ms=None),
    CallRecord("c", "out", 486, "busy", pdd_ms=400),
    CallRecord("c", "out", None, "timeout", pdd_ms=500),
    # receiver side of the 3 answered calls: not counted overall
    CallRecord("r", "in", 200, "answered"),
    CallRecord("r", "in", 200, "answered"),
    CallRecord("r", "in", 200, "answered"),
]
SAMPLES = [
    MetricSample(
        "c", "e1", 1000, mos=4.4, jitter_ms=2.0, rtt_ms=10, packets_lost=0, packets_received=50
    ),
    MetricSample(
        "c", "e1", 2000, mos=4.2, jitter_ms=4.0, rtt_ms=20, packets_lost=2, packets_received=98
    ),
    MetricSample("r", "e2", 1000, mos=3.0, jitter_ms=6.0, packets_lost=5, packets_received=95),
    MetricSample("r", "e2", 2000),  # no media yet / no values: ignored everywhere
]
OUTCOMES = [
    OutcomeRecord("c", "e1", "SUCCESS"),
    OutcomeRecord("c", "e3", "CALL_FAILED"),
    OutcomeRecord("r", "e2", "SUCCESS"),
]
REGS = [
    RegistrationRecord("r", 200, 40.0),
    RegistrationRecord("r", 401, None),
    RegistrationRecord("r", 200, 60.0),
]


def test_overall_by_hand() -> None:
    agg = compute(CALLS, SAMPLES, OUTCOMES, REGS).overall
    assert agg.calls_attempted == 5 and agg.calls_answered == 3
    assert agg.asr == pytest.approx(3 / 5)
    assert agg.ner == pytest.approx(4 / 5)
    # numpy linear percentiles of [100..500]: p50 = 300, p95 = 400 + 0.8*100, p99 = 400 + 0.96*100
    assert (agg.pdd.p50, agg.pdd.p95, agg.pdd.p99) == pytest.approx((300, 480, 496))
    assert agg.setup.p50 == pytest.approx(250)
    assert agg.ttfm.p50 == pytest.approx(210)
    # MOS samples 4.4, 4.2, 3.0: mean 3.8667, min 3.0, p5 = 3.0 + 0.1*(4.2-3.0) = 3.12
    assert agg.mos.mean == pytest.approx(11.6 / 3)
    assert agg.mos.min == 3.0 and agg.mos.p5 == pytest.approx(3.12)
    assert agg.jitter.max == 6.0 and agg.jitter.mean == pytest.approx(4.0)
    assert agg.rtt.mean == pytest.approx(15.0)
    # last cumulative counters: e1 lost 2 of 100, e2 lost 5 of 100
    assert agg.loss == pytest.approx(7 / 200)
    assert agg.registrations_attempted == 3 and agg.registrations_succeeded == 2
    assert agg.register.p50 == pytest.approx(50.0)
    assert agg.outcomes == {"SUCCESS": 2, "CALL_FAILED": 1}
    assert agg.final_codes == {"0": 1, "200": 3, "486": 1}
    assert agg.results == {"answered": 3, "busy": 1, "timeout": 1}
    assert agg.endpoints == 3


def test_per_group() -> None:
    groups = compute(CALLS, SAMPLES, OUTCOMES, REGS).groups
    assert set(groups) == {"c", "r"}
    assert groups["r"].calls_attempted == 3 and groups["r"].asr == 1.0
    assert groups["r"].mos.mean == 3.0 and groups["r"].loss == pytest.approx(0.05)
    assert groups["c"].loss == pytest.approx(0.02)
    assert groups["c"].registrations_attempted == 0


def test_empty_run_has_no_ratios() -> None:
    agg = compute([], [], [], []).overall
    assert agg.asr is None and agg.ner is None and agg.mos.mean is None and agg.loss is None
    flat = flatten(agg)
    assert flat["calls.attempted"] == 0 and flat["outcomes.SUCCESS"] == 0
    assert flat["pdd.p95"] is None


def test_receiver_only_plan_counts_incoming() -> None:
    agg = compute([c for c in CALLS if c.direction == "in"], [], [], []).overall
    assert agg.calls_attempted == 3 and agg.asr == 1.0


def test_unregister_on_close_is_not_a_registration() -> None:
    # Every registered endpoint sends REGISTER Expires: 0 when it closes; the worker
    # reports it as a registration item with expires_granted_s 0. Counting it as a
    # registration doubled `registrations.attempted` and hid failures in the ratio:
    # 1 of 2 registrations failing read as 2 of 3 (0.67) instead of 1 of 2 (0.5).
    regs = [
        RegistrationRecord("r", 200, 40.0, 300),
        RegistrationRecord("r", 403, None, None),
        RegistrationRecord("r", 200, None, 0),  # the unregister of the first
        RegistrationRecord("r", 500, None, 0),  # an unregister that failed
    ]
    values = flatten(compute([], [], [], regs).overall)
    assert values["registrations.attempted"] == 2 and values["registrations.succeeded"] == 1
    assert values["registrations.ratio"] == 0.5
    assert values["unregistrations.attempted"] == 2
    assert values["unregistrations.succeeded"] == 1
    assert values["register.p50"] == 40.0
