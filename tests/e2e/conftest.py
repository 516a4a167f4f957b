"""End-to-end helpers: real ``sipswarm agent`` / ``sipswarm run`` processes on loopback.

Every process is started by :class:`tests.peers.procs.ManagedProcess` (stopped by
its PID, descendants checked) and bound to 127.0.0.1. Each agent gets its own
RTP port range (:func:`rtp_range`) so that concurrent test runs of other
engineers do not collide with it. Kamailio users 1600..1799 are this
package's (no other test registers them).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.harness import ControllerHarness
from tests.peers.procs import ManagedProcess

ROOT = Path(__file__).resolve().parents[2]
PHASE_ORDER = [
    "INITIALIZING", "REGISTERED", "CALLING", "RINGING", "NEGOTIATING", "INCALL",
    "DISCONNECTING", "CLOSED",
]  # fmt: skip


def rtp_range(size: int = 400) -> str:
    """An even-aligned RTP port range picked at random in 40000-59999."""
    low = random.randrange(40000, 60000 - size, 2)
    return f"{low}-{low + size - 1}"


def agent_env(url: str, token: str, state_dir: Path, **extra: Any) -> dict[str, str]:
    """The environment of a loopback test agent (extra keys are setting names)."""
    env = {
        **os.environ,
        "CONTROLLER_URL": url,
        "WORKER_TOKEN": token,
        "STATE_DIR": str(state_dir),
        "HEALTH_ADDRESS": "127.0.0.1",
        "HEALTH_PORT": "0",
        "SIP_BIND_ADDRESS": "127.0.0.1",
        "RTP_PORT_RANGE": rtp_range(),
        "SHARDS": "1",
        "MAX_ENDPOINTS": "60",
        "LOG_LEVEL": "info",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


class AgentProcess(ManagedProcess):
    """``python -m sipswarm.cli agent`` with the given environment."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        argv = [sys.executable, "-m", "sipswarm.cli", "agent"]
        # ManagedProcess inherits the environment; the agent needs its own (token included)
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self.descendants_seen = {}


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    """A list to put started agents in; each is stopped (by PID) and checked at the end."""
    started: list[AgentProcess] = []
    yield started
    for proc in started:
        proc.stop(grace=10)
        assert not proc.leftovers(), f"agent {proc.pid} left processes {proc.leftovers()}"


def start_agent(
    started: list[AgentProcess], harness_url: str, token: str, tmp_path: Path, **extra: Any
) -> AgentProcess:
    n = len(started)
    state = tmp_path / f"agent{n}"
    state.mkdir(exist_ok=True)
    proc = AgentProcess(agent_env(harness_url, token, state, **extra), tmp_path / f"agent{n}.log")
    started.append(proc)
    return proc


def run(coro: Any, timeout: float) -> Any:
    """One scenario on a fresh loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def now_ms() -> int:
    return int(time.time() * 1000)


def endpoint(
    eid: str,
    role: str,
    user: str,
    *,
    password: str | None = None,
    registrar: dict[str, Any] | None = None,
    call: dict[str, Any] | None = None,
    offset_ms: int = 0,
) -> dict[str, Any]:
    """One PROTOCOL.md assign endpoint; direct (register: false) unless ``registrar``."""
    reg = registrar or {"domain": "127.0.0.1", "register": False}
    return {
        "endpoint_id": eid,
        "group": eid.split("/")[-2] if eid.count("/") >= 2 else role,
        "role": role,
        "start_offset_ms": offset_ms,
        "account": {"username": user, "password": password},
        "registrar": {"transport": "udp", "expires_s": 300, **reg},
        "call": call,
        "media": {"codecs": ["PCMU"], "ptime_ms": 20, "source": {"kind": "tone"}},
        "actions": [],
    }


def assign(
    assignment_id: str, run_id: str, endpoints: list[dict[str, Any]], trace: str = "all"
) -> dict[str, Any]:
    return {
        "type": "assign",
        "assignment_id": assignment_id,
        "run_id": run_id,
        "start_at": now_ms() + 200,
        "settings": {"trace": trace, "metrics_interval_ms": 1000},
        "endpoints": endpoints,
    }


async def assign_pairs(
    ctl: ControllerHarness,
    run_id: str,
    n: int,
    *,
    duration_s: float,
    caller_offset_ms: int = 0,
    base_user: int = 1600,
) -> list[str]:
    """``n`` direct receivers, then ``n`` callers each calling one receiver's contact.

    Returns every endpoint id. Waits for both assign_results (accepted).
    """
    receivers = [
        endpoint(
            f"{run_id}/receivers/{i}",
            "receiver",
            str(base_user + i),
            call={"duration_s": duration_s + 30, "idle_timeout_s": 60, "expected_calls": 1},
        )
        for i in range(n)
    ]
    await ctl.send(assign(f"{run_id}-a1", run_id, receivers))
    ids = [r["endpoint_id"] for r in receivers]

    def contacts() -> dict[str, str] | None:
        found = {
            i["endpoint_id"]: i["contact"]
            for i in ctl.items_of("phase")
            if i["phase"] == "REGISTERED" and i["endpoint_id"] in ids
        }
        return found if len(found) == n else None

    found = await ctl.wait_for(contacts, timeout=15)
    callers = [
        endpoint(
            f"{run_id}/callers/{i}",
            "caller",
            str(base_user + 50 + i),
            call={"target": found[ids[i]], "duration_s": duration_s, "ring_timeout_s": 10},
            offset_ms=caller_offset_ms * i,
        )
        for i in range(n)
    ]
    await ctl.send(assign(f"{run_id}-a2", run_id, callers))
    await ctl.wait_for(
        lambda: (
            {r["assignment_id"] for r in ctl.of_type("assign_result") if r["accepted"]}
            >= {f"{run_id}-a1", f"{run_id}-a2"}
        ),
        timeout=10,
    )
    return ids + [c["endpoint_id"] for c in callers]


def outcomes_by_endpoint(ctl: ControllerHarness) -> dict[str, dict[str, Any]]:
    return {o["endpoint_id"]: o for o in ctl.items_of("outcome")}


def assert_phases_forward(items: list[dict[str, Any]]) -> None:
    """Every endpoint's phases strictly forward (skips allowed), ending CLOSED."""
    seen: dict[str, list[str]] = {}
    for i in items:
        if i["kind"] == "phase":
            seen.setdefault(i["endpoint_id"], []).append(i["phase"])
    for eid, phases in seen.items():
        order = [PHASE_ORDER.index(p) for p in phases]
        assert order == sorted(set(order)), f"{eid}: phases not forward only: {phases}"
        assert phases[0] == "INITIALIZING" and phases[-1] == "CLOSED", f"{eid}: {phases}"
