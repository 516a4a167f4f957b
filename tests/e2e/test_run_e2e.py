"""Issue 5 end to end: ``sipswarm run`` as a subprocess, with its local agent or with
external agents, against Kamailio with accounts."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.peers.kamailio import Kamailio
from tests.peers.procs import free_port

from .conftest import ROOT, AgentProcess, agent_env, rtp_range, start_agent

pytestmark = pytest.mark.peers


def sipswarm_run(tmp_path: Path, plan: Path | str, *args: str, **env: str) -> subprocess.Popen[str]:
    """``python -m sipswarm.cli run PLAN ARGS`` in ``tmp_path`` (results there too)."""
    full_env = {
        **os.environ,
        "SIP_BIND_ADDRESS": "127.0.0.1",
        "RTP_PORT_RANGE": rtp_range(),
        "SHARDS": "1",
        "MAX_ENDPOINTS": "100",
        **env,
    }
    argv = [sys.executable, "-m", "sipswarm.cli", "run", str(plan), "--db", "runs.db",
            "--json", "out.json", "--report", "report.html", "--log", "run.log", *args]  # fmt: skip
    return subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"sipswarm run did not end within {timeout} s:\n{out}") from None
    return proc.returncode, out


def results(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "out.json").read_text())
    return data


def write_plan(tmp_path: Path, text: str, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def kamailio_plan(kam: Kamailio, n: int, first: int, *, duration: float, extra: str = "") -> str:
    host, port = kam.address("udp")
    return f"""
name: kamailio-{n}
registrars:
  kam: {{domain: "127.0.0.1", host: "{host}", port: {port}, transport: udp}}
groups:
  - name: receivers
    size: {n}
    role: receiver
    registrar: kam
    accounts: {{user: "{{{first}..{first + n - 1}}}", password: "secret{{user}}"}}
    call: {{duration_s: {duration + 20}}}
    media: {{codecs: [PCMU]}}
  - name: callers
    size: {n}
    role: caller
    registrar: kam
    target: receivers
    accounts: {{user: "{{{first + n}..{first + 2 * n - 1}}}", password: "secret{{user}}"}}
    call: {{duration_s: {duration}, ring_timeout_s: 10}}
    media: {{codecs: [PCMU]}}
{extra}
buildup: {{rate_per_s: 50}}
registration_window_s: 10
trace: failures
"""


def test_quickstart_ends_0_with_answered_calls_and_mos(tmp_path: Path) -> None:
    started = time.monotonic()
    code, out = finish(sipswarm_run(tmp_path, ROOT / "examples" / "quickstart.yaml"), 60)
    assert code == 0, out + (tmp_path / "run.log").read_text()[-3000:]
    assert time.monotonic() - started < 60
    overall = results(tmp_path)["aggregates"]["overall"]
    assert overall["calls_answered"] == overall["calls_attempted"] == 10
    assert overall["mos"]["mean"] is not None and overall["mos"]["mean"] > 4.0
    assert overall["outcomes"] == {"SUCCESS": 20}  # receivers that answered end SUCCESS
    html = (tmp_path / "report.html").read_text()
    assert "MOS" in html and "answered" in html
    assert "PASS" in out and "COMPLETED" in out


def test_kamailio_two_external_agents_50_callers_50_receivers(
    tmp_path: Path, kamailio: Kamailio, agents: list[AgentProcess]
) -> None:
    plan = write_plan(tmp_path, kamailio_plan(kamailio, 50, 1700, duration=3))
    (tmp_path / "tokens.txt").write_text("e2e-token-1\n")
    port = free_port(("tcp",))
    proc = sipswarm_run(
        tmp_path, plan, "--workers", "2", "--tokens", "tokens.txt", "--listen", f"127.0.0.1:{port}",
        "--threshold", "asr >= 1", "--threshold", "registrations.ratio >= 1",
    )  # fmt: skip
    url = f"ws://127.0.0.1:{port}/v1/worker"
    time.sleep(1.0)  # the controller listens first; agents retry with backoff anyway
    for _ in range(2):
        start_agent(agents, url, "e2e-token-1", tmp_path, MAX_ENDPOINTS=60)
    code, out = finish(proc, 90)
    assert code == 0, out + (tmp_path / "run.log").read_text()[-3000:]
    data = results(tmp_path)
    overall, groups = data["aggregates"]["overall"], data["aggregates"]["groups"]
    assert overall["calls_attempted"] == 50 and overall["calls_answered"] == 50
    assert overall["asr"] == 1.0 and overall["registrations_succeeded"] >= 100
    db = sqlite3.connect(tmp_path / "runs.db")
    # every endpoint succeeded; on a machine shared with other jobs the engine may
    # honestly flag itself overloaded (COMPLETED_WITH_WARNINGS), and nothing else
    warned = db.execute(
        "select reason from outcomes where outcome = 'COMPLETED_WITH_WARNINGS'"
    ).fetchall()
    assert all(r.startswith("generator overloaded") for (r,) in warned), warned
    for group in ("callers", "receivers"):
        outcomes = groups[group]["outcomes"]
        assert set(outcomes) <= {"SUCCESS", "COMPLETED_WITH_WARNINGS"}, outcomes
        assert sum(outcomes.values()) == 50
    (answered,) = db.execute(
        "select count(*) from calls where direction = 'out' and final_code = 200"
    ).fetchone()
    workers = db.execute("select count(distinct worker_id) from assignments").fetchone()[0]
    db.close()
    assert answered == 50 and workers == 2  # aggregates agree with the stored calls; both used
    assert (tmp_path / "report.html").stat().st_size > 1000


def test_wrong_password_group_completes_with_registration_failed(
    tmp_path: Path, kamailio: Kamailio
) -> None:
    extra = """
  - name: badpw
    size: 3
    role: receiver
    registrar: kam
    accounts: {user: "{1640..1642}", password: "not-the-password"}
"""
    text = kamailio_plan(kamailio, 3, 1630, duration=1)
    text = text.replace("\nbuildup:", extra.rstrip() + "\nbuildup:", 1)
    code, out = finish(sipswarm_run(tmp_path, write_plan(tmp_path, text)), 60)
    data = results(tmp_path)
    assert data["status"] == "COMPLETED", out
    assert data["aggregates"]["groups"]["badpw"]["outcomes"] == {"REGISTRATION_FAILED": 3}
    assert data["aggregates"]["overall"]["calls_answered"] == 3
    assert code == 0, out


def test_plan_larger_than_capacity_cannot_run_for_now(tmp_path: Path) -> None:
    code, out = finish(
        sipswarm_run(tmp_path, ROOT / "examples" / "quickstart.yaml", MAX_ENDPOINTS="4"), 40
    )
    assert code == 3, out
    data = results(tmp_path)
    assert data["status"] == "CANNOT_RUN_FOR_NOW", data["reason"]
    db = sqlite3.connect(tmp_path / "runs.db")
    assert db.execute("select count(*) from phases").fetchone()[0] == 0  # nothing started
    db.close()


def test_ctrl_c_cancels_with_no_endpoint_left_open(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path,
        (ROOT / "examples" / "quickstart.yaml")
        .read_text()
        .replace("duration_s: 10", "duration_s: 120"),
    )
    proc = sipswarm_run(tmp_path, plan)
    deadline = time.monotonic() + 40
    incall = 0
    while incall < 20 and time.monotonic() < deadline:
        time.sleep(0.3)
        incall = in_call(tmp_path / "runs.db")
    assert incall == 20, "the calls did not come up"
    os.kill(proc.pid, signal.SIGINT)
    code, out = finish(proc, 40)
    assert code == 3, out
    data = results(tmp_path)
    assert data["status"] == "CANCELLED", data
    db = sqlite3.connect(tmp_path / "runs.db")
    endpoints = db.execute("select count(*) from endpoints").fetchone()[0]
    rows = db.execute("select outcome, count(*) from outcomes group by outcome").fetchall()
    closed = db.execute("select count(*) from phases where phase = 'CLOSED'").fetchone()[0]
    db.close()
    assert endpoints == 20 and dict(rows) == {"CANCELLED": 20} and closed == 20


def test_second_ctrl_c_forces_the_exit_without_a_traceback(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    # A worker that stopped answering (here: SIGSTOP) keeps the run STOPPING for up to
    # STOP_TIMEOUT_S (15 s) after the first Ctrl-C; the second one used to be ignored.
    plan = write_plan(
        tmp_path,
        (ROOT / "examples" / "quickstart.yaml")
        .read_text()
        .replace("size: 10", "size: 2")
        .replace("duration_s: 10", "duration_s: 120"),
    )
    (tmp_path / "tokens.txt").write_text("e2e-token-2\n")
    port = free_port(("tcp",))
    proc = sipswarm_run(
        tmp_path, plan, "--workers", "1", "--tokens", "tokens.txt", "--listen", f"127.0.0.1:{port}"
    )
    agent = start_agent(agents, f"ws://127.0.0.1:{port}/v1/worker", "e2e-token-2", tmp_path)
    try:
        deadline = time.monotonic() + 40
        while in_call(tmp_path / "runs.db") < 4 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert in_call(tmp_path / "runs.db") == 4, "the calls did not come up"
        os.killpg(agent.pid, signal.SIGSTOP)  # the worker goes silent
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None, "the run ended although its worker cannot hang up"
        os.kill(proc.pid, signal.SIGINT)
        code, out = finish(proc, 5)  # well before the 15 s STOPPING limit
    finally:
        os.killpg(agent.pid, signal.SIGCONT)
    assert code == 3, out
    assert "Traceback" not in out
    assert "Ctrl-C again to force" in out and "forced exit: no report written" in out


def in_call(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)
        try:
            return int(
                db.execute("select count(*) from phases where phase = 'INCALL'").fetchone()[0]
            )
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0


def test_failing_threshold_gives_a_nonzero_exit(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path,
        (ROOT / "examples" / "quickstart.yaml")
        .read_text()
        .replace("size: 10", "size: 2")
        .replace("duration_s: 10", "duration_s: 1"),
    )
    code, out = finish(sipswarm_run(tmp_path, plan, "--threshold", "pdd.p95 < 0"), 40)
    assert code == 1, out
    assert "FAIL  pdd.p95 < 0" in out and "COMPLETED" in out
    assert results(tmp_path)["status"] == "COMPLETED"


def test_bad_plan_exits_2_naming_the_field(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, "groups:\n  - name: x\n    size: -1\n    role: caller\n")
    code, out = finish(sipswarm_run(tmp_path, plan), 20)
    assert code == 2 and "groups[0]" in out, out


def test_agent_with_a_missing_setting_exits_with_one_line(tmp_path: Path) -> None:
    env = agent_env("ws://127.0.0.1:9/v1/worker", "t", tmp_path)
    del env["WORKER_TOKEN"]
    done = subprocess.run(
        [sys.executable, "-m", "sipswarm.cli", "agent"],
        env=env, capture_output=True, text=True, timeout=20, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "WORKER_TOKEN" in lines[0], done.stderr
