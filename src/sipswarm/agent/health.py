"""Health HTTP endpoint (``HEALTH_PORT``, default 3030): ``GET /health`` and ``GET /metrics``.

A minimal HTTP/1.1 server on asyncio streams: one request per connection,
GET and HEAD only, request head bounded to 8 KiB and read within 5 s.
``/health`` answers 200 with a JSON status (also when the worker is in
ERROR: the body says so; a container orchestrator should restart on a dead
process, not on a bad token). ``/metrics`` answers Prometheus text format
0.0.4. The content comes from two callables so that this module knows
nothing of the supervisor. Next: ``await server.start()``; ``await server.close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("sipswarm.agent.health")
MAX_REQUEST_HEAD = 8192
READ_TIMEOUT_S = 5.0

Metric = tuple[str, str, str, list[tuple[dict[str, str], float]]]
"""(name, type, help, [(labels, value), ...]) for :func:`render_prometheus`."""


def render_prometheus(metrics: list[Metric]) -> str:
    """Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    for name, kind, help_text, samples in metrics:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{label_text}}} {value:g}" if labels else f"{name} {value:g}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class HealthServer:
    """Serves ``health()`` as JSON on /health and ``metrics()`` as Prometheus text on /metrics."""

    def __init__(
        self,
        address: str,
        port: int,
        health: Callable[[], dict[str, Any]],
        metrics: Callable[[], list[Metric]],
    ) -> None:
        self.address, self.port = address, port
        self._routes: dict[str, Callable[[], tuple[str, str]]] = {
            "/health": lambda: ("application/json", json.dumps(health()) + "\n"),
            "/metrics": lambda: ("text/plain; version=0.0.4", render_prometheus(metrics())),
        }
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; return the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._serve, self.address, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("health endpoint listening", address=self.address, port=self.port)
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            status, ctype, body, method = self._respond(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            status, ctype, body, method = "400 Bad Request", "text/plain", "bad request\n", "GET"
        except Exception:
            log.exception("health endpoint failed")
            status, ctype, body, method = (
                "500 Internal Server Error",
                "text/plain",
                "error\n",
                "GET",
            )
        payload = body.encode()
        header = (
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(ConnectionError):
            writer.write(header + (b"" if method == "HEAD" else payload))
            await writer.drain()
        writer.close()

    def _respond(self, head: bytes) -> tuple[str, str, str, str]:
        if len(head) > MAX_REQUEST_HEAD:
            return "431 Request Header Fields Too Large", "text/plain", "too large\n", "GET"
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return "400 Bad Request", "text/plain", "bad request\n", "GET"
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", "GET only\n", method
        route = self._routes.get(target)
        if route is None:
            return "404 Not Found", "text/plain", "try /health or /metrics\n", method
        ctype, body = route()
        return "200 OK", ctype, body, method
