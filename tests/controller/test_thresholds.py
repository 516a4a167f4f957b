"""Thresholds parsed and evaluated on hand-made aggregates."""

from __future__ import annotations

import pytest

from sipswarm.controller.aggregates import Aggregates, Percentiles, RunAggregates, Spread
from sipswarm.controller.thresholds import all_passed, evaluate, parse_threshold, parse_thresholds
from sipswarm.errors import ConfigError

AGG = RunAggregates(
    overall=Aggregates(
        calls_attempted=100,
        calls_answered=98,
        asr=0.98,
        ner=0.99,
        pdd=Percentiles(800.0, 2500.0, 3100.0),
        mos=Spread(4.3, 3.9, 4.1, 4.4, 4.4, 10),
        outcomes={"SUCCESS": 98, "CALL_FAILED": 2},
        final_codes={"200": 98, "486": 1, "0": 1},
    ),
    groups={"callers": Aggregates(calls_attempted=100, calls_answered=98, asr=0.98)},
)


@pytest.mark.parametrize(
    ("expr", "passed", "actual"),
    [
        ("asr >= 0.99", False, 0.98),
        ("asr >= 0.98", True, 0.98),
        ("ner > 0.985", True, 0.99),
        ("pdd.p95 < 3000", True, 2500.0),
        ("pdd.p99 < 3000", False, 3100.0),
        ("mos.p5 >= 4.0", True, 4.1),
        ("outcomes.SUCCESS >= 98", True, 98),
        ("outcomes.TIMEOUT == 0", True, 0),
        ("final_codes.486 <= 0", False, 1),
        ("final_codes.503 == 0", True, 0),
        ("asr{group=callers} != 1", True, 0.98),
        ("jitter.p95 < 30", False, None),  # no data fails
        ("asr{group=nobody} > 0", False, None),
        ("calls.attempted>=1e2", True, 100),
    ],
)
def test_evaluate(expr: str, passed: bool, actual: float | None) -> None:
    (result,) = evaluate([parse_threshold(expr)], AGG)
    assert result.passed is passed
    assert result.actual == actual
    assert str(result).startswith("PASS" if passed else "FAIL")


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("asr", "is not `METRIC OP NUMBER`"),
        ("asr => 1", "is not `METRIC OP NUMBER`"),
        ("asr >= high", "is not `METRIC OP NUMBER`"),
        ("mos.p3 >= 4", "unknown metric 'mos.p3'; known: asr, ner"),
        ("outcomes.GREAT > 1", "unknown metric 'outcomes.GREAT'"),
    ],
)
def test_bad_expressions(expr: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_threshold(expr)


def test_all_passed() -> None:
    results = evaluate(parse_thresholds(["asr > 0.9", "mos.min > 3.5"]), AGG)
    assert all_passed(results)
    assert not all_passed(evaluate(parse_thresholds(["asr > 0.99"]), AGG))
    assert all_passed([])
