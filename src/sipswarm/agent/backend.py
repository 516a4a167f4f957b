"""The interface between the supervisor and whatever runs endpoints (the engine shards).

The supervisor (controller link, data stream, health) never touches SIP or
RTP; it hands a validated :class:`~sipswarm.agent.assignment.AssignmentSpec`
to a :class:`Backend` and forwards every item the backend emits. A backend is
built by a :data:`BackendFactory` with the agent config and an ``emit`` sink;
items are plain dicts exactly as PROTOCOL.md ``data`` items (``phase``,
``registration``, ``call``, ``metrics``, ``trace``, ``outcome``,
``finished``) and ``emit`` is cheap and never blocks (the data stream
buffers). The supervisor learns that an assignment is over from its
``finished`` item, so a backend MUST emit exactly one ``finished`` per
started assignment, after the last ``outcome`` of its endpoints, including
after ``cancel_run``.

Lifecycle: ``start_assignment`` (many) ... ``cancel_run`` (any time) ...
``wait_idle`` (drain) ... ``close`` (once, at exit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from sipswarm.agent.assignment import AssignmentSpec
from sipswarm.agent.config import AgentConfig

EmitItem = Callable[[dict[str, Any]], None]


class Backend(Protocol):
    """What the engine implements; see the module docstring for the item contract."""

    def free_endpoints(self) -> int:
        """Endpoints that could start now (capacity check of ``assign``)."""
        ...

    def active_endpoints(self) -> int:
        """Endpoints started and not yet CLOSED."""
        ...

    def problem(self) -> str | None:
        """Why no endpoint can run now (no free RTP port, shards failed to start), else
        None. The worker reports status ERROR with it as ``detail`` (PROTOCOL.md)."""
        ...

    def phase_counts(self) -> dict[str, int]:
        """Active endpoints by phase name, for /metrics."""
        ...

    def counters(self) -> dict[str, float]:
        """Cumulative counters and gauges for /metrics, e.g. ``calls_total``,
        ``rtp_packets_sent_total``, ``rtp_packets_received_total``; a
        ``loop_lag_ms_p99`` entry (worst shard) is folded into heartbeats."""
        ...

    async def start_assignment(self, spec: AssignmentSpec) -> None:
        """Schedule every endpoint of ``spec`` and return promptly (do not run them here).

        Raise :class:`~sipswarm.errors.ResourceError` if it cannot start
        (the assign is then refused with reason ``capacity``).
        """
        ...

    async def cancel_run(self, run_id: str, reason: str) -> None:
        """Hang up, unregister and close every endpoint of ``run_id`` (outcome
        CANCELLED, ``reason`` in the outcome item) within 5 s; return when done."""
        ...

    async def wait_idle(self) -> None:
        """Return when no endpoint is active (every assignment finished)."""
        ...

    async def close(self) -> None:
        """Release sockets and processes; called once, last."""
        ...


BackendFactory = Callable[[AgentConfig, EmitItem], Backend]
"""``factory(config, emit) -> Backend``: how ``run_agent`` builds the backend."""
