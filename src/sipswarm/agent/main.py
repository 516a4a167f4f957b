"""``run_agent``: the whole worker process except the construction of the real backend.

The ``sipswarm agent`` command (next phase) will call
``asyncio.run(run_agent(load_config(...), shard_backend_factory))``; tests
call it with a scripted backend. It configures logging (token redacted),
opens the media store and the data stream, builds the backend through the
factory with the supervisor's ``emit`` sink, serves the health endpoint,
turns SIGTERM/SIGINT into a drain, and returns the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from dataclasses import dataclass
from typing import Any

import structlog

from sipswarm import __version__
from sipswarm._native import NATIVE
from sipswarm.agent.backend import BackendFactory
from sipswarm.agent.config import AgentConfig
from sipswarm.agent.datastream import DataStream
from sipswarm.agent.health import HealthServer, Metric
from sipswarm.agent.logging import configure_logging
from sipswarm.agent.media_store import MediaStore
from sipswarm.agent.supervisor import Supervisor
from sipswarm.protocol import WorkerStatus

log = structlog.get_logger("sipswarm.agent")


@dataclass(slots=True)
class Agent:
    """A built worker: ``supervisor`` (with link and stream) and ``health``. Next: ``run()``."""

    config: AgentConfig
    supervisor: Supervisor
    health: HealthServer

    async def run(self, *, install_signals: bool = True) -> int:
        """Serve health, run the supervisor until drained, return the exit code."""
        await self.health.start()
        if install_signals:
            _install_signals(self.supervisor)
        log.info(
            "worker starting",
            worker_id=self.config.worker_id,
            name=self.config.name,
            controller=self.config.controller_url,
            stream=self.supervisor.stream.stream_id,
            version=__version__,
            rtp_path="c" if NATIVE else "python",
        )
        try:
            return await self.supervisor.run()
        finally:
            await self.health.close()
            if install_signals:
                _remove_signals()


def build_agent(config: AgentConfig, backend_factory: BackendFactory) -> Agent:
    """Open the media store and data stream, build the backend with the supervisor's sink."""
    stream = DataStream(str(uuid.uuid4()), max_bytes=config.data_buffer_bytes)
    supervisor = Supervisor(config, stream, MediaStore(config.media_dir))
    supervisor.attach(backend_factory(config, supervisor.emit))
    health = HealthServer(
        config.health_address,
        config.health_port,
        lambda: health_snapshot(supervisor),
        lambda: metrics_snapshot(supervisor),
    )
    return Agent(config, supervisor, health)


async def run_agent(
    config: AgentConfig,
    backend_factory: BackendFactory,
    *,
    configure_logs: bool = True,
    install_signals: bool = True,
) -> int:
    """Run the worker until it is drained; return the process exit code (0 = clean drain)."""
    if configure_logs:
        configure_logging(config.log_level, config.log_format, secrets=[config.token])
    return await build_agent(config, backend_factory).run(install_signals=install_signals)


def _install_signals(supervisor: Supervisor) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.request_drain, sig.name)


def _remove_signals() -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(sig)


def health_snapshot(sup: Supervisor) -> dict[str, Any]:
    """Body of ``GET /health``."""
    backend = sup.backend
    return {
        "status": sup.refresh_status().value,
        "detail": sup.detail,
        "connected": sup.link.connected,
        "worker_id": sup.config.worker_id,
        "name": sup.config.name,
        "version": __version__,
        "rtp_path": "c" if NATIVE else "python",  # sipswarm._native: C hot path or fallback
        "active_endpoints": backend.active_endpoints(),
        "free_endpoints": sup.free_endpoints(),
        "data_unacked_frames": sup.stream.unacked_frames,
        "data_buffer_bytes": sup.stream.buffered_bytes,
    }


def metrics_snapshot(sup: Supervisor) -> list[Metric]:
    """Body of ``GET /metrics``: worker, link, data stream and backend figures."""
    backend, stream = sup.backend, sup.stream
    status = [({"status": s.value}, float(sup.status is s)) for s in WorkerStatus]
    metrics: list[Metric] = [
        ("sipswarm_worker_status", "gauge", "1 for the current worker status", status),
        (
            "sipswarm_controller_connected",
            "gauge",
            "1 while a controller session is up",
            [({}, float(sup.link.connected))],
        ),
        (
            "sipswarm_controller_sessions_total",
            "counter",
            "controller sessions started",
            [({}, float(sup.link.sessions))],
        ),
        (
            "sipswarm_endpoints",
            "gauge",
            "active endpoints by phase",
            [({"phase": p}, float(n)) for p, n in sorted(backend.phase_counts().items())],
        ),
        (
            "sipswarm_endpoints_active",
            "gauge",
            "active endpoints",
            [({}, float(backend.active_endpoints()))],
        ),
        (
            "sipswarm_endpoints_free",
            "gauge",
            "endpoints that could start now",
            [({}, float(sup.free_endpoints()))],
        ),
        (
            "sipswarm_loop_lag_p99_ms",
            "gauge",
            "event loop lag, p99 of the last 10 s",
            [({}, sup.loop_lag_ms_p99())],
        ),
        (
            "sipswarm_data_unacked_frames",
            "gauge",
            "data frames sent and not acked",
            [({}, float(stream.unacked_frames))],
        ),
        (
            "sipswarm_data_pending_items",
            "gauge",
            "items waiting to be framed",
            [({}, float(stream.pending_items))],
        ),
        (
            "sipswarm_data_buffer_bytes",
            "gauge",
            "bytes held for replay",
            [({}, float(stream.buffered_bytes))],
        ),
        (
            "sipswarm_data_last_seq",
            "gauge",
            "seq of the last data frame",
            [({}, float(stream.last_seq))],
        ),
        (
            "sipswarm_data_dropped_items_total",
            "counter",
            "items dropped from a full buffer",
            [({"kind": k}, float(n)) for k, n in sorted(stream.counters.dropped_by_kind.items())],
        ),
        (
            "sipswarm_assigns_accepted_total",
            "counter",
            "assignments accepted",
            [({}, float(sup.counters.assigns_accepted))],
        ),
        (
            "sipswarm_assigns_refused_total",
            "counter",
            "assignments refused by reason",
            [({"reason": r}, float(n)) for r, n in sorted(sup.counters.assigns_refused.items())],
        ),
    ]
    for name, value in sorted(backend.counters().items()):
        kind = "counter" if name.endswith("_total") else "gauge"
        metrics.append((f"sipswarm_{name}", kind, f"engine {name}", [({}, float(value))]))
    return metrics
