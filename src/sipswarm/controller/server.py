"""The reference controller: worker WebSocket + REST API + run manager + storage.

Two listeners (websockets' server cannot read request bodies, see httpapi.py):

- workers: ``ws://HOST:PORT/v1/worker`` (``--listen``), subprotocol
  ``sipswarm.v1``, ``Authorization: Bearer <token>`` checked before the
  upgrade (401), ping every 20 s with a 20 s pong timeout (PROTOCOL.md);
- REST API: ``http://HOST:PORT/api/v1/...`` (``--api``), described by
  ``GET /api/v1/openapi.json``.

Use: ``controller = Controller(ControllerConfig(...)); await controller.start()``,
then ``await controller.runs.submit(plan)``, ``await controller.runs.wait(run_id)``,
``await controller.stop()``. ``sipswarm run`` is this plus a local agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from websockets.asyncio.server import Server, serve

from sipswarm import __version__
from sipswarm.controller.httpapi import HttpApi, Reply, Request, error
from sipswarm.controller.hub import WORKER_PATH, WorkerHub
from sipswarm.controller.lifecycle import TERMINAL
from sipswarm.controller.openapi import PLAN_TYPES, openapi_document
from sipswarm.controller.plan import PlanError, load_plan
from sipswarm.controller.runs import LOST_GRACE_S, TICK_S, RunManager, aggregates_json
from sipswarm.controller.storage import Storage
from sipswarm.controller.yamlpos import format_path
from sipswarm.errors import ConfigError
from sipswarm.protocol import MAX_FRAME_BYTES, SUBPROTOCOL


@dataclass
class ControllerConfig:
    host: str = "127.0.0.1"
    port: int = 8080  # 0: a free port
    api_host: str = "127.0.0.1"
    api_port: int | None = None  # None: port + 1 (or a free one when port is 0)
    tokens: set[str] = field(default_factory=set)
    db_path: str = "sipswarm.db"
    lost_grace_s: float = LOST_GRACE_S
    plans_dir: str = "."  # where CSV and media paths of API-submitted plans are resolved


class Controller:
    """Start with :meth:`start`; stop with :meth:`stop`. See the module docstring."""

    def __init__(self, config: ControllerConfig) -> None:
        if not config.tokens:
            raise ConfigError("controller: no worker token; pass --tokens FILE (one per line)")
        self.config = config
        self.storage = Storage(config.db_path)
        self.runs = RunManager(self.storage, lost_grace_s=config.lost_grace_s)
        self.hub = WorkerHub(self.storage, config.tokens, self.runs)
        self.runs.hub = self.hub
        self.api = HttpApi()
        self._ws_server: Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.port = 0
        self.api_port = 0
        self._routes()

    @property
    def worker_url(self) -> str:
        return f"ws://{self.config.host}:{self.port}{WORKER_PATH}"

    @property
    def api_url(self) -> str:
        return f"http://{self.config.api_host}:{self.api_port}/api/v1"

    async def start(self) -> None:
        """Open both listeners and start the run manager's tick."""
        cfg = self.config
        self._ws_server = await serve(
            self.hub.handler,
            cfg.host,
            cfg.port,
            process_request=self.hub.process_request,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            max_size=MAX_FRAME_BYTES,
            ping_interval=20,
            ping_timeout=20,
            server_header=f"sipswarm-controller/{__version__}",
        )
        self.port = int(next(iter(self._ws_server.sockets)).getsockname()[1])
        api_port = cfg.api_port if cfg.api_port is not None else (self.port + 1 if cfg.port else 0)
        self.api_port = await self.api.serve(cfg.api_host, api_port)
        self._ticker = asyncio.create_task(self._tick_forever())

    async def stop(self, close_timeout: float | None = None) -> None:
        """Stop serving; ``close_timeout`` bounds the wait for workers' close handshakes
        (a forced exit must not wait for a worker that stopped answering)."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.api.close()
        if self._ws_server is not None:
            self._ws_server.close()
            try:
                await asyncio.wait_for(self._ws_server.wait_closed(), close_timeout)
            except TimeoutError:
                for worker in self.hub.workers.values():
                    if worker.ws is not None:  # no close handshake with a silent worker
                        worker.ws.transport.abort()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ws_server.wait_closed(), close_timeout)
        self.storage.close()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            await self.runs.tick()

    async def wait_for_workers(self, count: int, timeout: float) -> int:
        """Wait until ``count`` workers are connected and ONLINE; returns how many are."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            online = sum(1 for w in self.hub.workers.values() if w.free > 0)
            if online >= count or loop.time() >= deadline:
                return online
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ REST API

    def _routes(self) -> None:
        r = self.api.route
        r("GET", "/api/v1/openapi.json", self._openapi)
        r("POST", "/api/v1/runs", self._post_run)
        r("GET", "/api/v1/runs", self._list_runs)
        r("GET", "/api/v1/runs/{run_id}", self._get_run)
        r("GET", "/api/v1/runs/{run_id}/metrics", self._get_metrics)
        r("GET", "/api/v1/runs/{run_id}/report", self._get_report)
        r("POST", "/api/v1/runs/{run_id}/cancel", self._cancel_run)
        r("GET", "/api/v1/workers", self._workers)

    async def _openapi(self, req: Request) -> Reply:
        return Reply(200, openapi_document(__version__))

    async def _post_run(self, req: Request) -> Reply:
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype and ctype not in PLAN_TYPES:
            return error(
                415,
                f"a plan is the YAML or JSON text itself, not {ctype}; send it as the body"
                " with Content-Type: application/yaml or application/json"
                " (curl -H 'Content-Type: application/yaml' --data-binary @plan.yaml URL)",
            )
        try:
            text = req.body.decode("utf-8")
        except UnicodeDecodeError:
            return error(400, "the plan must be UTF-8 YAML or JSON")
        try:
            plan = load_plan(text, base_dir=Path(self.config.plans_dir), source="plan")
        except PlanError as exc:
            return error(
                400,
                f"invalid plan: {len(exc.issues)} problem(s)",
                issues=[str(i) for i in exc.issues],
                problems=[
                    {"path": format_path(i.path), "line": i.line, "message": i.message}
                    for i in exc.issues
                ],
            )
        except ConfigError as exc:
            return error(400, str(exc))
        run_id = await self.runs.submit(plan)
        view = self._run_view(run_id, aggregates=False)
        return Reply(201, {**view, "warnings": list(plan.warnings)})

    async def _list_runs(self, req: Request) -> Reply:
        return Reply(200, {"runs": self.storage.runs()})

    async def _get_run(self, req: Request) -> Reply:
        run_id = req.params["run_id"]
        if self.storage.run(run_id) is None:
            return error(404, f"no run {run_id}")
        return Reply(200, self._run_view(run_id, aggregates=True))

    def _run_view(self, run_id: str, aggregates: bool) -> dict[str, Any]:
        row = self.storage.run(run_id) or {}
        view: dict[str, Any] = {
            "run_id": run_id,
            "name": row.get("name"),
            "status": row.get("status"),
            "reason": row.get("reason"),
            "timeline": [
                {"ts": e.ts_ms, "status": e.status.value, "reason": e.reason}
                for e in self.storage.timeline(run_id)
            ],
            "phases": self.storage.phase_counts(run_id),
        }
        if aggregates:
            if row.get("aggregates"):
                view["aggregates"] = json.loads(row["aggregates"])
            else:
                view["aggregates"] = aggregates_json(self.runs.aggregates(run_id))
            if run_id in self.runs.runs:
                view["thresholds"] = [
                    {"expression": t.threshold.expression, "actual": t.actual, "passed": t.passed}
                    for t in self.runs.thresholds(run_id)
                ]
        return view

    async def _get_metrics(self, req: Request) -> Reply:
        run_id = req.params["run_id"]
        if self.storage.run(run_id) is None:
            return error(404, f"no run {run_id}")
        since = parse_qs(req.query).get("since", ["0"])[0]
        if not since.isdigit():
            return error(400, f"since must be epoch milliseconds (an integer), got {since!r}")
        series = [p for p in self.storage.series(run_id) if p["ts"] >= int(since)]
        return Reply(200, {"run_id": run_id, "series": series})

    async def _get_report(self, req: Request) -> Reply:
        from sipswarm.controller.report import build_report, render_html

        run_id = req.params["run_id"]
        if self.storage.run(run_id) is None:
            return error(404, f"no run {run_id}")
        state = self.runs.runs.get(run_id)
        thresholds = state.plan.thresholds if state else ()
        report = build_report(self.storage, run_id, thresholds)
        return Reply(200, render_html(report), "text/html; charset=utf-8")

    async def _cancel_run(self, req: Request) -> Reply:
        run_id = req.params["run_id"]
        row = self.storage.run(run_id)
        if row is None:
            return error(404, f"no run {run_id}")
        if run_id not in self.runs.runs:
            return error(409, f"run {run_id} is {row['status']} (a previous controller's run)")
        status = await self.runs.cancel(run_id, "user")
        code = 200 if status in TERMINAL else 202
        return Reply(code, self._run_view(run_id, aggregates=False))

    async def _workers(self, req: Request) -> Reply:
        live = {w.worker_id: w.as_dict() for w in self.hub.workers.values()}
        for row in self.storage.workers():
            if row["worker_id"] not in live:
                live[row["worker_id"]] = {**row, "status": "OFFLINE"}
        return Reply(200, {"workers": list(live.values())})
