"""Fixtures of the agent tests: a real controller harness and an in-process worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sipswarm.agent.config import AgentConfig, LinkTimings
from sipswarm.agent.main import Agent, build_agent
from sipswarm.agent.supervisor import Supervisor

from .harness import ControllerHarness
from .scripted_backend import Script, ScriptedBackend

FAST = LinkTimings(
    open_timeout_s=2,
    welcome_timeout_s=2,
    backoff_initial_s=0.05,
    backoff_max_s=0.2,
    unauthorized_retry_s=0.6,
    batch_linger_s=0.01,
    drain_flush_timeout_s=2,
    cancel_timeout_s=1,
    loop_probe_interval_s=0.02,
)


def run(coro: Coroutine[Any, Any, Any], timeout: float = 20) -> Any:
    """Run one test scenario on a fresh loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@dataclass
class Worker:
    agent: Agent
    backend: ScriptedBackend
    task: asyncio.Task[int]

    @property
    def supervisor(self) -> Supervisor:
        return self.agent.supervisor

    async def exit_code(self, timeout: float = 5) -> int:
        return await asyncio.wait_for(asyncio.shield(self.task), timeout)


def make_config(tmp_path: Path, harness: ControllerHarness, **overrides: Any) -> AgentConfig:
    values: dict[str, Any] = {
        "controller_url": harness.url,
        "token": harness.token,
        "name": "test-worker",
        "worker_id": "w-test",
        "state_dir": tmp_path,
        "max_endpoints": 10,
        "health_address": "127.0.0.1",
        "health_port": 0,
        "timings": FAST,
    }
    values.update(overrides)
    return AgentConfig(**values)


@contextlib.asynccontextmanager
async def running_worker(
    tmp_path: Path, harness: ControllerHarness, script: Script | None = None, **overrides: Any
) -> AsyncIterator[Worker]:
    config = make_config(tmp_path, harness, **overrides)
    made: list[ScriptedBackend] = []

    def factory(cfg: AgentConfig, emit: Any) -> ScriptedBackend:
        made.append(ScriptedBackend(cfg, emit, script or Script()))
        return made[0]

    agent = build_agent(config, factory)
    task = asyncio.create_task(agent.run(install_signals=False))
    try:
        yield Worker(agent, made[0], task)
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task


@contextlib.asynccontextmanager
async def controller(**kwargs: Any) -> AsyncIterator[ControllerHarness]:
    harness = ControllerHarness(**kwargs)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()
