"""SQLite storage of runs, workers and everything workers report.

Theory of operation: one :class:`Storage` per controller process, on one
``sqlite3`` connection used from the event loop thread only. A ``data``
frame is stored by :meth:`Storage.store_data` in one transaction together
with the new ``acked_seq`` of its stream, and only then acknowledged
(PROTOCOL.md: store first, then ack). A replayed frame (``seq`` at or below
the stored ``acked_seq`` of the same ``resume.stream``) is skipped, so every
item is stored exactly once. Readers (:meth:`call_records`,
:meth:`metric_samples`, ...) return the plain records that
:mod:`sipswarm.controller.aggregates` and the report consume.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from sipswarm.controller.aggregates import (
    CallRecord,
    MetricSample,
    OutcomeRecord,
    RegistrationRecord,
)
from sipswarm.controller.dispatch import group_of
from sipswarm.controller.lifecycle import TERMINAL, RunStatus, TimelineEntry
from sipswarm.protocol.enums import Phase
from sipswarm.protocol.models import (
    CallItem,
    FinishedItem,
    GapItem,
    Item,
    MetricsItem,
    OutcomeItem,
    PhaseItem,
    RecvStats,
    RegistrationItem,
    SendStats,
    TraceItem,
)

SEND_KEYS = tuple(SendStats.model_fields)
RECV_KEYS = tuple(RecvStats.model_fields)
METRIC_KEYS = SEND_KEYS + RECV_KEYS
PHASE_ORDER = {p.value: i for i, p in enumerate(Phase)}

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, name TEXT, plan TEXT, status TEXT, reason TEXT,
  created_ms INTEGER, aggregates TEXT);
CREATE TABLE IF NOT EXISTS timeline (
  run_id TEXT, ts_ms INTEGER, status TEXT, reason TEXT);
CREATE TABLE IF NOT EXISTS workers (
  worker_id TEXT PRIMARY KEY, name TEXT, version TEXT, labels TEXT, capacity TEXT,
  status TEXT, connected_ms INTEGER, last_seen_ms INTEGER, heartbeat TEXT);
CREATE TABLE IF NOT EXISTS streams (
  stream TEXT PRIMARY KEY, worker_id TEXT, acked_seq INTEGER);
CREATE TABLE IF NOT EXISTS assignments (
  assignment_id TEXT PRIMARY KEY, run_id TEXT, worker_id TEXT, endpoints INTEGER,
  sent_ms INTEGER, accepted INTEGER, reason TEXT, detail TEXT, finished_ms INTEGER,
  outcomes TEXT);
CREATE TABLE IF NOT EXISTS endpoints (
  endpoint_id TEXT PRIMARY KEY, run_id TEXT, group_name TEXT, role TEXT, n INTEGER,
  username TEXT, worker_id TEXT, assignment_id TEXT, target TEXT,
  phase TEXT, phase_order INTEGER DEFAULT -1, contact TEXT,
  outcome TEXT, final_code INTEGER, reason TEXT);
CREATE INDEX IF NOT EXISTS endpoints_run ON endpoints(run_id);
CREATE TABLE IF NOT EXISTS phases (
  run_id TEXT, endpoint_id TEXT, ts INTEGER, phase TEXT, contact TEXT);
CREATE INDEX IF NOT EXISTS phases_run ON phases(run_id);
CREATE TABLE IF NOT EXISTS registrations (
  run_id TEXT, endpoint_id TEXT, ts INTEGER, status_code INTEGER, register_ms REAL,
  expires_granted_s INTEGER);
CREATE INDEX IF NOT EXISTS registrations_run ON registrations(run_id);
CREATE TABLE IF NOT EXISTS calls (
  run_id TEXT, endpoint_id TEXT, direction TEXT, final_code INTEGER, result TEXT,
  invite_ts INTEGER, ringing_ts INTEGER, answer_ts INTEGER, first_rtp_ts INTEGER,
  bye_ts INTEGER, pdd_ms REAL, ttr_ms REAL, setup_ms REAL, ttfm_ms REAL, duration_ms REAL);
CREATE INDEX IF NOT EXISTS calls_run ON calls(run_id);
CREATE TABLE IF NOT EXISTS metrics (
  run_id TEXT, ts INTEGER, endpoint_id TEXT, phase TEXT,
  {", ".join(f"{k} REAL" for k in METRIC_KEYS)});
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_id, ts);
CREATE TABLE IF NOT EXISTS traces (
  run_id TEXT, endpoint_id TEXT, ts INTEGER, dir TEXT, transport TEXT, local TEXT,
  remote TEXT, message TEXT);
CREATE INDEX IF NOT EXISTS traces_ep ON traces(endpoint_id);
CREATE TABLE IF NOT EXISTS outcomes (
  run_id TEXT, endpoint_id TEXT, ts INTEGER, outcome TEXT, final_code INTEGER,
  reason TEXT, source TEXT);
CREATE INDEX IF NOT EXISTS outcomes_run ON outcomes(run_id);
CREATE TABLE IF NOT EXISTS generator (
  run_id TEXT, worker_id TEXT, ts INTEGER, loop_lag_ms_p99 REAL, send_lateness_ms_p99 REAL,
  skipped_ticks INTEGER, overloaded INTEGER);
CREATE INDEX IF NOT EXISTS generator_run ON generator(run_id, ts);
CREATE TABLE IF NOT EXISTS gaps (
  run_id TEXT, from_ts INTEGER, to_ts INTEGER, dropped_items INTEGER);
"""


class Storage:
    """SQLite store; ``path`` ``:memory:`` for tests. Close with :meth:`close`."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self.db = sqlite3.connect(self.path)
        self.db.row_factory = sqlite3.Row
        if self.path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._store: dict[type[Any], Callable[[Any], None]] = {
            PhaseItem: self._phase,
            RegistrationItem: self._registration,
            CallItem: self._call,
            MetricsItem: self._metrics,
            TraceItem: self._trace,
            OutcomeItem: self._outcome,
            FinishedItem: self._finished,
            GapItem: self._gap,
        }

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ runs

    def create_run(self, run_id: str, name: str, plan_text: str, created_ms: int) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO runs(run_id, name, plan, status, reason, created_ms) "
                "VALUES (?, ?, ?, ?, '', ?)",
                (run_id, name, plan_text, RunStatus.PENDING.value, created_ms),
            )
            self.db.execute(
                "INSERT INTO timeline VALUES (?, ?, ?, '')",
                (run_id, created_ms, RunStatus.PENDING.value),
            )

    def record_transition(self, run_id: str, entry: TimelineEntry) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO timeline VALUES (?, ?, ?, ?)",
                (run_id, entry.ts_ms, entry.status.value, entry.reason),
            )
            self.db.execute(
                "UPDATE runs SET status = ?, reason = ? WHERE run_id = ?",
                (entry.status.value, entry.reason, run_id),
            )

    def save_aggregates(self, run_id: str, aggregates: dict[str, Any]) -> None:
        with self.db:
            self.db.execute(
                "UPDATE runs SET aggregates = ? WHERE run_id = ?", (json.dumps(aggregates), run_id)
            )

    def run(self, run_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else dict(row)

    def runs(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT run_id, name, status, reason, created_ms FROM runs ORDER BY created_ms"
        )
        return [dict(r) for r in rows]

    def timeline(self, run_id: str) -> list[TimelineEntry]:
        rows = self.db.execute(
            "SELECT ts_ms, status, reason FROM timeline WHERE run_id = ? ORDER BY rowid", (run_id,)
        )
        return [TimelineEntry(r["ts_ms"], RunStatus(r["status"]), r["reason"]) for r in rows]

    def interrupted_runs(self) -> list[str]:
        """Runs left non-terminal by a previous controller process."""
        terminal = tuple(s.value for s in TERMINAL)
        marks = ",".join("?" * len(terminal))
        rows = self.db.execute(f"SELECT run_id FROM runs WHERE status NOT IN ({marks})", terminal)
        return [r["run_id"] for r in rows]

    # ------------------------------------------------------------------ workers and streams

    def upsert_worker(self, worker_id: str, info: dict[str, Any], now_ms: int) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO workers(worker_id, name, version, labels, capacity, status, "
                "connected_ms, last_seen_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(worker_id) DO UPDATE SET name=excluded.name, "
                "version=excluded.version, labels=excluded.labels, capacity=excluded.capacity, "
                "status=excluded.status, connected_ms=excluded.connected_ms, "
                "last_seen_ms=excluded.last_seen_ms",
                (
                    worker_id,
                    info.get("name"),
                    info.get("version"),
                    json.dumps(info.get("labels", {})),
                    json.dumps(info.get("capacity", {})),
                    info.get("status"),
                    now_ms,
                    now_ms,
                ),
            )

    def set_worker_status(
        self, worker_id: str, status: str, now_ms: int, heartbeat: dict[str, Any] | None = None
    ) -> None:
        with self.db:
            self.db.execute(
                "UPDATE workers SET status = ?, last_seen_ms = ?, "
                "heartbeat = COALESCE(?, heartbeat) WHERE worker_id = ?",
                (status, now_ms, json.dumps(heartbeat) if heartbeat else None, worker_id),
            )

    def acked_seq(self, stream: str) -> int | None:
        row = self.db.execute(
            "SELECT acked_seq FROM streams WHERE stream = ?", (stream,)
        ).fetchone()
        return None if row is None else row["acked_seq"]

    def adopt_stream(self, worker_id: str, stream: str) -> None:
        """Name a worker's provisional stream once its ``hello`` names it (see hub.py)."""
        if self.acked_seq(stream) is not None:
            return
        row = self.db.execute(
            "SELECT stream FROM streams WHERE worker_id = ? AND stream LIKE 'fresh:%' "
            "ORDER BY rowid DESC LIMIT 1",
            (worker_id,),
        ).fetchone()
        if row is not None:
            with self.db:
                self.db.execute("UPDATE streams SET stream = ? WHERE stream = ?", (stream, row[0]))

    def store_data(self, stream: str, worker_id: str, seq: int, items: Sequence[Item]) -> bool:
        """Store one ``data`` frame; False (nothing stored) if ``seq`` was already stored."""
        acked = self.acked_seq(stream)
        if acked is not None and seq <= acked:
            return False
        with self.db:
            for item in items:
                self._store[type(item)](item)
                if isinstance(item, MetricsItem) and item.generator is not None:
                    self._generator(item, worker_id)
            self.db.execute(
                "INSERT INTO streams VALUES (?, ?, ?) ON CONFLICT(stream) "
                "DO UPDATE SET acked_seq = excluded.acked_seq",
                (stream, worker_id, seq),
            )
        return True

    # ------------------------------------------------------------------ assignments, endpoints

    def add_assignment(
        self,
        assignment_id: str,
        run_id: str,
        worker_id: str,
        rows: Iterable[tuple[Any, ...]],
        sent_ms: int,
    ) -> None:
        """Record an ``assign`` sent; ``rows`` are (endpoint_id, group, role, n, user, target)."""
        rows = list(rows)
        with self.db:
            self.db.execute(
                "INSERT OR IGNORE INTO assignments(assignment_id, run_id, worker_id, endpoints, "
                "sent_ms) VALUES (?, ?, ?, ?, ?)",
                (assignment_id, run_id, worker_id, len(rows), sent_ms),
            )
            self.db.executemany(
                "INSERT OR IGNORE INTO endpoints(endpoint_id, run_id, group_name, role, n, "
                "username, target, worker_id, assignment_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*r[:1], run_id, *r[1:], worker_id, assignment_id) for r in rows],
            )

    def set_assignment_result(
        self, assignment_id: str, accepted: bool, reason: str | None, detail: str | None
    ) -> None:
        with self.db:
            self.db.execute(
                "UPDATE assignments SET accepted = ?, reason = ?, detail = ? "
                "WHERE assignment_id = ?",
                (int(accepted), reason, detail, assignment_id),
            )

    def add_controller_outcome(
        self, run_id: str, rows: Iterable[tuple[str, str, str, str]], ts: int
    ) -> None:
        """Outcomes decided by the controller: (endpoint_id, group, role, reason) never sent."""
        with self.db:
            for eid, group, role, reason in rows:
                self.db.execute(
                    "INSERT OR IGNORE INTO endpoints(endpoint_id, run_id, group_name, role, "
                    "phase, phase_order, outcome, reason) VALUES (?, ?, ?, ?, 'CLOSED', 7, "
                    "'CALL_FAILED', ?)",
                    (eid, run_id, group, role, reason),
                )
                self.db.execute(
                    "INSERT INTO outcomes VALUES (?, ?, ?, 'CALL_FAILED', NULL, ?, 'controller')",
                    (run_id, eid, ts, reason),
                )

    # ------------------------------------------------------------------ item handlers

    def _phase(self, item: PhaseItem) -> None:
        order = PHASE_ORDER[item.phase.value]
        self.db.execute(
            "INSERT INTO phases VALUES (?, ?, ?, ?, ?)",
            (item.run_id, item.endpoint_id, item.ts, item.phase.value, item.contact),
        )
        self.db.execute(
            "UPDATE endpoints SET phase = ?, phase_order = ? "
            "WHERE endpoint_id = ? AND phase_order < ?",
            (item.phase.value, order, item.endpoint_id, order),
        )
        if item.contact:
            self.db.execute(
                "UPDATE endpoints SET contact = ? WHERE endpoint_id = ?",
                (item.contact, item.endpoint_id),
            )

    def _registration(self, item: RegistrationItem) -> None:
        self.db.execute(
            "INSERT INTO registrations VALUES (?, ?, ?, ?, ?, ?)",
            (
                item.run_id,
                item.endpoint_id,
                item.ts,
                item.status_code,
                item.register_ms,
                item.expires_granted_s,
            ),
        )

    def _call(self, item: CallItem) -> None:
        self.db.execute(
            "INSERT INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                item.run_id,
                item.endpoint_id,
                item.direction.value,
                item.final_code,
                item.result.value,
                item.invite_ts,
                item.ringing_ts,
                item.answer_ts,
                item.first_rtp_ts,
                item.bye_ts,
                item.pdd_ms,
                item.ttr_ms,
                item.setup_ms,
                item.ttfm_ms,
                item.duration_ms,
            ),
        )

    def _metrics(self, item: MetricsItem) -> None:
        rows = []
        for ep in item.endpoints:
            send = ep.send.model_dump() if ep.send else {}
            recv = ep.recv.model_dump() if ep.recv else {}
            values = [send.get(k) for k in SEND_KEYS] + [recv.get(k) for k in RECV_KEYS]
            rows.append((item.run_id, item.ts, ep.endpoint_id, ep.phase.value, *values))
        marks = ",".join("?" * (4 + len(METRIC_KEYS)))
        self.db.executemany(f"INSERT INTO metrics VALUES ({marks})", rows)

    def _generator(self, item: MetricsItem, worker_id: str) -> None:
        gen = item.generator
        assert gen is not None
        self.db.execute(
            "INSERT INTO generator VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                item.run_id,
                worker_id,
                item.ts,
                gen.loop_lag_ms_p99,
                gen.send_lateness_ms_p99,
                gen.skipped_ticks,
                int(gen.overloaded),
            ),
        )

    def generator_health(self, run_id: str) -> dict[str, Any]:
        """How the workers judged themselves over the run (the metrics items' ``generator``).

        ``seconds`` with a judgement, ``overloaded_seconds`` in which any worker
        was overloaded, the worst p99s, skipped media clock ticks, and the
        overloaded seconds per worker. Empty figures when no worker sent any.
        """
        per_second = self.db.execute(
            "SELECT COUNT(*), SUM(o) FROM (SELECT ts / 1000 AS t, MAX(overloaded) AS o "
            "FROM generator WHERE run_id = ? GROUP BY t)",
            (run_id,),
        ).fetchone()
        worst = self.db.execute(
            "SELECT MAX(loop_lag_ms_p99), MAX(send_lateness_ms_p99), SUM(skipped_ticks) "
            "FROM generator WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        workers = self.db.execute(
            "SELECT worker_id, COUNT(DISTINCT CASE WHEN overloaded THEN ts / 1000 END) "
            "FROM generator WHERE run_id = ? GROUP BY worker_id ORDER BY worker_id",
            (run_id,),
        )
        return {
            "seconds": per_second[0],
            "overloaded_seconds": per_second[1] or 0,
            "loop_lag_ms_p99_max": worst[0],
            "send_lateness_ms_p99_max": worst[1],
            "skipped_ticks": worst[2] or 0,
            "overloaded_seconds_by_worker": {r[0]: r[1] for r in workers},
        }

    def _trace(self, item: TraceItem) -> None:
        self.db.execute(
            "INSERT INTO traces VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                item.run_id,
                item.endpoint_id,
                item.ts,
                item.dir.value,
                item.transport,
                item.local,
                item.remote,
                item.message,
            ),
        )

    def _outcome(self, item: OutcomeItem) -> None:
        self.db.execute(
            "INSERT INTO outcomes VALUES (?, ?, ?, ?, ?, ?, 'worker')",
            (
                item.run_id,
                item.endpoint_id,
                item.ts,
                item.outcome.value,
                item.final_code,
                item.reason,
            ),
        )
        self.db.execute(
            "UPDATE endpoints SET outcome = ?, final_code = ?, reason = ? WHERE endpoint_id = ?",
            (item.outcome.value, item.final_code, item.reason, item.endpoint_id),
        )

    def _finished(self, item: FinishedItem) -> None:
        self.db.execute(
            "UPDATE assignments SET finished_ms = ?, outcomes = ? WHERE assignment_id = ?",
            (item.ts, json.dumps(item.outcomes), item.assignment_id),
        )

    def _gap(self, item: GapItem) -> None:
        self.db.execute(
            "INSERT INTO gaps VALUES (?, ?, ?, ?)",
            (item.run_id, item.from_ts, item.to_ts, item.dropped_items),
        )

    # ------------------------------------------------------------------ readers

    def call_records(self, run_id: str) -> list[CallRecord]:
        rows = self.db.execute("SELECT * FROM calls WHERE run_id = ?", (run_id,))
        return [
            CallRecord(
                group_of(r["endpoint_id"]),
                r["direction"],
                r["final_code"],
                r["result"],
                r["pdd_ms"],
                r["setup_ms"],
                r["ttfm_ms"],
                r["duration_ms"],
            )
            for r in rows
        ]

    def metric_samples(self, run_id: str) -> list[MetricSample]:
        rows = self.db.execute(
            "SELECT endpoint_id, ts, mos, jitter_ms, rtt_ms, packets_lost, packets_received "
            "FROM metrics WHERE run_id = ?",
            (run_id,),
        )
        return [
            MetricSample(
                group_of(r["endpoint_id"]),
                r["endpoint_id"],
                r["ts"],
                r["mos"],
                r["jitter_ms"],
                r["rtt_ms"],
                None if r["packets_lost"] is None else int(r["packets_lost"]),
                None if r["packets_received"] is None else int(r["packets_received"]),
            )
            for r in rows
        ]

    def outcome_records(self, run_id: str) -> list[OutcomeRecord]:
        rows = self.db.execute(
            "SELECT endpoint_id, outcome FROM outcomes WHERE run_id = ?", (run_id,)
        )
        return [OutcomeRecord(group_of(r[0]), r[0], r[1]) for r in rows]

    def registration_records(self, run_id: str) -> list[RegistrationRecord]:
        rows = self.db.execute(
            "SELECT endpoint_id, status_code, register_ms, expires_granted_s FROM registrations "
            "WHERE run_id = ?",
            (run_id,),
        )
        return [RegistrationRecord(group_of(r[0]), r[1], r[2], r[3]) for r in rows]

    def phase_counts(self, run_id: str) -> dict[str, int]:
        """Endpoints of the run by their latest phase (``PENDING`` = no phase yet)."""
        rows = self.db.execute(
            "SELECT COALESCE(phase, 'PENDING') AS p, COUNT(*) AS n FROM endpoints "
            "WHERE run_id = ? GROUP BY p",
            (run_id,),
        )
        return {r["p"]: r["n"] for r in rows}

    def live_figures(self, run_id: str) -> dict[str, Any]:
        """Cheap running totals for the live view (SQL aggregates, no per-row Python)."""
        calls = self.db.execute(
            "SELECT direction, COUNT(*) AS n, "
            "SUM(final_code BETWEEN 200 AND 299) AS ok FROM calls WHERE run_id = ? "
            "GROUP BY direction",
            (run_id,),
        ).fetchall()
        by_dir = {r["direction"]: (r["n"], r["ok"] or 0) for r in calls}
        attempted, answered = by_dir.get("out") or by_dir.get("in") or (0, 0)
        mos = self.db.execute(
            "SELECT AVG(mos), MIN(mos) FROM metrics WHERE run_id = ? AND mos IS NOT NULL",
            (run_id,),
        ).fetchone()
        outcomes = self.db.execute(
            "SELECT outcome, COUNT(*) FROM outcomes WHERE run_id = ? GROUP BY outcome", (run_id,)
        ).fetchall()
        # a call item comes when the call ends: callers between INVITE and BYE are shown apart
        active = self.db.execute(
            "SELECT COUNT(*) FROM endpoints WHERE run_id = ? AND role = 'caller' "
            "AND phase IN ('CALLING', 'RINGING', 'NEGOTIATING', 'INCALL')",
            (run_id,),
        ).fetchone()[0]
        return {
            "calls_active": active,
            "calls_attempted": attempted,
            "calls_answered": answered,
            "asr": answered / attempted if attempted else None,
            "mos_mean": mos[0],
            "mos_min": mos[1],
            "outcomes": {r[0]: r[1] for r in outcomes},
        }

    def series(self, run_id: str) -> list[dict[str, Any]]:
        """Per-second series: endpoints by phase, active calls, MOS, jitter, loss, RTT, and
        ``generator_overloaded`` (any worker overloaded that second; None: not reported)."""
        rows = self.db.execute(
            "SELECT (m.ts / 1000) * 1000 AS t, m.phase, e.role, COUNT(*) AS n, "
            "AVG(m.mos) AS mos, AVG(m.jitter_ms) AS jitter, AVG(m.fraction_lost) AS loss, "
            "AVG(m.rtt_ms) AS rtt FROM metrics m LEFT JOIN endpoints e USING(endpoint_id) "
            "WHERE m.run_id = ? GROUP BY t, m.phase, e.role ORDER BY t",
            (run_id,),
        )
        out: dict[int, dict[str, Any]] = {}
        for r in rows:
            point = out.setdefault(
                r["t"], {"ts": r["t"], "phases": {}, "active_calls": 0, "_w": []}
            )
            point["phases"][r["phase"]] = point["phases"].get(r["phase"], 0) + r["n"]
            if r["phase"] == "INCALL" and r["role"] != "receiver":
                point["active_calls"] += r["n"]
            point["_w"].append((r["n"], r["mos"], r["jitter"], r["loss"], r["rtt"]))
        for point in out.values():
            weights = point.pop("_w")
            for i, key in enumerate(("mos", "jitter_ms", "loss", "rtt_ms"), start=1):
                have = [(w[0], w[i]) for w in weights if w[i] is not None]
                total = sum(n for n, _ in have)
                point[key] = sum(n * v for n, v in have) / total if total else None
            point["generator_overloaded"] = None
        overloaded = self.db.execute(
            "SELECT (ts / 1000) * 1000 AS t, MAX(overloaded) FROM generator WHERE run_id = ? "
            "GROUP BY t",
            (run_id,),
        )
        for t, flag in overloaded:
            if t in out:
                out[t]["generator_overloaded"] = bool(flag)
        return list(out.values())

    def group_names(self, run_id: str) -> list[str]:
        """The groups of a run's assigned endpoints."""
        rows = self.db.execute(
            "SELECT DISTINCT group_name FROM endpoints WHERE run_id = ?", (run_id,)
        )
        return sorted(r[0] for r in rows)

    def endpoints(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT * FROM endpoints WHERE run_id = ? ORDER BY group_name, n", (run_id,)
        )
        return [dict(r) for r in rows]

    def traces(self, endpoint_id: str, limit: int = 200) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT ts, dir, transport, local, remote, message FROM traces "
            "WHERE endpoint_id = ? ORDER BY ts, rowid LIMIT ?",
            (endpoint_id, limit),
        )
        return [dict(r) for r in rows]

    def assignments(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT * FROM assignments WHERE run_id = ? ORDER BY sent_ms", (run_id,)
        )
        return [dict(r) for r in rows]

    def workers(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM workers ORDER BY worker_id")
        out = []
        for r in rows:
            d = dict(r)
            for key in ("labels", "capacity", "heartbeat"):
                d[key] = json.loads(d[key]) if d[key] else None
            out.append(d)
        return out
