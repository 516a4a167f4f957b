"""A worker-side harness written from PROTOCOL.md, to drive the controller in tests.

It is a real websockets client: Bearer token and ``sipswarm.v1`` at the
upgrade, ``hello`` (with ``resume`` after the first data frame), ``welcome``
handling with replay of unacknowledged ``data`` frames, ``assign_result``
for every ``assign``, ``media`` text + binary frames, ``cancel``. What it
reports is scripted (``auto`` plays a successful registration / call per
endpoint); the real agent replaces it in end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection, connect


def now_ms() -> int:
    return int(time.time() * 1000)


class HarnessWorker:
    def __init__(
        self,
        url: str,
        token: str,
        worker_id: str = "w-1",
        max_endpoints: int = 100,
        script: str = "auto",
        refuse: dict[str, Any] | None = None,
    ) -> None:
        self.url, self.token, self.worker_id = url, token, worker_id
        self.max_endpoints = max_endpoints
        self.script = script
        self.refuse = refuse
        self.stream = str(uuid.uuid4())
        self.seq = 0
        self.unacked: dict[int, str] = {}
        self.acked = 0
        self.welcomes: list[dict[str, Any]] = []
        self.assigns: list[dict[str, Any]] = []
        self.cancels: list[dict[str, Any]] = []
        self.media: dict[str, bytes] = {}
        self.closed: set[str] = set()
        self.finished: set[str] = set()
        self.ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending_media: dict[str, Any] | None = None
        self.hold_acks = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        self.ws = await connect(
            self.url,
            additional_headers={"Authorization": f"Bearer {self.token}"},
            subprotocols=["sipswarm.v1"],  # type: ignore[list-item]
        )
        resume = {"stream": self.stream, "last_seq": self.seq} if self.seq else None
        await self.ws.send(
            json.dumps(
                {
                    "type": "hello",
                    "protocol": 1,
                    "worker_id": self.worker_id,
                    "name": f"harness-{self.worker_id}",
                    "version": "test",
                    "status": "ONLINE",
                    "capacity": {"max_endpoints": self.max_endpoints, "cpus": 2, "memory_mb": 1000},
                    "labels": {"test": "yes"},
                    "media": list(self.media),
                    "resume": resume,
                    "some_future_field": 1,
                }
            )
        )
        welcome = json.loads(await self.ws.recv())
        assert welcome["type"] == "welcome", welcome
        self.welcomes.append(welcome)
        acked = welcome["acked_seq"] or 0
        for seq in sorted(self.unacked):
            if seq <= acked:
                del self.unacked[seq]
            else:
                await self.ws.send(self.unacked[seq])
        await self.ws.send(
            json.dumps(
                {
                    "type": "heartbeat",
                    "ts": now_ms(),
                    "status": "ONLINE",
                    "active_endpoints": 0,
                    "free_endpoints": self.max_endpoints,
                    "cpu_percent": 1.0,
                    "memory_percent": 1.0,
                    "loop_lag_ms_p99": 0.5,
                }
            )
        )
        self._reader = asyncio.create_task(self._read(self.ws))

    async def disconnect(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self.ws = None

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            async for raw in ws:
                if isinstance(raw, bytes):
                    assert self._pending_media is not None
                    self.media[self._pending_media["sha256"]] = raw
                    self._pending_media = None
                    continue
                frame = json.loads(raw)
                handler = getattr(self, f"_on_{frame['type']}", None)
                if handler is not None:
                    await handler(frame)

    async def _on_ack(self, frame: dict[str, Any]) -> None:
        if self.hold_acks:
            return
        self.acked = max(self.acked, frame["seq"])
        for seq in [s for s in self.unacked if s <= frame["seq"]]:
            del self.unacked[seq]

    async def _on_media(self, frame: dict[str, Any]) -> None:
        self._pending_media = frame

    async def _on_assign(self, frame: dict[str, Any]) -> None:
        self.assigns.append(frame)
        result: dict[str, Any] = {
            "type": "assign_result",
            "assignment_id": frame["assignment_id"],
            "accepted": True,
        }
        if self.refuse is not None:
            result.update(self.refuse, accepted=False)
        await self._send(result)
        if self.refuse is None and self.script == "auto":
            task = asyncio.create_task(self._play(frame))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _on_cancel(self, frame: dict[str, Any]) -> None:
        self.cancels.append(frame)
        for assign in self.assigns:
            if assign["run_id"] != frame["run_id"]:
                continue
            items = []
            for ep in assign["endpoints"]:
                if ep["endpoint_id"] not in self.closed:
                    items += self._close(assign["run_id"], ep["endpoint_id"], "CANCELLED", None)
            await self.emit(items)
            await self._finish(assign)

    # -------------------------------------------------------------- scripted behaviour

    def _close(self, run_id: str, eid: str, outcome: str, code: int | None) -> list[dict]:
        self.closed.add(eid)
        ts = now_ms()
        return [
            {"kind": "phase", "run_id": run_id, "endpoint_id": eid, "ts": ts, "phase": "CLOSED"},
            {
                "kind": "outcome",
                "run_id": run_id,
                "endpoint_id": eid,
                "ts": ts,
                "outcome": outcome,
                "final_code": code,
                "reason": None,
            },
        ]

    async def _finish(self, assign: dict[str, Any]) -> None:
        if assign["assignment_id"] in self.finished:
            return
        self.finished.add(assign["assignment_id"])
        await self.emit(
            [
                {
                    "kind": "finished",
                    "run_id": assign["run_id"],
                    "assignment_id": assign["assignment_id"],
                    "ts": now_ms(),
                    "endpoints": len(assign["endpoints"]),
                    "outcomes": {},
                }
            ]
        )

    async def _play(self, assign: dict[str, Any]) -> None:
        run_id = assign["run_id"]
        for i, ep in enumerate(assign["endpoints"]):
            eid, ts = ep["endpoint_id"], now_ms()
            if ep["role"] == "receiver":
                contact = f"sip:{ep['account']['username']}@127.0.0.1:{40000 + i}"
                await self.emit(
                    [
                        {
                            "kind": "phase",
                            "run_id": run_id,
                            "endpoint_id": eid,
                            "ts": ts,
                            "phase": "INITIALIZING",
                        },
                        {
                            "kind": "phase",
                            "run_id": run_id,
                            "endpoint_id": eid,
                            "ts": ts,
                            "phase": "REGISTERED",
                            "contact": contact,
                        },
                    ]
                )
                continue
            items = [
                {"kind": "phase", "run_id": run_id, "endpoint_id": eid, "ts": ts, "phase": p}
                for p in ("CALLING", "RINGING", "INCALL")
            ]
            items.append(
                {
                    "kind": "metrics",
                    "run_id": run_id,
                    "ts": ts,
                    "endpoints": [
                        {
                            "endpoint_id": eid,
                            "phase": "INCALL",
                            "send": {"packets_sent": 50},
                            "recv": {
                                "packets_received": 50,
                                "packets_lost": 0,
                                "jitter_ms": 1.5,
                                "mos": 4.3,
                            },
                        }
                    ],
                }
            )
            items.append(
                {
                    "kind": "call",
                    "run_id": run_id,
                    "endpoint_id": eid,
                    "direction": "out",
                    "final_code": 200,
                    "result": "answered",
                    "invite_ts": ts,
                    "pdd_ms": 100.0 + i,
                    "setup_ms": 120.0 + i,
                }
            )
            items += self._close(run_id, eid, "SUCCESS", 200)
            await self.emit(items)
        if all(ep["role"] == "caller" for ep in assign["endpoints"]):
            await self._finish(assign)

    # -------------------------------------------------------------- data stream

    async def _send(self, obj: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(obj))

    async def emit(self, items: list[dict[str, Any]]) -> int:
        """Seal ``items`` into the next data frame and send it (kept until acked)."""
        self.seq += 1
        text = json.dumps({"type": "data", "seq": self.seq, "items": items})
        self.unacked[self.seq] = text
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.send(text)
        return self.seq
