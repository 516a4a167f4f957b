"""``sipswarm run plan.yaml``: the reference controller plus a local agent, one command.

Theory of operation: the controller listens on a loopback WebSocket
(``--listen``, default ``127.0.0.1:0``, a free port); a child process
``sipswarm agent`` dials it with a token generated for this run, exactly as
a worker in a fleet would (PROTOCOL.md), its logs going to ``--log`` so that
the live view stays clean. Once the agent is ONLINE the plan is submitted and
:func:`~sipswarm.controller.runner.run_plan` shows progress until the run
ends; Ctrl-C (or SIGTERM) cancels it (STOPPING -> CANCELLED, every endpoint
hangs up). Then the report and JSON are written, thresholds printed, the
agent is stopped with SIGTERM (it drains) and the exit code returned. A
second Ctrl-C forces the exit at once (:class:`Interrupts`): the local agent
is killed, no report is written, exit 3, no traceback.

- 0: COMPLETED and every threshold passed; 1: a threshold failed;
- 2: bad plan, threshold or option (nothing started);
- 3: the run did not complete (CANNOT_RUN_FOR_NOW, FAILED, CANCELLED), or
  the local agent could not start.

``--workers N`` starts no agent and waits for N external ones instead
(``--tokens FILE``, or a generated token printed once for them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import uvloop

from sipswarm.commands.controller import parse_hostport
from sipswarm.controller.hub import load_tokens
from sipswarm.controller.plan import Plan, check_threshold_group, load_plan_file
from sipswarm.controller.runner import EXIT_NOT_COMPLETED, RunOptions, run_plan
from sipswarm.controller.server import Controller, ControllerConfig
from sipswarm.controller.thresholds import parse_thresholds
from sipswarm.errors import ConfigError

EXIT_USAGE = 2
AGENT_START_TIMEOUT_S = 30.0  # shards import numpy/av and bind sockets before reporting
AGENT_STOP_TIMEOUT_S = 40.0  # its drain flush timeout is 30 s
FORCED_CLOSE_TIMEOUT_S = 1.0  # a forced exit waits this long for workers' close handshakes
WORKERS_TIMEOUT_S = 120.0  # --workers N: how long to wait for the external agents


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plan", help="plan file (YAML; see docs/plan.md)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="wait for N external agents instead of starting a local one",
    )
    parser.add_argument("--report", metavar="FILE", help="write the HTML report here")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON here")
    parser.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="EXPR",
        help="extra pass/fail expression, e.g. 'asr >= 0.99' (repeatable)",
    )
    parser.add_argument("--db", default="sipswarm.db", help="SQLite results file (%(default)s)")
    parser.add_argument(
        "--listen",
        default="127.0.0.1:0",
        help="worker WebSocket HOST:PORT (default %(default)s: loopback, a free port)",
    )
    parser.add_argument("--tokens", metavar="FILE", help="worker tokens for --workers agents")
    parser.add_argument(
        "--shards", type=int, default=None, help="engine processes of the local agent (CPUs)"
    )
    parser.add_argument(
        "--max-endpoints",
        type=int,
        default=None,
        help="endpoints the local agent accepts at once (its MAX_ENDPOINTS, default 500)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="cancel the run after S s")
    parser.add_argument(
        "--log",
        default=None,
        metavar="FILE",
        help="controller and local agent logs (default: a file in the temp directory)",
    )


@dataclass
class RunSetup:
    plan: Plan
    config: ControllerConfig
    options: RunOptions
    external_workers: int
    token: str
    token_generated: bool
    log_path: Path
    shards: int | None
    max_endpoints: int | None = None


def prepare(args: argparse.Namespace) -> RunSetup:
    """Check everything before anything starts; ConfigError names the bad input."""
    plan = load_plan_file(args.plan)
    for threshold in parse_thresholds(args.threshold):
        check_threshold_group(threshold, [g.name for g in plan.groups])
    if args.workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {args.workers}")
    if args.shards is not None and args.shards < 1:
        raise ConfigError(f"--shards must be 1 or more, got {args.shards}")
    if args.max_endpoints is not None and args.max_endpoints < 1:
        raise ConfigError(f"--max-endpoints must be 1 or more, got {args.max_endpoints}")
    if args.max_endpoints is not None and args.workers:
        raise ConfigError("--max-endpoints sizes the local agent; with --workers set it on them")
    host, port = parse_hostport(args.listen, "--listen")
    tokens = load_tokens(args.tokens) if args.tokens else set()
    generated = not tokens
    token = next(iter(sorted(tokens))) if tokens else secrets.token_urlsafe(24)
    log_path = Path(args.log or Path(tempfile.gettempdir()) / f"sipswarm-run-{os.getpid()}.log")
    config = ControllerConfig(
        host=host, port=port, api_host=host, api_port=0, tokens={token, *tokens}, db_path=args.db
    )
    options = RunOptions(
        thresholds=args.threshold,
        report_path=args.report,
        json_path=args.json,
        workers=max(1, args.workers),
        workers_timeout_s=AGENT_START_TIMEOUT_S if args.workers == 0 else WORKERS_TIMEOUT_S,
        timeout_s=args.timeout,
    )
    return RunSetup(
        plan,
        config,
        options,
        args.workers,
        token,
        generated,
        log_path,
        args.shards,
        args.max_endpoints,
    )


def main(args: argparse.Namespace) -> int:
    try:
        setup = prepare(args)
    except ConfigError as exc:
        print(f"sipswarm run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for warning in setup.plan.warnings:
        print(f"sipswarm run: warning: {warning}", file=sys.stderr)
    with open(setup.log_path, "ab") as log_file:
        handler = logging.StreamHandler(_text(log_file))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
        try:
            code: int = uvloop.run(run_command(setup, log_file))
        except OSError as exc:
            print(f"sipswarm run: cannot listen on {args.listen}: {exc}", file=sys.stderr)
            return EXIT_NOT_COMPLETED
        except KeyboardInterrupt:  # before the signal handlers were installed
            print("sipswarm run: interrupted", file=sys.stderr)
            return EXIT_NOT_COMPLETED
    print(f"logs: {setup.log_path}")
    return code


def _text(log_file: IO[bytes]) -> IO[str]:
    import io

    return io.TextIOWrapper(log_file, encoding="utf-8", line_buffering=True, write_through=True)


async def run_command(setup: RunSetup, log_file: IO[bytes]) -> int:
    """Start the controller (and the local agent), run the plan, stop everything."""
    controller = Controller(setup.config)
    await controller.start()
    stop = asyncio.Event()
    interrupts = Interrupts(stop, asyncio.current_task())
    _on_signals(interrupts.signal)
    agent: LocalAgent | None = None
    try:
        if setup.external_workers:
            _print_worker_instructions(setup, controller.worker_url)
        else:
            print("starting the local agent ...", flush=True)
            agent = await LocalAgent.start(
                controller.worker_url, setup.token, setup.shards, log_file, setup.max_endpoints
            )
        wanted = setup.options.workers
        ready = await wait_ready(controller, wanted, setup.options.workers_timeout_s, stop, agent)
        if ready < wanted:
            if stop.is_set():
                print("sipswarm run: interrupted before the run started", file=sys.stderr)
            elif agent is not None:
                print(
                    f"sipswarm run: the local agent did not come online ({agent.describe()});"
                    f" see {setup.log_path}",
                    file=sys.stderr,
                )
            else:
                print(f"sipswarm run: {ready} of {wanted} worker(s) ready", file=sys.stderr)
            if stop.is_set() or agent is not None or ready == 0:
                return EXIT_NOT_COMPLETED
        options = dataclasses.replace(setup.options, workers_timeout_s=0.0)  # waited above
        summary = await run_plan(controller, setup.plan, options, stop)
        for path, what in (
            (setup.options.report_path, "report"),
            (setup.options.json_path, "json"),
        ):
            if path:
                print(f"{what}: {path}")
        return summary.exit_code
    except asyncio.CancelledError:
        if not interrupts.forced:
            raise
        interrupts.task.uncancel()  # type: ignore[union-attr]
        print(
            "sipswarm run: forced exit: no report written; endpoints still in a call may"
            " stay open on the system under test until it times them out",
            file=sys.stderr,
        )
        return EXIT_NOT_COMPLETED
    finally:
        if agent is not None:
            try:
                await (agent.kill() if interrupts.forced else agent.stop())
            except asyncio.CancelledError:  # Ctrl-C again while the agent drains
                interrupts.task.uncancel()  # type: ignore[union-attr]
                await agent.kill()
        _on_signals(None)
        await controller.stop(FORCED_CLOSE_TIMEOUT_S if interrupts.forced else None)


@dataclass
class Interrupts:
    """Ctrl-C / SIGTERM: the first cancels the run (``stop`` is set: every endpoint hangs
    up, the report is written); the second cancels ``task`` (the whole command) at once."""

    stop: asyncio.Event
    task: asyncio.Task[Any] | None
    forced: bool = False

    def signal(self) -> None:
        if not self.stop.is_set():
            self.stop.set()
            print("cancelling the run: every endpoint hangs up (Ctrl-C again to force)")
            return
        if not self.forced and self.task is not None:
            self.forced = True
            self.task.cancel()


def ready_workers(controller: Controller) -> int:
    """Workers connected, ONLINE, whose last heartbeat reports free endpoints (an agent
    says hello before its engine shards are up; its heartbeats say when they are)."""
    return sum(
        1
        for w in controller.hub.workers.values()
        if w.free > 0 and w.heartbeat is not None and w.heartbeat.free_endpoints > 0
    )


async def wait_ready(
    controller: Controller,
    count: int,
    timeout: float,
    stop: asyncio.Event,
    agent: LocalAgent | None,
) -> int:
    """Wait until ``count`` workers are ready, ``stop`` is set, the local agent died, or
    ``timeout`` passed; return how many are ready."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ready = ready_workers(controller)
        dead = agent is not None and agent.proc.returncode is not None
        if ready >= count or stop.is_set() or dead or loop.time() >= deadline:
            return ready
        await asyncio.sleep(0.1)


def _on_signals(callback: Any) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            if callback is None:
                loop.remove_signal_handler(sig)
            else:
                loop.add_signal_handler(sig, callback)


def _print_worker_instructions(setup: RunSetup, url: str) -> None:
    print(f"waiting for {setup.external_workers} worker(s) at {url}", flush=True)
    if setup.token_generated:
        # a token made for this run only; external agents need it to connect
        print(f"start them with CONTROLLER_URL={url} WORKER_TOKEN={setup.token}", flush=True)


@dataclass
class LocalAgent:
    """The ``sipswarm agent`` child of ``sipswarm run``, in its own session (Ctrl-C on
    the terminal reaches only ``run``, which cancels the run and then stops the agent)."""

    proc: asyncio.subprocess.Process

    @classmethod
    async def start(
        cls,
        url: str,
        token: str,
        shards: int | None,
        log_file: IO[bytes],
        max_endpoints: int | None = None,
    ) -> LocalAgent:
        """Start ``sipswarm agent`` pointed at ``url``; its output goes to ``log_file``."""
        env = {
            **os.environ,
            "CONTROLLER_URL": url,
            "WORKER_TOKEN": token,
            "WORKER_NAME": os.environ.get("WORKER_NAME", "local"),
            "HEALTH_ADDRESS": "127.0.0.1",
            "HEALTH_PORT": "0",
        }
        if shards is not None:
            env["SHARDS"] = str(shards)
        if max_endpoints is not None:
            env["MAX_ENDPOINTS"] = str(max_endpoints)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sipswarm.cli",
            "agent",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
        return cls(proc)

    def describe(self) -> str:
        rc = self.proc.returncode
        return "still starting" if rc is None else f"exited with status {rc}"

    async def kill(self) -> None:
        """SIGKILL to the agent's process group (its session: supervisor and shards)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        """SIGTERM (the agent drains: runs finished, data flushed), SIGKILL if it hangs."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), AGENT_STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
