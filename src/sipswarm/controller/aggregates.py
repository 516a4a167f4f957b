"""Run results reduced to the figures a VoIP engineer asks for, overall and per group.

Inputs are plain records read back from storage (:class:`CallRecord`,
:class:`MetricSample`, :class:`OutcomeRecord`, :class:`RegistrationRecord`);
:func:`compute` returns a :class:`RunAggregates` (overall + per group) and
:func:`flatten` turns one :class:`Aggregates` into the dotted metric names
that thresholds use (``asr``, ``pdd.p95``, ``outcomes.SUCCESS`` ...).

Definitions:
- attempted: calls placed (``direction: out``); for a group of receivers,
  the calls it received. Overall counts the callers' side only, so a call
  between two of our own endpoints is not counted twice (receiver-only plans
  count incoming calls).
- ASR = answered (2xx) / attempted (ITU-T E.411 answer seizure ratio).
- NER = (2xx + 486 + 603) / attempted: the network delivered the call even
  if the user was busy or declined (E.411 network effectiveness ratio as the
  issue defines it).
- PDD, setup and time to first media: p50/p95/p99 (ms) over calls that have them.
- MOS, jitter, RTT: over every one-second sample that carries a value;
  MOS p5 is the 5th percentile (the bad tail).
- loss: packets lost / (lost + received), from each endpoint's last
  cumulative counters (a lost or repeated sample cannot skew it).
- registrations: REGISTER outcomes that add a binding (initial and
  refreshes); the REGISTER with Expires 0 sent on close is an
  unregistration (``expires_granted_s`` 0) and counted apart, so that
  ``registrations.ratio`` is not lifted by the goodbyes of a run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

OUTCOMES = (
    "SUCCESS",
    "COMPLETED_WITH_WARNINGS",
    "CANCELLED",
    "REGISTRATION_FAILED",
    "CALL_FAILED",
    "NEGOTIATION_FAILED",
    "TIMEOUT",
    "OSERROR",
    "TEARDOWN_ERROR",
)
NER_CODES = frozenset({486, 603})

# Fixed metric names for thresholds; plus "outcomes.<OUTCOME>" and "final_codes.<code>".
METRIC_NAMES = (
    "asr",
    "ner",
    "calls.attempted",
    "calls.answered",
    "pdd.p50",
    "pdd.p95",
    "pdd.p99",
    "setup.p50",
    "setup.p95",
    "setup.p99",
    "ttfm.p50",
    "ttfm.p95",
    "ttfm.p99",
    "mos.mean",
    "mos.min",
    "mos.p5",
    "jitter.mean",
    "jitter.p95",
    "jitter.max",
    "loss",
    "rtt.mean",
    "rtt.p95",
    "rtt.max",
    "registrations.attempted",
    "registrations.succeeded",
    "registrations.ratio",
    "unregistrations.attempted",
    "unregistrations.succeeded",
    "register.p50",
    "register.p95",
    "register.p99",
    "endpoints",
)


@dataclass(frozen=True, slots=True)
class CallRecord:
    group: str
    direction: str
    final_code: int | None
    result: str
    pdd_ms: float | None = None
    setup_ms: float | None = None
    ttfm_ms: float | None = None
    duration_ms: float | None = None


@dataclass(frozen=True, slots=True)
class MetricSample:
    group: str
    endpoint_id: str
    ts: int
    mos: float | None = None
    jitter_ms: float | None = None
    rtt_ms: float | None = None
    packets_lost: int | None = None
    packets_received: int | None = None


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    group: str
    endpoint_id: str
    outcome: str


@dataclass(frozen=True, slots=True)
class RegistrationRecord:
    group: str
    status_code: int | None
    register_ms: float | None
    expires_granted_s: int | None = None  # 0: the unregister on close


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        if not values:
            return cls()
        p = np.percentile(np.asarray(values, dtype=float), [50, 95, 99])
        return cls(float(p[0]), float(p[1]), float(p[2]))


@dataclass(frozen=True, slots=True)
class Spread:
    """mean / min / p5 / p95 / max of a sampled gauge (None when never sampled)."""

    mean: float | None = None
    min: float | None = None
    p5: float | None = None
    p95: float | None = None
    max: float | None = None
    samples: int = 0

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls()
        a = np.asarray(values, dtype=float)
        p5, p95 = np.percentile(a, [5, 95])
        return cls(
            float(a.mean()), float(a.min()), float(p5), float(p95), float(a.max()), len(values)
        )


@dataclass(frozen=True, slots=True)
class Aggregates:
    calls_attempted: int = 0
    calls_answered: int = 0
    asr: float | None = None
    ner: float | None = None
    pdd: Percentiles = field(default_factory=Percentiles)
    setup: Percentiles = field(default_factory=Percentiles)
    ttfm: Percentiles = field(default_factory=Percentiles)
    mos: Spread = field(default_factory=Spread)
    jitter: Spread = field(default_factory=Spread)
    rtt: Spread = field(default_factory=Spread)
    loss: float | None = None
    registrations_attempted: int = 0
    registrations_succeeded: int = 0
    unregistrations_attempted: int = 0
    unregistrations_succeeded: int = 0
    register: Percentiles = field(default_factory=Percentiles)
    outcomes: dict[str, int] = field(default_factory=dict)
    final_codes: dict[str, int] = field(default_factory=dict)
    results: dict[str, int] = field(default_factory=dict)
    endpoints: int = 0


@dataclass(frozen=True, slots=True)
class RunAggregates:
    overall: Aggregates
    groups: dict[str, Aggregates]


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _ok(code: int | None) -> bool:
    return code is not None and 200 <= code < 300


def _present(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def _loss(samples: Sequence[MetricSample]) -> float | None:
    last: dict[str, MetricSample] = {}
    for s in samples:
        if s.packets_received is None and s.packets_lost is None:
            continue
        prev = last.get(s.endpoint_id)
        if prev is None or s.ts >= prev.ts:
            last[s.endpoint_id] = s
    lost = sum(max(0, s.packets_lost or 0) for s in last.values())
    received = sum(s.packets_received or 0 for s in last.values())
    return _ratio(lost, lost + received)


def aggregate(
    calls: Sequence[CallRecord],
    samples: Sequence[MetricSample],
    outcomes: Sequence[OutcomeRecord],
    registrations: Sequence[RegistrationRecord],
) -> Aggregates:
    """Aggregates of already-filtered records (one group, or the overall view)."""
    answered = [c for c in calls if c.final_code is not None and 200 <= c.final_code < 300]
    ner_ok = len(answered) + sum(1 for c in calls if c.final_code in NER_CODES)
    regs = [r for r in registrations if r.expires_granted_s != 0]
    unregs = [r for r in registrations if r.expires_granted_s == 0]
    reg_ok = [r for r in regs if _ok(r.status_code)]
    return Aggregates(
        calls_attempted=len(calls),
        calls_answered=len(answered),
        asr=_ratio(len(answered), len(calls)),
        ner=_ratio(ner_ok, len(calls)),
        pdd=Percentiles.of(_present(c.pdd_ms for c in calls)),
        setup=Percentiles.of(_present(c.setup_ms for c in calls)),
        ttfm=Percentiles.of(_present(c.ttfm_ms for c in calls)),
        mos=Spread.of(_present(s.mos for s in samples)),
        jitter=Spread.of(_present(s.jitter_ms for s in samples)),
        rtt=Spread.of(_present(s.rtt_ms for s in samples)),
        loss=_loss(samples),
        registrations_attempted=len(regs),
        registrations_succeeded=len(reg_ok),
        unregistrations_attempted=len(unregs),
        unregistrations_succeeded=sum(1 for r in unregs if _ok(r.status_code)),
        register=Percentiles.of(_present(r.register_ms for r in reg_ok)),
        outcomes=dict(Counter(o.outcome for o in outcomes)),
        final_codes={
            str(k): v for k, v in sorted(Counter(c.final_code or 0 for c in calls).items())
        },
        results=dict(Counter(c.result for c in calls)),
        endpoints=len({o.endpoint_id for o in outcomes}),
    )


def compute(
    calls: Sequence[CallRecord],
    samples: Sequence[MetricSample],
    outcomes: Sequence[OutcomeRecord],
    registrations: Sequence[RegistrationRecord],
    group_names: Iterable[str] = (),
) -> RunAggregates:
    """Overall and per-group aggregates (see module docstring for the definitions).

    ``group_names`` (the plan's groups) get an entry even without any record, so that
    a group whose endpoints never started shows zeros instead of being left out."""
    groups = sorted(
        {c.group for c in calls}
        | {s.group for s in samples}
        | {o.group for o in outcomes}
        | {r.group for r in registrations}
        | set(group_names)
    )
    per_group = {
        g: aggregate(
            [c for c in calls if c.group == g],
            [s for s in samples if s.group == g],
            [o for o in outcomes if o.group == g],
            [r for r in registrations if r.group == g],
        )
        for g in groups
    }
    out_calls = [c for c in calls if c.direction == "out"]
    overall = aggregate(out_calls or list(calls), samples, outcomes, registrations)
    return RunAggregates(overall, per_group)


def flatten(agg: Aggregates) -> dict[str, float | None]:
    """Dotted metric names -> values, as thresholds and the JSON export name them."""
    out: dict[str, float | None] = {
        "asr": agg.asr,
        "ner": agg.ner,
        "calls.attempted": agg.calls_attempted,
        "calls.answered": agg.calls_answered,
        "loss": agg.loss,
        "registrations.attempted": agg.registrations_attempted,
        "registrations.succeeded": agg.registrations_succeeded,
        "registrations.ratio": _ratio(agg.registrations_succeeded, agg.registrations_attempted),
        "unregistrations.attempted": agg.unregistrations_attempted,
        "unregistrations.succeeded": agg.unregistrations_succeeded,
        "endpoints": agg.endpoints,
    }
    for name, pct in (("pdd", agg.pdd), ("setup", agg.setup), ("ttfm", agg.ttfm)):
        out.update({f"{name}.p50": pct.p50, f"{name}.p95": pct.p95, f"{name}.p99": pct.p99})
    out.update({"register.p50": agg.register.p50, "register.p95": agg.register.p95})
    out["register.p99"] = agg.register.p99
    out.update({"mos.mean": agg.mos.mean, "mos.min": agg.mos.min, "mos.p5": agg.mos.p5})
    out.update({"jitter.mean": agg.jitter.mean, "jitter.p95": agg.jitter.p95})
    out.update({"jitter.max": agg.jitter.max, "rtt.mean": agg.rtt.mean})
    out.update({"rtt.p95": agg.rtt.p95, "rtt.max": agg.rtt.max})
    for outcome in OUTCOMES:
        out[f"outcomes.{outcome}"] = agg.outcomes.get(outcome, 0)
    for code, count in agg.final_codes.items():
        out[f"final_codes.{code}"] = count
    return out


def is_known_metric(name: str) -> bool:
    """True for a fixed metric name, ``outcomes.<OUTCOME>`` or ``final_codes.<3 digits>``."""
    if name in METRIC_NAMES:
        return True
    prefix, _, rest = name.partition(".")
    if prefix == "outcomes":
        return rest in OUTCOMES
    return prefix == "final_codes" and rest.isdigit() and len(rest) == 3
