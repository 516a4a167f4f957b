"""A small HTTP/1.1 server for the controller's REST API (``/api/v1/...``).

websockets' server cannot read request bodies, and ``POST /api/v1/runs``
carries a plan, so the API has its own listener (``--api``, by default the
WebSocket port plus one). It is deliberately small: one request per
connection (``Connection: close``), ``Content-Length`` bodies up to
:data:`MAX_BODY` bytes, JSON answers, routes picked from a table of
``(method, pattern, handler)``. Handlers are in :mod:`.server`; they get
the path parameters and the body and return ``(status, json-or-text)``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

log = logging.getLogger("sipswarm.controller.http")

MAX_BODY = 4 * 1024 * 1024
MAX_HEADER = 16 * 1024
READ_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()  # extra headers, e.g. Allow on a 405

    def encode(self) -> bytes:
        if isinstance(self.body, bytes):
            payload = self.body
        elif isinstance(self.body, str) and self.content_type != "application/json":
            payload = self.body.encode()
        else:
            payload = json.dumps(self.body, indent=1, default=str).encode()
        reason = HTTPStatus(self.status).phrase
        extra = "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        head = (
            f"HTTP/1.1 {self.status} {reason}\r\nContent-Type: {self.content_type}\r\n"
            f"{extra}Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode() + payload


Handler = Callable[[Request], Awaitable[Reply]]


def error(status: int, message: str, **extra: Any) -> Reply:
    return Reply(status, {"error": message, **extra})


class HttpApi:
    """Routes requests to handlers; :meth:`serve` starts the listener."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.server: asyncio.Server | None = None

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        """``pattern`` like ``/api/v1/runs/{run_id}``; ``{name}`` matches one path segment."""
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$"
        self.routes.append((method, re.compile(regex), handler))

    async def serve(self, host: str, port: int) -> int:
        """Listen; returns the bound port (``port`` 0 picks a free one)."""
        self.server = await asyncio.start_server(self._connection, host, port)
        sock = self.server.sockets[0]
        return int(sock.getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await asyncio.wait_for(self._handle(reader), READ_TIMEOUT_S)
        except TimeoutError:
            reply = error(408, "request not received in time")
        except Exception as exc:  # one bad request must not take the controller down
            log.exception("HTTP handler failed")
            reply = error(500, f"internal error: {type(exc).__name__}: {exc}")
        try:
            writer.write(reply.encode())
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader) -> Reply:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return error(400, "incomplete or oversized request head")
        if len(head) > MAX_HEADER:
            return error(431, "request head too large")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return error(400, "bad request line")
        method, target, _ = parts
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = b""
        length = headers.get("content-length", "0")
        if not length.isdigit():
            return error(400, "bad Content-Length")
        if int(length) > MAX_BODY:
            return error(413, f"body larger than {MAX_BODY} bytes")
        if int(length):
            body = await reader.readexactly(int(length))
        path, _, query = target.partition("?")
        return await self._dispatch(method, path, query, headers, body)

    async def _dispatch(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> Reply:
        allowed = []
        for m, regex, handler in self.routes:
            match = regex.match(path)
            if match is None:
                continue
            if m != method:
                allowed.append(m)
                continue
            return await handler(Request(method, path, query, headers, body, match.groupdict()))
        if allowed:
            allow = ", ".join(allowed)
            reply = error(405, f"{method} not allowed on {path}; use {allow}")
            return Reply(reply.status, reply.body, headers=(("Allow", allow),))  # RFC 9110 15.5.6
        return error(404, f"no such resource {path}; see /api/v1/openapi.json")
