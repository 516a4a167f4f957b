"""The worker side of the controller: one WebSocket per worker at ``/v1/worker``.

Theory of operation (PROTOCOL.md, Connection and Messages):

- :meth:`WorkerHub.process_request` runs before the upgrade: a wrong path is
  404, a missing or unknown Bearer token 401, a missing ``sipswarm.v1``
  subprotocol 400 -- all before any WebSocket exists.
- :meth:`WorkerHub.handler` waits for ``hello``, answers ``welcome`` with the
  ``acked_seq`` storage holds for ``resume.stream``, then handles frames by
  type from a dict: ``heartbeat``, ``assign_result``, ``data`` (parse items,
  store them in one transaction, only then ``ack``), ``error``. Unknown
  types and fields are logged once per worker, never fatal.
- A fresh worker process (``resume: null``) has not named its stream yet;
  its frames are kept under a provisional key that the next ``hello`` of the
  same worker adopts (:meth:`Storage.adopt_stream`), so a replay after the
  first reconnect is still stored once.
- :meth:`WorkerHub.check_heartbeats` marks a worker OFFLINE after
  :data:`HEARTBEAT_TIMEOUT_S` without a heartbeat and closes its socket.

Everything a run needs to know goes to a :class:`HubListener` (the run
manager). Send with :meth:`WorkerHub.send`, :meth:`WorkerHub.push_media`.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from sipswarm.controller.storage import Storage
from sipswarm.errors import ConfigError
from sipswarm.protocol import (
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    Ack,
    AssignResult,
    DataFrame,
    ErrorFrame,
    Heartbeat,
    Hello,
    Item,
    MediaAnnounce,
    UnknownFrame,
    Welcome,
    WorkerStatus,
    dump_frame,
    parse_item,
    parse_worker_frame,
)

log = logging.getLogger("sipswarm.controller.hub")

WORKER_PATH = "/v1/worker"
HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TIMEOUT_S = 60.0
ORPHAN_TIMEOUT_S = 120.0
HELLO_TIMEOUT_S = 10.0


def now_ms() -> int:
    """Wall clock, Unix epoch milliseconds (PROTOCOL.md ``ts``)."""
    return int(time.time() * 1000)


def load_tokens(path: str | Path) -> set[str]:
    """Worker tokens, one per line; blank lines and ``#`` comments are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"--tokens {path}: cannot read ({exc.strerror})") from exc
    tokens = {ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}
    if not tokens:
        raise ConfigError(f"--tokens {path}: no token in the file; write one token per line")
    return tokens


class HubListener(Protocol):
    """What the hub tells the run manager."""

    async def worker_up(self, worker: WorkerSession) -> None: ...
    def worker_down(self, worker: WorkerSession) -> None: ...
    async def assign_result(self, worker: WorkerSession, result: AssignResult) -> None: ...
    async def items_stored(self, worker: WorkerSession, items: list[Item]) -> None: ...


@dataclass
class WorkerSession:
    """One worker as the controller sees it; survives reconnects (keyed by worker_id)."""

    worker_id: str
    hello: Hello
    session: str
    ws: ServerConnection | None = None
    status: str = WorkerStatus.ONLINE.value
    stream: str = ""
    connected_ms: int = 0
    last_heartbeat_ms: int = 0
    disconnected_ms: int | None = None
    heartbeat: Heartbeat | None = None
    media: set[str] = field(default_factory=set)
    outstanding: dict[str, int] = field(default_factory=dict)  # assignment_id -> endpoints
    dropped_items: int = 0
    warned: set[str] = field(default_factory=set)

    @property
    def connected(self) -> bool:
        return self.ws is not None

    @property
    def free(self) -> int:
        """Endpoints this controller may still assign to the worker."""
        if not self.connected or self.status != WorkerStatus.ONLINE.value:
            return 0
        free = self.hello.capacity.max_endpoints - sum(self.outstanding.values())
        if self.heartbeat is not None:
            # a worker still starting its engine shards reports fewer free than its capacity
            free = min(free, self.heartbeat.free_endpoints)
        return max(0, free)

    def as_dict(self) -> dict[str, Any]:
        hb = self.heartbeat
        return {
            "worker_id": self.worker_id,
            "name": self.hello.name,
            "version": self.hello.version,
            "status": self.status,
            "labels": self.hello.labels,
            "capacity": self.hello.capacity.model_dump(),
            "free_endpoints": self.free,
            "assigned_endpoints": sum(self.outstanding.values()),
            "active_endpoints": hb.active_endpoints if hb else None,
            "cpu_percent": hb.cpu_percent if hb else None,
            "loop_lag_ms_p99": hb.loop_lag_ms_p99 if hb else None,
            "last_heartbeat_ms": self.last_heartbeat_ms,
            "dropped_items": self.dropped_items,
        }


class WorkerHub:
    """Accepts workers, keeps their sessions, moves frames; see the module docstring."""

    def __init__(self, storage: Storage, tokens: Iterable[str], listener: HubListener) -> None:
        self.storage = storage
        self._tokens = [t.encode() for t in tokens]
        self.listener = listener
        self.workers: dict[str, WorkerSession] = {}
        self._sessions = itertools.count(1)
        self._tasks: set[asyncio.Future[None]] = set()
        self._frame_handlers: dict[type[Any], Callable[[WorkerSession, Any], Awaitable[None]]] = {
            Heartbeat: self._heartbeat,
            AssignResult: self._assign_result,
            DataFrame: self._data,
            ErrorFrame: self._error,
            UnknownFrame: self._unknown,
            Hello: self._late_hello,
        }

    # ------------------------------------------------------------------ upgrade

    def _token_ok(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        given = header[len("Bearer ") :].strip().encode()
        # compare against every token so that timing does not tell which one matched
        return any([hmac.compare_digest(given, t) for t in self._tokens])

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """Reject before the upgrade: 404 wrong path, 401 bad token, 400 no subprotocol."""
        if request.path.split("?")[0] != WORKER_PATH:
            return conn.respond(HTTPStatus.NOT_FOUND, f"workers connect to {WORKER_PATH}\n")
        if not self._token_ok(request.headers.get("Authorization")):
            return conn.respond(HTTPStatus.UNAUTHORIZED, "missing or unknown Bearer token\n")
        offered = ",".join(request.headers.get_all("Sec-WebSocket-Protocol"))
        if SUBPROTOCOL not in [p.strip() for p in offered.split(",")]:
            return conn.respond(HTTPStatus.BAD_REQUEST, f"subprotocol {SUBPROTOCOL} required\n")
        return None

    # ------------------------------------------------------------------ connection

    async def handler(self, ws: ServerConnection) -> None:
        """One worker connection: hello, welcome, then frames until it closes."""
        worker = await self._greet(ws)
        if worker is None:
            return
        try:
            async for raw in ws:
                await self._frame(worker, raw)
        except ConnectionClosed:
            pass
        finally:
            if worker.ws is ws:
                worker.ws = None
                worker.disconnected_ms = now_ms()
                worker.status = WorkerStatus.OFFLINE.value
                self.storage.set_worker_status(worker.worker_id, worker.status, now_ms())
                self.listener.worker_down(worker)

    async def _greet(self, ws: ServerConnection) -> WorkerSession | None:
        try:
            raw = await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT_S)
        except (TimeoutError, ConnectionClosed):
            await ws.close(1008, "hello expected")
            return None
        frame, problems = parse_worker_frame(raw)
        if not isinstance(frame, Hello):
            detail = "; ".join(problems) or "the first frame must be hello"
            await self._send_raw(ws, dump_frame(ErrorFrame(in_reply_to="hello", detail=detail)))
            await ws.close(1008, "hello expected")
            return None
        if frame.protocol != PROTOCOL_VERSION:
            detail = f"protocol {frame.protocol} is not supported; this controller speaks 1"
            await self._send_raw(ws, dump_frame(ErrorFrame(in_reply_to="hello", detail=detail)))
            await ws.close(1008, "unsupported protocol version")
            return None
        return await self._welcome(ws, frame)

    async def _welcome(self, ws: ServerConnection, hello: Hello) -> WorkerSession:
        ts = now_ms()
        old = self.workers.get(hello.worker_id)
        if old is not None and old.ws is not None and old.ws is not ws:
            # the same worker dialled again: the newest connection wins
            await old.ws.close(1000, "replaced by a newer connection")
        worker = old or WorkerSession(hello.worker_id, hello, "")
        worker.hello, worker.ws, worker.session = hello, ws, f"s-{next(self._sessions)}"
        worker.status, worker.connected_ms, worker.last_heartbeat_ms = hello.status, ts, ts
        worker.disconnected_ms = None
        worker.media = set(hello.media)
        if hello.resume is not None:
            worker.stream = hello.resume.stream
            self.storage.adopt_stream(hello.worker_id, hello.resume.stream)
        else:
            worker.stream = f"fresh:{hello.worker_id}:{worker.session}:{ts}"
        self.workers[hello.worker_id] = worker
        self.storage.upsert_worker(hello.worker_id, hello.model_dump(mode="json"), ts)
        welcome = Welcome(
            session=worker.session,
            heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
            orphan_timeout_s=ORPHAN_TIMEOUT_S,
            acked_seq=self.storage.acked_seq(worker.stream),
        )
        await self._send_raw(ws, dump_frame(welcome))
        log.info(
            "worker %s (%s) connected, session %s", worker.worker_id, hello.name, worker.session
        )
        await self.listener.worker_up(worker)
        return worker

    async def _frame(self, worker: WorkerSession, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            self._warn_once(worker, "binary", "binary frame from a worker ignored")
            return
        frame, notes = parse_worker_frame(raw)
        for note in notes:
            self._warn_once(worker, note, note)
        if frame is None:
            await self.send(worker.worker_id, ErrorFrame(in_reply_to="?", detail="; ".join(notes)))
            return
        await self._frame_handlers[type(frame)](worker, frame)

    # ------------------------------------------------------------------ frame handlers

    async def _heartbeat(self, worker: WorkerSession, hb: Heartbeat) -> None:
        worker.heartbeat, worker.status = hb, hb.status
        worker.last_heartbeat_ms = now_ms()
        self.storage.set_worker_status(
            worker.worker_id, hb.status, worker.last_heartbeat_ms, hb.model_dump(mode="json")
        )

    async def _assign_result(self, worker: WorkerSession, result: AssignResult) -> None:
        await self.listener.assign_result(worker, result)

    async def _data(self, worker: WorkerSession, frame: DataFrame) -> None:
        items: list[Item] = []
        for obj in frame.items:
            item, problems = parse_item(obj)
            if item is None:
                worker.dropped_items += 1
                self._warn_once(worker, problems[0][:40], "; ".join(problems))
            else:
                items.append(item)
        fresh = self.storage.store_data(worker.stream, worker.worker_id, frame.seq, items)
        await self.send(worker.worker_id, Ack(seq=frame.seq))  # PROTOCOL.md: store, then ack
        if fresh:
            await self.listener.items_stored(worker, items)

    async def _error(self, worker: WorkerSession, frame: ErrorFrame) -> None:
        log.warning(
            "worker %s could not accept %s: %s", worker.worker_id, frame.in_reply_to, frame.detail
        )

    async def _unknown(self, worker: WorkerSession, frame: UnknownFrame) -> None:
        self._warn_once(worker, f"type:{frame.type}", f"unknown frame type {frame.type!r} ignored")

    async def _late_hello(self, worker: WorkerSession, frame: Hello) -> None:
        self._warn_once(worker, "hello", "hello on an established connection ignored")

    def _warn_once(self, worker: WorkerSession, key: str, message: str) -> None:
        if key not in worker.warned:
            worker.warned.add(key)
            log.warning("worker %s: %s", worker.worker_id, message)

    # ------------------------------------------------------------------ sending

    @staticmethod
    async def _send_raw(ws: ServerConnection, data: str | bytes) -> bool:
        try:
            await ws.send(data)
        except ConnectionClosed:
            return False
        return True

    async def send(self, worker_id: str, frame: BaseModel | dict[str, Any]) -> bool:
        """Send one frame (a protocol model, or a JSON object); False if not connected."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.ws is None:
            return False
        if isinstance(frame, BaseModel):
            text = dump_frame(frame)
        else:
            text = json.dumps(frame, separators=(",", ":"))
        return await self._send_raw(worker.ws, text)

    async def push_media(self, worker_id: str, sha256: str, name: str, data: bytes) -> bool:
        """PROTOCOL.md ``media``: a text frame, then exactly one binary frame with the file."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.ws is None:
            return False
        if sha256 in worker.media:
            return True
        announce = MediaAnnounce(sha256=sha256, name=name, size=len(data))
        if not await self._send_raw(worker.ws, dump_frame(announce)):
            return False
        if not await self._send_raw(worker.ws, data):
            return False
        worker.media.add(sha256)
        return True

    async def drain(self, worker_id: str) -> bool:
        """Ask a worker to finish its runs and disconnect (PROTOCOL.md ``drain``)."""
        return await self.send(worker_id, {"type": "drain"})

    def check_heartbeats(self, now: int) -> list[WorkerSession]:
        """Workers silent for :data:`HEARTBEAT_TIMEOUT_S`: marked OFFLINE, socket closed."""
        silent = []
        limit = int(HEARTBEAT_TIMEOUT_S * 1000)
        for worker in self.workers.values():
            if worker.ws is not None and now - worker.last_heartbeat_ms > limit:
                silent.append(worker)
                worker.status = WorkerStatus.OFFLINE.value
                task = asyncio.ensure_future(worker.ws.close(1011, "no heartbeat for 60 s"))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return silent
