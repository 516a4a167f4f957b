"""The engine shard process: one event loop, one in-process backend, a pipe to the agent.

Theory of operation
-------------------
``sipswarm agent`` runs one supervisor process and one of these per core
(ARCHITECTURE.md "Processes": the GIL makes separate processes the only way
to use more than one core). The supervisor starts a shard as
``python -m sipswarm.agent.shard_process FACTORY INDEX`` with pipes on stdin
and stdout and talks to it in length-prefixed pickle frames
(:func:`write_frame` / :func:`read_frame`):

=====================  ===========================================================
supervisor → shard     ``("config", AgentConfig)`` first, then ``("start", spec)``,
                       ``("cancel", run_id, reason)``, ``("close",)``
shard → supervisor     ``("ready", status)``, ``("items", [item, ...])`` batched every
                       :data:`FLUSH_INTERVAL_S`, ``("status", {...})`` every
                       :data:`STATUS_INTERVAL_S`, ``("started", assignment_id,
                       error | None)``, ``("cancelled", run_id)``, ``("closed",)``
=====================  ===========================================================

Both ends use asyncio pipes, so neither blocks its loop on the other. The
channel is private to the agent and its children (pickle is safe here: no
other party writes to it). Logs go to stderr; stdout carries frames only.
"""

from __future__ import annotations

import asyncio
import copyreg
import dataclasses
import gc
import importlib
import io
import os
import pickle
import struct
import sys
from collections.abc import Callable
from operator import attrgetter, methodcaller
from typing import Any

import uvloop

from sipswarm.agent.backend import Backend, BackendFactory
from sipswarm.agent.config import AgentConfig
from sipswarm.errors import SipswarmError

FLUSH_INTERVAL_S = 0.02
STATUS_INTERVAL_S = 0.25
_LEN = struct.Struct("!I")
MAX_FRAME = 256 * 1024 * 1024

Frame = tuple[Any, ...]


Reducer = Callable[[Any], Any]  # obj -> a pickle reduce value (tuple or global name)
_DEFAULT_REDUCE: Reducer = methodcaller("__reduce_ex__", pickle.HIGHEST_PROTOCOL)


def _by_value(cls: type) -> Reducer | None:
    """``obj -> (cls, values)`` for a dataclass that ``cls(*values)`` rebuilds exactly:
    ``slots=True`` (so no attribute outside its fields), no base class, every field
    taken by ``__init__`` positionally, no ``__post_init__``, no pickling rule of
    its own."""
    if not dataclasses.is_dataclass(cls) or cls.__bases__ != (object,):
        return None
    names = tuple(f.name for f in dataclasses.fields(cls))
    getstate = getattr(cls.__dict__.get("__getstate__"), "__name__", None)
    if (
        not names
        or tuple(cls.__dict__.get("__slots__", ())) != names
        or len(cls.__dataclass_fields__) != len(names)  # an InitVar or ClassVar pseudo-field
        or any(not f.init or f.kw_only for f in dataclasses.fields(cls))
        or hasattr(cls, "__post_init__")
        or "__reduce__" in cls.__dict__
        or "__reduce_ex__" in cls.__dict__
        or getstate != "_dataclass_getstate"
    ):
        return None
    values = attrgetter(*names)
    if len(names) == 1:
        return lambda obj: (cls, (values(obj),))
    return lambda obj: (cls, values(obj))


class _Reducers(dict[type, Reducer]):
    """The frames' pickler ``dispatch_table``: slotted dataclasses by value, the rest as usual.

    Why: a ``slots=True`` dataclass pickles through ``dataclasses._dataclass_getstate``
    and unpickles through ``_dataclass_setstate``, each walking ``fields()`` per
    object. A ``start`` frame holds six of them per endpoint (EndpointSpec and its
    account, registrar, call, media, source): ~21 µs per endpoint to pickle and
    ~40 µs to unpickle, once per call in a caller run (bench/item_pipe.py). As
    ``(cls, values)`` one C ``attrgetter`` reads the values and the class's own
    ``__init__`` rebuilds the object, called from C.

    A pickler with its own table does not consult ``copyreg.dispatch_table``, so a
    type without a by-value rule gets the copyreg entry or, as pickle would do
    without a table, its ``__reduce_ex__`` (cached per type). Classes of a
    metaclass other than ``type`` are left to pickle (it saves classes by name).
    """

    def __missing__(self, cls: type) -> Reducer:
        if issubclass(cls, type):
            raise KeyError(cls)
        reducer = copyreg.dispatch_table.get(cls) or _by_value(cls) or _DEFAULT_REDUCE
        self[cls] = reducer
        return reducer


_REDUCERS = _Reducers()


def encode_frame(frame: Frame) -> bytes:
    """One length-prefixed pickle frame (slotted dataclasses by value, see :class:`_Reducers`)."""
    buffer = io.BytesIO()
    buffer.write(bytes(_LEN.size))
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _REDUCERS
    pickler.dump(frame)
    view = buffer.getbuffer()
    _LEN.pack_into(view, 0, len(view) - _LEN.size)
    view.release()
    return buffer.getvalue()


async def read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """The next frame, or None at end of stream."""
    try:
        head = await reader.readexactly(_LEN.size)
        (size,) = _LEN.unpack(head)
        if size > MAX_FRAME:
            raise SipswarmError(f"shard frame of {size} bytes exceeds {MAX_FRAME}")
        frame: Frame = pickle.loads(await reader.readexactly(size))
        return frame
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def tune_gc() -> None:
    """Collect less often in an engine process (and in their supervisor, see
    :meth:`~sipswarm.agent.shards.ShardedBackend.start`).

    A load generator allocates many small, short-lived objects per SIP message
    and keeps a large, stable heap (endpoints, stacks, sessions): with the
    default thresholds full collections of that heap took 20-35 % of the CPU of
    the SIP core benchmark (docs/benchmarks.md, "SIP core"). Freeze what start-up
    built and raise the generation-0 threshold.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def load_factory(path: str) -> BackendFactory:
    """Import ``package.module:function``, a :data:`BackendFactory`."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise SipswarmError(f"backend factory must be 'module:function', got {path!r}")
    factory: BackendFactory = getattr(importlib.import_module(module_name), attr)
    return factory


class ShardRunner:
    """The shard's side of the pipe: commands in, batched items and status out."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._items: list[dict[str, Any]] = []
        self.backend: Backend | None = None

    def emit(self, item: dict[str, Any]) -> None:
        """The backend's sink: buffered, flushed every FLUSH_INTERVAL_S."""
        self._items.append(item)

    def send(self, frame: Frame) -> None:
        """Queue one frame to the supervisor (asyncio pipe: never blocks)."""
        self._writer.write(encode_frame(frame))

    def flush(self) -> None:
        """Send buffered items, if any."""
        if self._items:
            items, self._items = self._items, []
            self.send(("items", items))

    def status(self) -> dict[str, Any]:
        """What the supervisor's synchronous Backend methods answer from."""
        backend = self.backend
        if backend is None:
            return {"free": 0, "active": 0, "phases": {}, "counters": {}, "problem": None}
        return {
            "problem": backend.problem(),
            "free": backend.free_endpoints(),
            "active": backend.active_endpoints(),
            "phases": backend.phase_counts(),
            "counters": backend.counters(),
        }

    async def pump(self) -> None:
        """Flush items and status periodically until cancelled."""
        next_status = 0.0
        loop = asyncio.get_running_loop()
        while True:
            self.flush()
            now = loop.time()
            if now >= next_status:
                self.send(("status", self.status()))
                next_status = now + STATUS_INTERVAL_S
            await self._writer.drain()
            await asyncio.sleep(FLUSH_INTERVAL_S)

    async def start(self, spec: Any) -> None:
        """Start an assignment part; report success or the error text."""
        assert self.backend is not None
        try:
            await self.backend.start_assignment(spec)
        except SipswarmError as exc:
            self.send(("started", spec.assignment_id, str(exc)))
            return
        self.send(("started", spec.assignment_id, None))

    async def cancel(self, run_id: str, reason: str) -> None:
        """Cancel a run, flush its items, then confirm."""
        assert self.backend is not None
        await self.backend.cancel_run(run_id, reason)
        self.flush()
        self.send(("cancelled", run_id))


async def _serve(factory_path: str) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
    )
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(1, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    runner = ShardRunner(writer)
    first = await read_frame(reader)
    if first is None or first[0] != "config":
        return 2
    config: AgentConfig = first[1]
    runner.backend = load_factory(factory_path)(config, runner.emit)
    tune_gc()
    runner.send(("ready", runner.status()))
    pump = asyncio.create_task(runner.pump())
    tasks: set[asyncio.Task[None]] = set()
    try:
        while (frame := await read_frame(reader)) is not None and frame[0] != "close":
            if frame[0] == "start":
                task = asyncio.create_task(runner.start(frame[1]))
            elif frame[0] == "cancel":
                task = asyncio.create_task(runner.cancel(frame[1], frame[2]))
            else:
                continue
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        await runner.backend.close()
        pump.cancel()
        runner.flush()
        runner.send(("closed",))
        await writer.drain()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of a shard process: ``FACTORY INDEX`` on the command line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m sipswarm.agent.shard_process FACTORY INDEX", file=sys.stderr)
        return 2
    return uvloop.run(_serve(args[0]))


if __name__ == "__main__":
    sys.exit(main())
