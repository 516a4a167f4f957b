"""Shared pieces of the PROTOCOL.md conformance tests (tests/agent/test_conformance*.py).

A :class:`RecordingHarness` is the controller harness that also keeps the
upgrade request and response headers. :func:`started_agent` runs a real
``sipswarm agent`` process (the EndpointEngine backend, one shard, debug
logs) on loopback and, when it is stopped, checks that the token never
appeared in its output.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers

from tests.e2e.conftest import AgentProcess, agent_env

from .harness import ControllerHarness

PROTOCOL_STATUSES = {"ONLINE", "DRAINING", "ERROR"}
REFUSAL_REASONS = {"capacity", "draining", "invalid", "duplicate"}
PHASE_KEYS = {"kind", "run_id", "endpoint_id", "ts", "phase"}
CALL_KEYS = {
    "kind", "run_id", "endpoint_id", "direction", "final_code", "result", "invite_ts",
    "ringing_ts", "answer_ts", "first_rtp_ts", "bye_ts", "pdd_ms", "ttr_ms", "setup_ms",
    "ttfm_ms", "duration_ms",
}  # fmt: skip
SEND_KEYS = {
    "packets_sent", "bytes_sent", "packets_sent_rate_ps", "bytes_sent_rate_bps", "rtcp_sr_sent",
}  # fmt: skip
RECV_KEYS = {
    "packets_received", "bytes_received", "packets_recv_rate_ps", "bytes_recv_rate_bps",
    "packets_lost", "fraction_lost", "jitter_ms", "rtt_ms", "duplicate_packets",
    "out_of_order_packets", "sequence_number_gaps", "ssrc_switches", "r_factor", "mos",
}  # fmt: skip
CUMULATIVE = {
    "send": ("packets_sent", "bytes_sent", "rtcp_sr_sent"),
    "recv": ("packets_received", "bytes_received"),
}
ITEM_KEYS = {
    "phase": PHASE_KEYS,
    "registration": {
        "kind", "run_id", "endpoint_id", "ts", "status_code", "register_ms", "expires_granted_s",
    },
    "call": CALL_KEYS,
    "metrics": {"kind", "run_id", "ts", "endpoints"},
    "trace": {
        "kind", "run_id", "endpoint_id", "ts", "dir", "transport", "local", "remote", "message",
    },
    "outcome": {"kind", "run_id", "endpoint_id", "ts", "outcome", "final_code", "reason"},
    "finished": {"kind", "run_id", "assignment_id", "ts", "endpoints", "outcomes"},
    "gap": {"kind", "run_id", "from_ts", "to_ts", "dropped_items"},
}  # fmt: skip
EXTRA_ITEM_KEYS = {"gap": {"dropped_kinds"}, "metrics": {"generator"}}
"""Keys beyond PROTOCOL.md that docs/protocol.md documents (a controller ignores them)."""


class RecordingHarness(ControllerHarness):
    """The controller harness, plus the headers of every accepted upgrade."""

    upgrades: list[tuple[Headers, Headers]]

    async def start(self) -> str:
        self.upgrades = []
        return await super().start()

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None and ws.response is not None
        self.upgrades.append((ws.request.headers, ws.response.headers))
        await super()._handler(ws)


def is_epoch_ms(value: Any) -> bool:
    """An integer Unix time in milliseconds within a minute of now."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and abs(value - time.time() * 1000) < 60_000
    )


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def wav_bytes(seconds: float = 0.5, rate: int = 8000, hz: float = 440.0) -> bytes:
    """A PCM 16-bit mono WAV with a tone."""
    frames = bytearray()
    for n in range(int(seconds * rate)):
        sample = int(8000 * math.sin(2 * math.pi * hz * n / rate))
        frames += sample.to_bytes(2, "little", signed=True)
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(frames))
    return out.getvalue()


def log_events(proc: AgentProcess) -> list[dict[str, Any]]:
    """The agent's JSON log lines (other lines, e.g. tracebacks, skipped)."""
    events = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                events.append(obj)
    return events


def health_port(proc: AgentProcess) -> int:
    for event in log_events(proc):
        if event.get("event") == "health endpoint listening":
            return int(event["port"])
    raise AssertionError(f"no health port in the log:\n{proc.log_tail()}")


class AgentRunner:
    """Starts real ``sipswarm agent`` processes; ``stop_all`` checks their logs for the token."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[tuple[AgentProcess, str]] = []

    def start(
        self, ctl: ControllerHarness, state: str = "state", token: str | None = None, **env: Any
    ) -> AgentProcess:
        state_dir = self.tmp_path / state
        state_dir.mkdir(exist_ok=True)
        values: dict[str, Any] = {"LOG_LEVEL": "debug", "MAX_ENDPOINTS": "20", **env}
        token = token or ctl.token
        n = len(self.started)
        proc = AgentProcess(
            agent_env(ctl.url, token, state_dir, **values), self.tmp_path / f"agent{n}.log"
        )
        self.started.append((proc, token))
        return proc

    def stop_all(self) -> None:
        for proc, token in self.started:
            proc.stop(grace=10)
            assert not proc.leftovers(), f"agent {proc.pid} left processes {proc.leftovers()}"
            text = proc.log_path.read_text(errors="replace")
            assert token not in text, f"the token appears in the log of agent {proc.pid}"


@contextlib.contextmanager
def agent_runner(tmp_path: Path) -> Iterator[AgentRunner]:
    runner = AgentRunner(tmp_path)
    try:
        yield runner
    finally:
        runner.stop_all()


async def wait_connected(ctl: ControllerHarness, proc: AgentProcess, sessions: int = 1) -> None:
    """Until ``sessions`` hellos arrived and a heartbeat after the last one."""

    def up() -> bool:
        assert proc.running(), f"agent exited:\n{proc.log_tail()}"
        return len(ctl.hellos) >= sessions and ctl.ws is not None and bool(ctl.heartbeats)

    await ctl.wait_for(up, timeout=20)


def item_ts_keys(item: dict[str, Any]) -> list[str]:
    return [k for k in item if k == "ts" or k.endswith("_ts")]
