"""The controller against a worker-side harness written from PROTOCOL.md."""

from __future__ import annotations

import asyncio
import io
import json
import re
import textwrap
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from sipswarm.controller.lifecycle import RunStatus
from sipswarm.controller.plan import load_plan
from sipswarm.controller.report import build_report, render_html
from sipswarm.controller.server import Controller, ControllerConfig

from .harness import HarnessWorker

pytestmark = pytest.mark.timeout(60)
TOKEN = "test-token-1"

PLAN = textwrap.dedent(
    """\
    name: harness
    groups:
      - {name: rx, size: 3, role: receiver, accounts: {user: "{200..202}"}}
      - {name: tx, size: 4, role: caller, target: rx, accounts: {user: "{100..103}"}}
    buildup: {rate_per_s: 100}
    registration_window_s: 5
    thresholds: ["asr >= 1", "mos.mean > 4"]
    """
)


Body = Callable[[Controller], Awaitable[None]]


def with_controller(tmp_path: Path, body: Body) -> None:
    """Run ``body`` against a fresh controller on free loopback ports, bounded in time."""

    async def main() -> None:
        ctl = Controller(
            ControllerConfig(
                port=0, api_port=0, tokens={TOKEN}, db_path=str(tmp_path / "c.db"), lost_grace_s=0.5
            )
        )
        await ctl.start()
        try:
            await asyncio.wait_for(body(ctl), 45)
        finally:
            await ctl.stop()

    asyncio.run(main())


async def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
    def call() -> tuple[int, Any]:
        req = urllib.request.Request(url, data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                ctype = resp.headers.get("Content-Type", "")
                return resp.status, json.loads(raw) if "json" in ctype else raw.decode()
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    return await asyncio.to_thread(call)


def test_bad_token_is_refused_before_the_upgrade(tmp_path: Path) -> None:
    async def body(controller: Controller) -> None:
        for headers in ({"Authorization": "Bearer wrong"}, {}):
            with pytest.raises(InvalidStatus) as exc:
                await connect(
                    controller.worker_url, additional_headers=headers, subprotocols=["sipswarm.v1"]
                )  # type: ignore[list-item]
            assert exc.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as exc:
            await connect(
                controller.worker_url, additional_headers={"Authorization": f"Bearer {TOKEN}"}
            )
        assert exc.value.response.status_code == 400
        with pytest.raises(InvalidStatus) as exc:
            await connect(
                controller.worker_url.replace("/v1/worker", "/v2"),
                additional_headers={"Authorization": f"Bearer {TOKEN}"},
                subprotocols=["sipswarm.v1"],
            )  # type: ignore[list-item]
        assert exc.value.response.status_code == 404

    with_controller(tmp_path, body)


def test_full_run_over_two_workers(tmp_path: Path) -> None:
    async def body(controller: Controller) -> None:
        w1 = HarnessWorker(controller.worker_url, TOKEN, "w-1", max_endpoints=10)
        w2 = HarnessWorker(controller.worker_url, TOKEN, "w-2", max_endpoints=10)
        await w1.connect()
        await w2.connect()
        assert w1.welcomes[0]["acked_seq"] is None and w1.welcomes[0]["heartbeat_interval_s"] == 5
        assert await controller.wait_for_workers(2, 5) == 2

        status, body = await _http("POST", f"{controller.api_url}/runs", PLAN.encode())
        assert status == 201, body
        run_id = body["run_id"]
        assert await controller.runs.wait(run_id, timeout=20) is RunStatus.COMPLETED

        # phasing: receivers first, callers target the receivers' contacts round-robin
        assigns = w1.assigns + w2.assigns
        roles = [
            {e["role"] for e in a["endpoints"]}
            for a in sorted(assigns, key=lambda a: a["assignment_id"])
        ]
        assert {"receiver"} in roles and {"caller"} in roles
        eps = {e["endpoint_id"]: e for a in assigns for e in a["endpoints"]}
        assert len(eps) == 7
        targets = [eps[f"{run_id}/tx/{n}"]["call"]["target"] for n in range(4)]
        registered = {
            e.get("contact")
            for e in controller.storage.endpoints(run_id)
            if e["group_name"] == "rx"
        }
        assert set(targets) <= registered and len(registered) == 3
        users = [t.split("@")[0] for t in targets]
        assert users == ["sip:200", "sip:201", "sip:202", "sip:200"]  # round-robin
        # receivers were told to end once the callers closed
        assert any(c["reason"] == "complete" for c in w1.cancels + w2.cancels)

        status, view = await _http("GET", f"{controller.api_url}/runs/{run_id}")
        assert status == 200 and view["status"] == "COMPLETED"
        assert [e["status"] for e in view["timeline"]] == [
            "PENDING",
            "QUEUED",
            "RUNNING",
            "COMPLETED",
        ]
        overall = view["aggregates"]["overall"]["metrics"]
        assert overall["calls.attempted"] == 4 and overall["asr"] == 1.0
        assert overall["mos.mean"] == pytest.approx(4.3)
        assert overall["outcomes.SUCCESS"] == 4 and overall["outcomes.CANCELLED"] == 3
        assert [t["passed"] for t in view["thresholds"]] == [True, True]
        status, metrics = await _http("GET", f"{controller.api_url}/runs/{run_id}/metrics")
        assert status == 200 and metrics["series"][0]["mos"] == pytest.approx(4.3)
        status, workers = await _http("GET", f"{controller.api_url}/workers")
        assert {w["worker_id"] for w in workers["workers"]} == {"w-1", "w-2"}
        assert all(w["assigned_endpoints"] == 0 for w in workers["workers"])
        status, doc = await _http("GET", f"{controller.api_url}/openapi.json")
        assert doc["openapi"].startswith("3.1") and "/api/v1/runs/{run_id}/cancel" in doc["paths"]
        status, html = await _http("GET", f"{controller.api_url}/runs/{run_id}/report")
        assert status == 200 and "<svg" in html

        report = build_report(controller.storage, run_id, load_plan(PLAN).thresholds)
        page = render_html(report)
        parser = _Checker()
        parser.feed(page)
        assert parser.svgs == 7 and parser.external == []  # 6 over time + PDD
        assert "PASS" in page and "rx" in page
        assert "<td>ASR (%)</td><td>100</td>" in page, "ratios are shown as percentages"
        assert re.search(r"<td>RUNNING</td><td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z</td>", page)
        await w1.disconnect()
        await w2.disconnect()

    with_controller(tmp_path, body)


def test_replayed_data_is_stored_once(tmp_path: Path) -> None:
    async def body(controller: Controller) -> None:
        w = HarnessWorker(controller.worker_url, TOKEN, "w-r")
        await w.connect()
        w.hold_acks = True  # the acks "get lost": the frames stay unacked on the worker
        item = {"kind": "gap", "run_id": "r-x", "from_ts": 1, "to_ts": 2, "dropped_items": 1}
        await w.emit([item])
        await w.emit([item])
        await asyncio.sleep(0.3)
        await w.disconnect()
        assert sorted(w.unacked) == [1, 2]
        w.hold_acks = False
        await w.connect()  # hello with resume -> welcome.acked_seq 2 -> nothing to resend
        assert w.welcomes[-1]["acked_seq"] == 2
        assert w.unacked == {}
        rows = controller.storage.db.execute("SELECT COUNT(*) FROM gaps").fetchone()[0]
        assert rows == 2
        await w.emit([item])
        await asyncio.sleep(0.3)
        assert controller.storage.db.execute("SELECT COUNT(*) FROM gaps").fetchone()[0] == 3
        await w.disconnect()

    with_controller(tmp_path, body)


def test_plan_larger_than_capacity(tmp_path: Path) -> None:
    async def body(controller: Controller) -> None:
        w = HarnessWorker(controller.worker_url, TOKEN, "w-small", max_endpoints=5)
        await w.connect()
        await controller.wait_for_workers(1, 5)
        run_id = await controller.runs.submit(load_plan(PLAN))
        assert await controller.runs.wait(run_id, 5) is RunStatus.CANNOT_RUN_FOR_NOW
        assert "needs 7 endpoints, 5 are free" in controller.runs.runs[run_id].life.reason
        assert w.assigns == []
        await w.disconnect()

    with_controller(tmp_path, body)


def test_no_worker_cannot_run(tmp_path: Path) -> None:
    async def body(controller: Controller) -> None:
        status, body = await _http("POST", f"{controller.api_url}/runs", PLAN.encode())
        assert status == 201 and body["status"] == "CANNOT_RUN_FOR_NOW"
        assert "no worker connected" in body["reason"]

    with_controller(tmp_path, body)


def test_invalid_plan_is_400_with_lines(tmp_path: Path) -> None:
    async def body(controller: Controller) -> None:
        status, body = await _http("POST", f"{controller.api_url}/runs", b"groups:\n  - name: x\n")
        assert status == 400
        assert any(i.startswith("groups[0].size (line 2): Field required") for i in body["issues"])
        status, body = await _http("GET", f"{controller.api_url}/runs/nope")
        assert status == 404
        status, body = await _http("DELETE", f"{controller.api_url}/runs/nope")
        assert status == 405

    with_controller(tmp_path, body)


async def _http_full(
    method: str, url: str, body: bytes | None = None, ctype: str | None = None
) -> tuple[int, dict[str, str], Any]:
    """Like _http, with a Content-Type and the response headers."""

    def call() -> tuple[int, dict[str, str], Any]:
        req = urllib.request.Request(url, data=body, method=method)
        if ctype is not None:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), json.loads(exc.read())

    return await asyncio.to_thread(call)


def test_api_errors_are_json_with_a_clear_message(tmp_path: Path) -> None:
    async def body(controller: Controller) -> None:
        api = controller.api_url
        # a form upload (curl -F) is not a plan: 415 saying what to send
        form = b"--x\r\nContent-Disposition: form-data; name=plan\r\n\r\ngroups: []\r\n--x--\r\n"
        status, _, reply = await _http_full(
            "POST", f"{api}/runs", form, "multipart/form-data; boundary=x"
        )
        assert status == 415
        assert "application/yaml" in reply["error"] and "--data-binary" in reply["error"]
        # 405 names the allowed methods in the body and in Allow (RFC 9110 15.5.6)
        status, headers, reply = await _http_full("DELETE", f"{api}/runs")
        assert (
            status == 405 and headers["Allow"] == "POST, GET" and "use POST, GET" in reply["error"]
        )
        # plan problems as text and as fields
        status, _, reply = await _http_full(
            "POST", f"{api}/runs", b"groups:\n  - name: x\n", "application/yaml"
        )
        assert status == 400 and reply["error"].startswith("invalid plan: ")
        assert {"path": "groups[0].size", "line": 2, "message": "Field required"} in reply[
            "problems"
        ]
        # a JSON plan with its content type is accepted (no worker: CANNOT_RUN_FOR_NOW)
        plan = json.dumps(
            {"groups": [{"name": "r", "size": 1, "role": "receiver", "accounts": {"user": "1"}}]}
        )
        status, _, reply = await _http_full(
            "POST", f"{api}/runs", plan.encode(), "application/json"
        )
        assert status == 201 and reply["status"] == "CANNOT_RUN_FOR_NOW"
        # since must be a number, not silently ignored
        status, _, reply = await _http_full(
            "GET", f"{api}/runs/{reply['run_id']}/metrics?since=abc"
        )
        assert status == 400 and "since must be epoch milliseconds" in reply["error"]
        status, _, reply = await _http_full("POST", f"{api}/runs/r-nope/cancel")
        assert status == 404 and reply == {"error": "no run r-nope"}

    with_controller(tmp_path, body)


def test_openapi_document_is_complete(tmp_path: Path) -> None:
    async def body(controller: Controller) -> None:
        status, _, doc = await _http_full("GET", f"{controller.api_url}/openapi.json")
        assert status == 200 and doc["openapi"].startswith("3.1")
        routes = {(m, p) for m, rx, _ in controller.api.routes for p in [rx.pattern]}
        documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
        assert len(documented) == len(routes) == 8
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                assert op["responses"], (method, path)
                for code, response in op["responses"].items():
                    assert response["description"], (method, path, code)
                    if code.startswith("4"):
                        assert (
                            "error"
                            in response["content"]["application/json"]["schema"]["properties"]
                        )
        post = doc["paths"]["/api/v1/runs"]["post"]
        assert {"400", "415"} <= set(post["responses"])
        assert {"application/yaml", "application/json"} <= set(post["requestBody"]["content"])
        refs = json.dumps(doc)
        for name in re.findall(r'"#/components/schemas/(\w+)"', refs):
            assert name in doc["components"]["schemas"], name

    with_controller(tmp_path, body)


def test_cancel_goes_stopping_then_cancelled(tmp_path: Path) -> None:
    async def body(controller: Controller) -> None:
        w = HarnessWorker(controller.worker_url, TOKEN, "w-c", script="silent")
        await w.connect()
        await controller.wait_for_workers(1, 5)
        run_id = await controller.runs.submit(load_plan(PLAN))
        for _ in range(50):
            if controller.runs.runs[run_id].life.status is RunStatus.RUNNING:
                break
            await asyncio.sleep(0.05)
        status, _ = await _http("POST", f"{controller.api_url}/runs/{run_id}/cancel")
        assert status == 202
        assert await controller.runs.wait(run_id, 10) is RunStatus.CANCELLED
        statuses = [e.status for e in controller.runs.runs[run_id].life.timeline]
        assert statuses[-2:] == [RunStatus.STOPPING, RunStatus.CANCELLED]
        assert w.cancels and w.cancels[0]["reason"] == "user"
        outcomes = {o.outcome for o in controller.storage.outcome_records(run_id)}
        assert outcomes == {"CANCELLED"}
        await w.disconnect()

    with_controller(tmp_path, body)


def test_every_worker_lost_fails_the_run(tmp_path: Path) -> None:
    async def body(controller: Controller) -> None:
        w = HarnessWorker(controller.worker_url, TOKEN, "w-l", script="silent")
        await w.connect()
        await controller.wait_for_workers(1, 5)
        run_id = await controller.runs.submit(load_plan(PLAN))
        await asyncio.sleep(0.3)
        await w.disconnect()
        assert await controller.runs.wait(run_id, 10) is RunStatus.FAILED
        assert "every worker of the run was lost: w-l" in controller.runs.runs[run_id].life.reason

    with_controller(tmp_path, body)


def test_refused_assignment(tmp_path: Path) -> None:
    async def body(controller: Controller) -> None:
        w = HarnessWorker(
            controller.worker_url,
            TOKEN,
            "w-x",
            refuse={"reason": "invalid", "detail": "endpoints[0].media.codecs bad"},
        )
        await w.connect()
        await controller.wait_for_workers(1, 5)
        run_id = await controller.runs.submit(load_plan(PLAN))
        assert await controller.runs.wait(run_id, 10) is RunStatus.FAILED
        assert "refused" in controller.runs.runs[run_id].life.reason
        assert "codecs bad" in controller.runs.runs[run_id].life.reason
        await w.disconnect()

    with_controller(tmp_path, body)


class _Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.svgs = 0
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "svg":
            self.svgs += 1
        for name, value in attrs:
            if name in ("src", "href") and value and "://" in value:
                self.external.append(value)


def test_run_plan_exit_codes_and_outputs(tmp_path: Path) -> None:
    from sipswarm.controller.runner import RunOptions, run_plan

    async def body(controller: Controller) -> None:
        w = HarnessWorker(controller.worker_url, TOKEN, "w-run")
        await w.connect()
        out = io.StringIO()
        ok = await run_plan(
            controller,
            load_plan(PLAN),
            RunOptions(
                report_path=str(tmp_path / "r.html"),
                json_path=str(tmp_path / "r.json"),
                out=out,
                timeout_s=20,
            ),
        )
        assert ok.status is RunStatus.COMPLETED and ok.exit_code == 0
        assert json.loads((tmp_path / "r.json").read_text())["status"] == "COMPLETED"
        assert "<svg" in (tmp_path / "r.html").read_text()
        assert "PASS  asr >= 1" in out.getvalue()
        bad = await run_plan(
            controller,
            load_plan(PLAN),
            RunOptions(thresholds=["pdd.p95 < 1"], out=out, live=False, timeout_s=20),
        )
        assert bad.status is RunStatus.COMPLETED and bad.exit_code == 1
        assert [r.passed for r in bad.thresholds] == [True, True, False]
        await w.disconnect()

        silent = HarnessWorker(controller.worker_url, TOKEN, "w-silent", script="silent")
        await silent.connect()
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, stop.set)  # Ctrl-C
        cancelled = await run_plan(
            controller, load_plan(PLAN), RunOptions(out=out, live=False, timeout_s=20), stop
        )
        assert cancelled.status is RunStatus.CANCELLED and cancelled.exit_code == 3
        await silent.disconnect()

    with_controller(tmp_path, body)


def test_hello_is_required_and_versioned(tmp_path: Path) -> None:
    async def body(controller: Controller) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for first in (
            {"type": "heartbeat", "ts": 1},
            {
                "type": "hello",
                "protocol": 2,
                "worker_id": "w",
                "name": "n",
                "version": "v",
                "status": "ONLINE",
                "capacity": {"max_endpoints": 1, "cpus": 1, "memory_mb": 1},
            },
        ):
            ws = await connect(
                controller.worker_url, additional_headers=headers, subprotocols=["sipswarm.v1"]
            )  # type: ignore[list-item]
            await ws.send(json.dumps(first))
            reply = json.loads(await ws.recv())
            assert reply["type"] == "error" and reply["in_reply_to"] == "hello"
            await ws.wait_closed()
            assert ws.close_code == 1008
        assert controller.hub.workers == {}

    with_controller(tmp_path, body)
