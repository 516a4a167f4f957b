"""Run reports: a JSON document and a self-contained HTML page built from it.

:func:`build_report` reads one run from storage into a plain JSON-able dict
(run, timeline, aggregates overall and per group, thresholds, per-second
series, PDD histogram, failed endpoints with their SIP traces).
:func:`write_json` and :func:`write_html` / :func:`render_html` emit it; the
HTML has its plots as inline SVG (:mod:`.svg`) and no external asset.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from sipswarm.controller.aggregates import compute
from sipswarm.controller.runs import aggregates_json
from sipswarm.controller.storage import Storage
from sipswarm.controller.svg import bar_chart, line_chart
from sipswarm.controller.thresholds import Threshold, evaluate

OK_OUTCOMES = frozenset({"SUCCESS", "COMPLETED_WITH_WARNINGS", "CANCELLED"})
MAX_FAILED_SHOWN = 20
MAX_TRACE_MESSAGES = 60
PHASE_ORDER = (
    "PENDING", "INITIALIZING", "REGISTERED", "CALLING", "RINGING", "NEGOTIATING", "INCALL",
    "DISCONNECTING", "CLOSED",
)  # fmt: skip


def build_report(
    storage: Storage,
    run_id: str,
    thresholds: Sequence[Threshold] = (),
    group_names: Sequence[str] = (),
) -> dict[str, Any]:
    """Everything the report shows, as JSON-able data (this is also ``--json``).

    ``group_names``: the plan's groups, shown even when they have no record."""
    run = storage.run(run_id) or {"run_id": run_id}
    calls = storage.call_records(run_id)
    # the callers' PDD, as in the overall aggregates (a receiver's side is not a dial)
    placed = [c for c in calls if c.direction == "out"] or calls
    pdd = [c.pdd_ms for c in placed if c.pdd_ms is not None]
    aggs = compute(
        calls,
        storage.metric_samples(run_id),
        storage.outcome_records(run_id),
        storage.registration_records(run_id),
        [*group_names, *storage.group_names(run_id)],
    )
    failed = [
        e for e in storage.endpoints(run_id) if e["outcome"] and e["outcome"] not in OK_OUTCOMES
    ]
    return {
        "run_id": run_id,
        "name": run.get("name"),
        "status": run.get("status"),
        "reason": run.get("reason"),
        "timeline": [
            {"ts": e.ts_ms, "status": e.status.value, "reason": e.reason}
            for e in storage.timeline(run_id)
        ],
        "aggregates": aggregates_json(aggs),
        "thresholds": [
            {"expression": r.threshold.expression, "actual": r.actual, "passed": r.passed}
            for r in evaluate(thresholds, aggs)
        ],
        "series": storage.series(run_id),
        "generator": storage.generator_health(run_id),
        "pdd_histogram": histogram(pdd),
        "failed_endpoints": [
            {**e, "trace": storage.traces(e["endpoint_id"], MAX_TRACE_MESSAGES)}
            for e in failed[:MAX_FAILED_SHOWN]
        ],
        "failed_endpoints_total": len(failed),
        "assignments": storage.assignments(run_id),
        "plan": run.get("plan"),
    }


def histogram(values: Sequence[float], bins: int = 20) -> list[dict[str, float]]:
    """``[{"from", "to", "count"}]`` over ``bins`` equal-width bins (numpy)."""
    if not values:
        return []
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins)
    return [
        {"from": float(edges[i]), "to": float(edges[i + 1]), "count": int(counts[i])}
        for i in range(len(counts))
    ]


def write_json(report: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")


def write_html(report: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(render_html(report), encoding="utf-8")


# ---------------------------------------------------------------------- HTML

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.pass{color:#207020;font-weight:bold}.fail{color:#b00020;font-weight:bold}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px;max-height:400px}
.status{font-size:18px;font-weight:bold}details{margin:6px 0}
table.text td:last-child{text-align:left;max-width:640px}
"""


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return escape(str(v))


def _utc(ts_ms: int) -> str:
    """Epoch milliseconds as an ISO 8601 UTC time with milliseconds."""
    moment = datetime.fromtimestamp(ts_ms / 1000.0, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


AGG_ROWS = (
    ("calls attempted", "calls.attempted"),
    ("calls answered", "calls.answered"),
    ("ASR (%)", "asr%"),
    ("NER (%)", "ner%"),
    ("PDD p50 / p95 / p99 (ms)", ("pdd.p50", "pdd.p95", "pdd.p99")),
    ("setup p50 / p95 / p99 (ms)", ("setup.p50", "setup.p95", "setup.p99")),
    ("time to first media p50 / p95 / p99 (ms)", ("ttfm.p50", "ttfm.p95", "ttfm.p99")),
    ("MOS mean / min / p5", ("mos.mean", "mos.min", "mos.p5")),
    ("jitter mean / p95 / max (ms)", ("jitter.mean", "jitter.p95", "jitter.max")),
    ("packet loss (%)", "loss%"),
    ("RTT mean / p95 / max (ms)", ("rtt.mean", "rtt.p95", "rtt.max")),
    ("registrations ok / attempted", ("registrations.succeeded", "registrations.attempted")),
    ("unregistrations ok / attempted", ("unregistrations.succeeded", "unregistrations.attempted")),
    ("register p50 / p95 (ms)", ("register.p50", "register.p95")),
)


def _aggregate_table(aggs: dict[str, Any]) -> str:
    columns = [("overall", aggs["overall"]), *sorted(aggs["groups"].items())]
    rows = []
    for label, keys in AGG_ROWS:
        row: list[Any] = [label]
        for _, a in columns:
            m = a["metrics"]
            if isinstance(keys, tuple):
                row.append(" / ".join(_fmt(m.get(k)) for k in keys))
            elif keys.endswith("%"):  # a ratio shown as a percentage
                ratio = m.get(keys[:-1])
                row.append(_fmt(None if ratio is None else round(100.0 * ratio, 2)))
            else:
                row.append(_fmt(m.get(keys)))
        rows.append(row)
    head = "".join(f"<th>{escape(h)}</th>" for h in ["", *[c for c, _ in columns]])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _counts_table(title: str, aggs: dict[str, Any], key: str) -> str:
    columns = [("overall", aggs["overall"]), *sorted(aggs["groups"].items())]
    names = sorted({k for _, a in columns for k in a[key]})
    if not names:
        return f"<p>No {escape(title)}.</p>"
    rows = [[n, *[a[key].get(n, 0) for _, a in columns]] for n in names]
    return _table([title, *[c for c, _ in columns]], rows)


def _charts(series: list[dict[str, Any]], pdd: list[dict[str, float]]) -> str:
    if series:
        t0 = series[0]["ts"]
        xs = [(p["ts"] - t0) / 1000 for p in series]
    else:
        xs = []

    def pick(key: str) -> list[tuple[float, float]]:
        return [(x, p[key]) for x, p in zip(xs, series, strict=True) if p[key] is not None]

    phases = [ph for ph in PHASE_ORDER if any(ph in p["phases"] for p in series)]
    by_phase = {
        ph: [(x, float(p["phases"].get(ph, 0))) for x, p in zip(xs, series, strict=True)]
        for ph in phases
    }
    loss = [(x, y * 100) for x, y in pick("loss")]
    bars = [(f"{b['from']:.3g}", float(b["count"])) for b in pdd]
    # one time axis for every chart: the run's first to last sample
    span = (xs[0], xs[-1]) if len(xs) > 1 and xs[-1] > xs[0] else None

    def timed(
        title: str, unit: str, data: dict[str, Any], y_range: tuple[float, float] | None = None
    ) -> str:
        x_label = "seconds since the first sample"
        return line_chart(title, unit, data, span, y_range, x_label)

    return "".join(
        [
            timed("Endpoints by phase", "endpoints", by_phase),
            timed("Active calls", "calls", {"active calls": pick("active_calls")}),
            timed("MOS (mean of endpoints)", "MOS", {"MOS": pick("mos")}, (1.0, 5.0)),
            timed("Jitter (mean)", "ms", {"jitter": pick("jitter_ms")}),
            timed("RTT (mean)", "ms", {"RTT": pick("rtt_ms")}),
            timed("Packet loss (mean of endpoints)", "%", {"loss %": loss}),
            bar_chart("PDD histogram", "calls", bars, x_label="PDD (ms, bin start)"),
        ]
    )


def _failed(report: dict[str, Any]) -> str:
    failed = report["failed_endpoints"]
    if not failed:
        return "<p>No failed endpoint.</p>"
    parts = [
        f"<p>{report['failed_endpoints_total']} failed endpoint(s); "
        f"the first {len(failed)} with their SIP traces:</p>"
    ]
    for e in failed:
        lines = [
            f"{t['ts']} {t['dir'].upper()} {t['transport']} {t['local']} -> {t['remote']}\n"
            f"{t['message']}"
            for t in e["trace"]
        ]
        trace = escape("\n".join(lines)) if lines else "(no trace stored: see the trace setting)"
        parts.append(
            f"<details><summary>{escape(e['endpoint_id'])}: {escape(str(e['outcome']))} "
            f"{_fmt(e['final_code'])} {escape(e['reason'] or '')}</summary><pre>{trace}</pre>"
            "</details>"
        )
    return "".join(parts)


_TEXT_TABLE = '<table class="text">'  # last column is prose: left-aligned


def _refused(assignments: list[dict[str, Any]]) -> str:
    """Assignments a worker refused, with the worker's full list of problems."""
    parts = []
    for a in assignments:
        problems = escape((a["detail"] or "no detail").replace("; ", "\n"))
        parts.append(
            f"<p>{escape(a['assignment_id'])} ({a['endpoints']} endpoints) refused by "
            f"{escape(a['worker_id'])}: {escape(a['reason'] or '?')}</p><pre>{problems}</pre>"
        )
    return "".join(parts)


def _generator(gen: dict[str, Any]) -> str:
    """One sentence on whether the workers kept up (their metrics' ``generator`` blocks)."""
    if not gen["seconds"]:
        return ""
    if not gen["overloaded_seconds"]:
        return (
            f'<p class="pass">Generator kept up in all {gen["seconds"]} seconds '
            f"(worst loop lag p99 {_fmt(gen['loop_lag_ms_p99_max'])} ms, send lateness p99 "
            f"{_fmt(gen['send_lateness_ms_p99_max'])} ms).</p>"
        )
    workers = ", ".join(
        f"{escape(w)}: {n}" for w, n in gen["overloaded_seconds_by_worker"].items() if n
    )
    return (
        f'<p class="fail">Generator overloaded in {gen["overloaded_seconds"]} of '
        f"{gen['seconds']} seconds ({workers}; worst loop lag p99 "
        f"{_fmt(gen['loop_lag_ms_p99_max'])} ms, send lateness p99 "
        f"{_fmt(gen['send_lateness_ms_p99_max'])} ms, {gen['skipped_ticks']} media clock ticks "
        "skipped): calls that overlapped those seconds are COMPLETED_WITH_WARNINGS, their "
        "figures partly the generator's, not the system under test's.</p>"
    )


def render_html(report: dict[str, Any]) -> str:
    """The report as one HTML page with inline CSS and SVG."""
    aggs = report["aggregates"]
    thresholds = report["thresholds"]
    th_rows = "".join(
        f"<tr><td>{escape(t['expression'])}</td><td>{_fmt(t['actual'])}</td>"
        f'<td class="{"pass" if t["passed"] else "fail"}">'
        f"{'PASS' if t['passed'] else 'FAIL'}</td></tr>"
        for t in thresholds
    )
    start = report["timeline"][0]["ts"] if report["timeline"] else 0
    refused = [a for a in report["assignments"] if a["accepted"] == 0]
    timeline = _table(
        ["status", "time (UTC)", "elapsed (s)", "reason"],
        [
            [e["status"], _utc(e["ts"]), round((e["ts"] - start) / 1000.0, 1), e["reason"]]
            for e in report["timeline"]
        ],
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>sipswarm report {escape(report['run_id'])}</title><style>{CSS}</style></head>"
        f"<body><h1>sipswarm run {escape(report['run_id'])}: {escape(report['name'] or '')}</h1>"
        f'<p class="status">{escape(report["status"] or "?")}</p>'
        f"<p>{escape(report['reason'] or '')}</p>"
        f'<h2 id="timeline">Timeline</h2>{timeline.replace("<table>", _TEXT_TABLE, 1)}'
        + (f'<h2 id="refused">Refused assignments</h2>{_refused(refused)}' if refused else "")
        + (
            '<h2 id="thresholds">Thresholds</h2><table><tr><th>threshold</th><th>actual</th>'
            f"<th>result</th></tr>{th_rows}</table>"
            if thresholds
            else ""
        )
        + f'<h2 id="results">Results</h2>{_generator(report["generator"])}'
        + _aggregate_table(aggs)
        + f'<h2 id="outcomes">Outcomes</h2>{_counts_table("outcome", aggs, "outcomes")}'
        + '<h2 id="final-codes">Final codes</h2>'
        + _counts_table("final code", aggs, "final_codes")
        + '<h2 id="over-time">Over time</h2>'
        + _charts(report["series"], report["pdd_histogram"])
        + f'<h2 id="failed">Failed endpoints</h2>{_failed(report)}'
        + "</body></html>"
    )
