"""A real controller for link tests: a websockets server speaking PROTOCOL.md's controller side.

It checks the bearer token (HTTP 401 before the upgrade), answers ``hello``
with ``welcome`` (``acked_seq`` = the last contiguous seq it holds for the
worker's stream), acks ``data`` frames, records every frame and the time
of every upgrade attempt, and can drop the connection, refuse upgrades with
a status for a while, forget unacked frames on a drop, and send any frame.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from sipswarm.protocol import SUBPROTOCOL


@dataclass
class StreamState:
    held: set[int] = field(default_factory=set)  # seqs this controller keeps
    arrivals: list[int] = field(default_factory=list)  # every data frame received, repeats too
    unacked: set[int] = field(default_factory=set)

    def contiguous(self) -> int:
        n = 0
        while n + 1 in self.held:
            n += 1
        return n


@dataclass
class ControllerHarness:
    token: str = "tok-s3cr3t-123"
    heartbeat_interval_s: float = 0.2
    orphan_timeout_s: float = 30.0
    auto_ack: bool = True
    forget_unacked_on_drop: bool = False
    refuse_status: int | None = None
    hellos: list[dict[str, Any]] = field(default_factory=list)
    heartbeats: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)  # every non-data frame
    items: list[dict[str, Any]] = field(default_factory=list)  # items of first arrivals only
    streams: dict[str, StreamState] = field(default_factory=dict)
    attempts: list[tuple[float, int]] = field(default_factory=list)  # (time, HTTP status)
    close_codes: list[int | None] = field(default_factory=list)
    ws: ServerConnection | None = None
    server: Server | None = None
    port: int = 0
    _stream: str | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/worker"

    async def start(self) -> str:
        self.server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            subprotocols=[SUBPROTOCOL],
            process_request=self._process_request,
            max_size=16 * 1024 * 1024,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self.url

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            self.attempts.append((time.monotonic(), 401))
            return conn.respond(HTTPStatus.UNAUTHORIZED, "bad token\n")
        if self.refuse_status is not None:
            self.attempts.append((time.monotonic(), self.refuse_status))
            return Response(self.refuse_status, "Refused", Headers(), b"")
        self.attempts.append((time.monotonic(), 101))
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        hello = json.loads(await ws.recv())
        self.hellos.append(hello)
        stream = hello.get("stream") or (hello.get("resume") or {}).get("stream")
        self._stream = stream
        state = self.streams.setdefault(stream, StreamState())
        self.ws = ws
        await ws.send(
            json.dumps(
                {
                    "type": "welcome",
                    "session": f"s-{len(self.hellos)}",
                    "heartbeat_interval_s": self.heartbeat_interval_s,
                    "orphan_timeout_s": self.orphan_timeout_s,
                    "acked_seq": state.contiguous() or (None if not state.held else 0),
                }
            )
        )
        try:
            async for raw in ws:
                await self._receive(ws, state, raw)
        finally:
            self.close_codes.append(ws.close_code)
            if self.ws is ws:
                self.ws = None
            if self.forget_unacked_on_drop:
                state.held -= state.unacked
                state.unacked.clear()

    async def _receive(self, ws: ServerConnection, state: StreamState, raw: str | bytes) -> None:
        frame = json.loads(raw)
        if frame["type"] == "heartbeat":
            self.heartbeats.append((time.monotonic(), frame))
        if frame["type"] != "data":
            self.frames.append(frame)
            return
        seq = frame["seq"]
        state.arrivals.append(seq)
        if seq not in state.held:
            state.held.add(seq)
            self.items.extend(frame["items"])
        if self.auto_ack:
            await ws.send(json.dumps({"type": "ack", "seq": seq}))
        else:
            state.unacked.add(seq)

    async def ack_all(self) -> None:
        state = self.stream_state()
        if self.ws is not None and state.held:
            state.unacked.clear()
            await self.ws.send(json.dumps({"type": "ack", "seq": max(state.held)}))

    def stream_state(self) -> StreamState:
        assert self._stream is not None
        return self.streams[self._stream]

    async def send(self, obj: dict[str, Any] | bytes) -> None:
        assert self.ws is not None, "no worker connected"
        await self.ws.send(obj if isinstance(obj, bytes) else json.dumps(obj))

    def drop(self) -> None:
        """Cut the TCP connection without a close handshake (a network failure)."""
        assert self.ws is not None
        self.ws.transport.abort()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]

    def items_of(self, kind: str) -> list[dict[str, Any]]:
        return [i for i in self.items if i["kind"] == kind]

    async def wait_for(self, what: Callable[[], Any], timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = what()
            if value:
                return value
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")
