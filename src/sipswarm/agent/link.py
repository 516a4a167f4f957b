"""The worker's controller link: one outbound WebSocket, kept up for the process life.

Theory of operation
-------------------
:meth:`ControllerLink.run` iterates ``async for ws in connect(...)`` from the
websockets library (STYLE.md rule 15): the library opens the connection with
the ``sipswarm.v1`` subprotocol, the ``Authorization: Bearer`` header, its
keepalive ping (20 s, pong timeout 20 s), frames up to 16 MiB and
permessage-deflate, and retries failed attempts with the delays this module
gives it. One session per connection:

1. send ``hello`` (the handler builds it, with ``resume`` from the stream);
2. wait for ``welcome`` (``welcome_timeout_s``), then
   ``stream.connection_made(welcome.acked_seq)``: unacked frames are replayed;
3. run three tasks until the connection drops: the receiver (frames to the
   handler, ``ack`` to the stream), the data sender (``frames_to_send``
   whenever items arrive or an ack opens the window) and the heartbeat
   (every ``welcome.heartbeat_interval_s``, one at once);
4. ``stream.connection_lost()``, tell the handler, wait one backoff delay.

Backoff (PROTOCOL.md Faults): 1 s doubling to 30 s, each delay drawn
uniformly in [d/2, d] ("equal jitter"), reset by every ``welcome``. An HTTP
401 at the upgrade is retried no faster than ``unauthorized_retry_s`` (60 s)
and reported to the handler, which turns the worker's status to ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Generator
from typing import Any, Protocol

import structlog
from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
)
from websockets.typing import Subprotocol

from sipswarm import USER_AGENT
from sipswarm.agent.config import AgentConfig
from sipswarm.agent.datastream import DataStream
from sipswarm.protocol import (
    MAX_FRAME_BYTES,
    SUBPROTOCOL,
    Ack,
    ControllerFrame,
    ErrorFrame,
    Heartbeat,
    Hello,
    UnknownFrame,
    Welcome,
    dump_frame,
    load_json_object,
    parse_controller_frame,
)

log = structlog.get_logger("sipswarm.agent.link")
UNAUTHORIZED = frozenset({401, 403})


class LinkHandler(Protocol):
    """What the link needs from the supervisor."""

    def hello(self) -> Hello: ...
    def heartbeat(self) -> Heartbeat: ...
    async def handle_frame(self, frame: ControllerFrame) -> list[BaseModel]: ...
    def handle_binary(self, data: bytes) -> list[BaseModel]: ...
    def handle_text_received(self) -> list[BaseModel]: ...
    def session_started(self, welcome: Welcome) -> None: ...
    def session_ended(self) -> None: ...
    def connect_failed(self, status_code: int | None, detail: str) -> None: ...


class Backoff:
    """Jittered exponential delays: ``initial`` doubling to ``maximum``, each in [d/2, d]."""

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        self.initial, self.maximum, self._rng = initial, maximum, rng
        self._attempt = 0

    def next_delay(self) -> float:
        d = min(self.maximum, self.initial * (2 ** min(self._attempt, 32)))
        self._attempt += 1
        return self._rng.uniform(d / 2, d)

    def reset(self) -> None:
        self._attempt = 0


class ControllerLink:
    """Keeps the controller connection up. Next: ``await run()``; ``notify_data()`` on new items."""

    def __init__(
        self,
        config: AgentConfig,
        stream: DataStream,
        handler: LinkHandler,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.timings = config.timings
        self.stream = stream
        self.handler = handler
        self.backoff = Backoff(
            self.timings.backoff_initial_s, self.timings.backoff_max_s, rng or random.Random()
        )
        self.welcome: Welcome | None = None
        self.sessions = 0
        self.frames_received = 0
        self.frames_rejected = 0
        self._ws: ClientConnection | None = None
        self._data_ready = asyncio.Event()
        self._unauthorized = False
        self._closing = False
        self._logged_once: set[str] = set()

    @property
    def connected(self) -> bool:
        """True between ``welcome`` and the end of the session."""
        return self.welcome is not None and self._ws is not None

    def notify_data(self) -> None:
        """Items were appended to the stream: wake the sender."""
        self._data_ready.set()

    async def send(self, frame: BaseModel) -> bool:
        """Send one frame now if a session is up; False if not (it is not queued)."""
        ws = self._ws
        if ws is None or self.welcome is None:
            return False
        with contextlib.suppress(ConnectionClosed):
            await ws.send(dump_frame(frame))
            return True
        return False

    async def close(self) -> None:
        """Stop reconnecting and close the current connection normally (code 1000)."""
        self._closing = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(1000, "drained"), 5)

    async def run(self) -> None:
        """Connect, run sessions, reconnect, until :meth:`close`; cancel the task to abort."""
        connector = connect(
            self.config.controller_url,
            additional_headers={"Authorization": f"Bearer {self.config.token}"},
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            user_agent_header=USER_AGENT,
            compression="deflate",
            max_size=MAX_FRAME_BYTES,
            open_timeout=self.timings.open_timeout_s,
            ping_interval=self.timings.ping_interval_s,
            ping_timeout=self.timings.ping_timeout_s,
            close_timeout=5,
            process_exception=self._process_exception,
            reconnect_delays=self._reconnect_delays,
        )
        async for ws in connector:
            self._unauthorized = False
            await self._session(ws)
            if self._closing:
                return
            delay = self.backoff.next_delay()
            log.info("controller connection lost; reconnecting", in_s=round(delay, 2))
            await asyncio.sleep(delay)
            if self._closing:
                return

    # ------------------------------------------------------------------ connect faults

    def _process_exception(self, exc: Exception) -> Exception | None:
        """websockets asks whether a failed attempt is retried: always, unless it is a bug."""
        if not isinstance(exc, (OSError, TimeoutError, InvalidHandshake, InvalidMessage)):
            return exc
        status = exc.response.status_code if isinstance(exc, InvalidStatus) else None
        self._unauthorized = status in UNAUTHORIZED
        if self._unauthorized:
            detail = f"controller refused WORKER_TOKEN (HTTP {status}); check the token"
        else:
            detail = f"cannot connect to the controller: {type(exc).__name__}: {exc}"
        log.warning("controller connect failed", detail=detail)
        self.handler.connect_failed(status, detail)
        return None

    def _reconnect_delays(self) -> Generator[float]:
        while True:
            delay = self.backoff.next_delay()
            if self._unauthorized:  # PROTOCOL.md: a 401 is not retried faster than once a minute
                delay = max(delay, self.timings.unauthorized_retry_s)
            log.info("reconnecting to the controller", in_s=round(delay, 2))
            yield delay

    # ------------------------------------------------------------------ one session

    async def _session(self, ws: ClientConnection) -> None:
        if ws.subprotocol != SUBPROTOCOL:
            self.log_once("subprotocol", "controller did not select subprotocol sipswarm.v1")
        self._ws = ws
        try:
            await ws.send(dump_frame(self.handler.hello()))
            welcome = await asyncio.wait_for(
                self._await_welcome(ws), self.timings.welcome_timeout_s
            )
        except (ConnectionClosed, TimeoutError) as exc:
            log.warning("no welcome from the controller", error=type(exc).__name__)
            self._ws = None
            with contextlib.suppress(Exception):
                await ws.close(1002, "no welcome")
            return
        self.welcome = welcome
        self.sessions += 1
        self.backoff.reset()
        replay = self.stream.connection_made(welcome.acked_seq)
        log.info(
            "controller session started",
            session=welcome.session,
            acked_seq=welcome.acked_seq,
            replaying_frames=replay,
        )
        self.handler.session_started(welcome)
        self._data_ready.set()
        try:
            await self._run_tasks(ws, welcome)
        finally:
            self.stream.connection_lost()
            self.welcome = None
            self._ws = None
            self.handler.session_ended()
            log.info("controller session ended", code=ws.close_code, reason=ws.close_reason)

    async def _await_welcome(self, ws: ClientConnection) -> Welcome:
        while True:
            raw = await ws.recv()
            if isinstance(raw, bytes):
                continue
            frame, problems = parse_controller_frame(raw)
            if isinstance(frame, Welcome):
                return frame
            self.log_once(f"prewelcome:{getattr(frame, 'type', None)}", "frame before welcome")
            if frame is None:
                await self._reply(
                    ws, [ErrorFrame(in_reply_to="welcome", detail="; ".join(problems))]
                )

    async def _run_tasks(self, ws: ClientConnection, welcome: Welcome) -> None:
        tasks = [
            asyncio.create_task(self._receive_loop(ws)),
            asyncio.create_task(self._send_loop(ws)),
            asyncio.create_task(self._heartbeat_loop(ws, welcome.heartbeat_interval_s)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None and not isinstance(exc, ConnectionClosed):
                    log.error("controller session task failed", exc_info=exc)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await ws.close()

    async def _receive_loop(self, ws: ClientConnection) -> None:
        async for raw in ws:
            self.frames_received += 1
            if isinstance(raw, bytes):
                await self._reply(ws, self.handler.handle_binary(raw))
                continue
            await self._reply(ws, self.handler.handle_text_received())
            await self._reply(ws, await self._dispatch(raw))

    async def _dispatch(self, raw: str) -> list[BaseModel]:
        frame, notes = parse_controller_frame(raw)
        if frame is None:
            self.frames_rejected += 1
            kind = _peek_type(raw)
            log.warning("controller frame rejected", type=kind, problems=notes)
            return [ErrorFrame(in_reply_to=kind, detail="; ".join(notes))]
        for note in notes:  # PROTOCOL.md: unknown fields are ignored, logged once
            self.log_once(note, "unknown field ignored")
        if isinstance(frame, Ack):
            self.stream.receive_ack(frame.seq)
            self._data_ready.set()
            return []
        if isinstance(frame, UnknownFrame):
            self.log_once(f"type:{frame.type}", "unknown frame type ignored")
            return []
        if isinstance(frame, Welcome):
            self.log_once("rewelcome", "welcome within a session ignored")
            return []
        return await self.handler.handle_frame(frame)

    async def _send_loop(self, ws: ClientConnection) -> None:
        while True:
            await self._data_ready.wait()
            self._data_ready.clear()
            await asyncio.sleep(self.timings.batch_linger_s)  # let a burst fill one frame
            for _seq, text in self.stream.frames_to_send():
                await ws.send(text)

    async def _heartbeat_loop(self, ws: ClientConnection, interval: float) -> None:
        while True:
            await ws.send(dump_frame(self.handler.heartbeat()))
            await asyncio.sleep(interval)

    async def _reply(self, ws: ClientConnection, frames: list[BaseModel]) -> None:
        for frame in frames:
            await ws.send(dump_frame(frame))

    def log_once(self, key: str, message: str, **fields: Any) -> None:
        """Log a warning the first time ``key`` is seen (unknown types and fields, PROTOCOL.md)."""
        if key not in self._logged_once and len(self._logged_once) < 10_000:
            self._logged_once.add(key)
            log.warning(message, what=key, **fields)


def _peek_type(raw: str) -> str:
    obj, _ = load_json_object(raw)
    kind = obj.get("type") if obj is not None else None
    return kind if isinstance(kind, str) else "unknown"
