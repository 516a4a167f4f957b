"""k6-style pass/fail thresholds on a run's aggregates.

An expression is ``METRIC[{group=NAME}] OP NUMBER``::

    asr >= 0.99
    mos.p5 >= 4.0
    pdd.p95 < 3000
    outcomes.SUCCESS >= 100
    asr{group=callers} > 0.95

``OP`` is one of ``< <= > >= == !=``. Metric names are those of
:func:`sipswarm.controller.aggregates.flatten`. Call :func:`parse_threshold`
(raises :class:`ConfigError` naming the expression and listing the known
metrics), then :func:`evaluate` with the run's aggregates; a metric with no
data (e.g. MOS when no media flowed) fails its threshold.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sipswarm.controller.aggregates import (
    METRIC_NAMES,
    OUTCOMES,
    RunAggregates,
    flatten,
    is_known_metric,
)
from sipswarm.errors import ConfigError

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
EXPR_RE = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_.]*)"
    r"(?:\{\s*group\s*=\s*(?P<group>[A-Za-z0-9_.-]+)\s*\})?"
    r"\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


def known_metrics_help() -> str:
    """The list of metric names, for error messages and docs."""
    extra = f"outcomes.<{'|'.join(OUTCOMES)}>, final_codes.<code>"
    return f"{', '.join(METRIC_NAMES)}, {extra}"


@dataclass(frozen=True, slots=True)
class Threshold:
    expression: str
    metric: str
    op: str
    value: float
    group: str | None = None


@dataclass(frozen=True, slots=True)
class ThresholdResult:
    threshold: Threshold
    actual: float | None
    passed: bool

    def __str__(self) -> str:
        shown = "no data" if self.actual is None else f"{self.actual:.6g}"
        return (
            f"{'PASS' if self.passed else 'FAIL'}  {self.threshold.expression}  (actual: {shown})"
        )


def parse_threshold(expression: str) -> Threshold:
    """Parse one expression; raise :class:`ConfigError` saying what is wrong with it."""
    m = EXPR_RE.match(expression)
    if m is None:
        raise ConfigError(
            f"threshold {expression!r} is not `METRIC OP NUMBER` "
            f"(e.g. 'asr >= 0.99', 'pdd.p95{{group=callers}} < 3000'); "
            f"OP is one of {' '.join(OPERATORS)}"
        )
    metric = m["metric"]
    if not is_known_metric(metric):
        raise ConfigError(
            f"threshold {expression!r}: unknown metric {metric!r}; known: {known_metrics_help()}"
        )
    return Threshold(expression.strip(), metric, m["op"], float(m["value"]), m["group"])


def parse_thresholds(expressions: Sequence[str]) -> list[Threshold]:
    """Parse several expressions (e.g. repeated ``--threshold`` options)."""
    return [parse_threshold(e) for e in expressions]


def evaluate(thresholds: Sequence[Threshold], aggregates: RunAggregates) -> list[ThresholdResult]:
    """Evaluate every threshold; a missing value or an unknown group fails."""
    results = []
    for t in thresholds:
        agg = aggregates.overall if t.group is None else aggregates.groups.get(t.group)
        actual: float | None = None
        if agg is not None:
            values = flatten(agg)
            default = 0.0 if t.metric.startswith("final_codes.") else None
            actual = values.get(t.metric, default)
        passed = (
            actual is not None
            and not math.isnan(actual)
            and OPERATORS[t.op](float(actual), t.value)
        )
        results.append(ThresholdResult(t, None if actual is None else float(actual), passed))
    return results


def all_passed(results: Sequence[ThresholdResult]) -> bool:
    """True when every threshold passed (an empty list passes)."""
    return all(r.passed for r in results)
