"""The shard -> supervisor item pipe, stage by stage, in µs of CPU per call.

    python bench/item_pipe.py [--rate 400] [--shards 2] [--seconds 10] [--repeat 3]

No sockets and no SIP: the items a caller shard emits for a run at ``--rate``
calls/s (as in ``bench/call_rate.py``: one caller endpoint per call, 8
``phase`` items, one ``call``, one ``outcome``; plus one ``metrics`` item per
shard per second listing its active endpoints) are pushed through the real
code of each stage, and each stage's process CPU time is divided by the calls:

* ``start frame, supervisor``: the ``("start", part)`` frame the supervisor
  pickles for a shard (``encode_frame``), one EndpointSpec per call;
* ``start frame, shard``: the shard unpickling it (``pickle.loads``);
* ``shard emit + encode``: ``ShardRunner.emit`` per item, ``ShardRunner.flush``
  (one ``items`` frame per :data:`FLUSH_INTERVAL_S` batch) into a pipe buffer;
* ``supervisor read + merge``: ``read_frame`` from an asyncio StreamReader,
  ``ShardedBackend._on_items`` (metrics merged across shards) into the sink;
* ``data stream``: what the production sink does with every item
  (``Supervisor.emit``: ``DataStream.append``, JSON), frames sealed every
  ``batch_linger_s`` of item time (``frames_to_send``) and acked;
* ``websocket deflate``: the sealed frames compressed as the link's
  ``compression="deflate"`` does (websockets' permessage-deflate client
  defaults: 12-bit window, memLevel 5, context takeover), zlib alone, no framing.

Figures are process CPU (``time.process_time``), best of ``--repeat``; the
machine is shared, so say what ``uptime`` said next to any figure you quote.
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sipswarm.agent.assignment import AssignmentSpec, validate_assignment
from sipswarm.agent.config import AgentConfig
from sipswarm.agent.datastream import DataStream
from sipswarm.agent.shard_process import (
    FLUSH_INTERVAL_S,
    ShardRunner,
    encode_frame,
    read_frame,
)
from sipswarm.agent.shards import ShardedBackend, split_assignment

PHASES = (
    "INITIALIZING",
    "REGISTERED",
    "CALLING",
    "RINGING",
    "NEGOTIATING",
    "INCALL",
    "DISCONNECTING",
    "CLOSED",
)
HOLD_S = 0.1
LINGER_S = 0.05  # AgentTimings.batch_linger_s: the link seals a frame per linger


def caller_raw(run_id: str, n: int) -> dict[str, Any]:
    """The caller endpoint of bench/call_rate.py (harness.caller, signalling only)."""
    user = str(1000 + n % 500)
    return {
        "endpoint_id": f"{run_id}/{n}",
        "group": "callers",
        "role": "caller",
        "start_offset_ms": n % 1000,
        "account": {"username": user, "password": f"pw{user}"},
        "registrar": {
            "domain": "127.0.0.1",
            "host": "127.0.0.1",
            "port": 5060,
            "transport": "udp",
            "register": False,
        },
        "call": {"target": "sip:1500@127.0.0.1:5060", "duration_s": HOLD_S, "ring_timeout_s": 10},
        "media": {"codecs": ["PCMU"], "ptime_ms": 20, "source": {"kind": "silence"}, "rtp": False},
    }


def assignment(run_id: str, first: int, count: int) -> AssignmentSpec:
    raw = {
        "type": "assign",
        "assignment_id": f"{run_id}-a{first}",
        "run_id": run_id,
        "start_at": None,
        "settings": {"trace": "none", "metrics_interval_ms": 1000},
        "endpoints": [caller_raw(run_id, first + i) for i in range(count)],
    }
    spec, problems = validate_assignment(raw, ())
    assert spec is not None, problems
    return spec


def call_items(run_id: str, n: int, t0_ms: int) -> list[dict[str, Any]]:
    """One call's items, built the way Endpoint._item and call_item build them."""
    eid = f"{run_id}/{n}"
    out: list[dict[str, Any]] = []
    for i, phase in enumerate(PHASES):
        item: dict[str, Any] = {"kind": "phase", "run_id": run_id}
        item.update(endpoint_id=eid, ts=t0_ms + 20 * i)
        item.update(phase=phase)
        if phase == "REGISTERED":
            item["contact"] = f"sip:{1000 + n % 500}@127.0.0.1:40112"
        out.append(item)
    out.insert(
        -1,
        {
            "kind": "call",
            "run_id": run_id,
            "endpoint_id": eid,
            "direction": "out",
            "final_code": 200,
            "result": "answered",
            "invite_ts": t0_ms + 20,
            "ringing_ts": t0_ms + 40,
            "answer_ts": t0_ms + 60,
            "first_rtp_ts": None,
            "bye_ts": t0_ms + 160,
            "pdd_ms": 20,
            "ttr_ms": 20,
            "setup_ms": 40,
            "ttfm_ms": None,
            "duration_ms": 100,
        },
    )
    closed = {"kind": "outcome", "run_id": run_id}
    closed.update(endpoint_id=eid, ts=t0_ms + 160)
    closed.update(outcome="SUCCESS", final_code=200, reason=None)
    out.append(closed)
    return out


def metrics_item(run_id: str, ts: int, active: range) -> dict[str, Any]:
    endpoints = [{"endpoint_id": f"{run_id}/{n}", "phase": "INCALL"} for n in active]
    generator = {
        "loop_lag_ms_p99": 1.2,
        "send_lateness_ms_p99": None,
        "skipped_ticks": 0,
        "overloaded": False,
    }
    return {"kind": "metrics", "run_id": run_id, "ts": ts, "endpoints": endpoints, **generator}


class PipeWriter:
    """Stands in for the shard's asyncio StreamWriter: keeps what is written."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


def cpu(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best process CPU seconds of ``repeat`` runs of ``fn``, and its last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.process_time()
        result = fn()
        best = min(best, time.process_time() - start)
    return best, result


def shard_batches(rate: int, shards: int, seconds: int, run_id: str) -> list[list[dict[str, Any]]]:
    """One shard's items in FLUSH_INTERVAL_S batches, in time order."""
    per_batch = rate / shards * FLUSH_INTERVAL_S
    batches: list[list[dict[str, Any]]] = []
    t0, n, due = 1_700_000_000_000, 0, 0.0
    active_per_s = max(1, int(rate / shards * (HOLD_S + 0.05)))
    for b in range(int(seconds / FLUSH_INTERVAL_S)):
        due += per_batch
        batch: list[dict[str, Any]] = []
        while n < due:
            batch.extend(call_items(run_id, n * shards, t0 + b * 20))
            n += 1
        if b % int(1 / FLUSH_INTERVAL_S) == 0:
            batch.append(metrics_item(run_id, t0 + b * 20, range(n, n + active_per_s)))
        batches.append(batch)
    return batches


def run(rate: int, shards: int, seconds: int, repeat: int) -> list[tuple[str, float]]:
    run_id = f"rate{rate}-1500-{time.monotonic_ns()}"
    calls_per_shard = rate * seconds // shards
    batches = shard_batches(rate, shards, seconds, run_id)
    items_per_shard = sum(len(b) for b in batches)
    rows: list[tuple[str, float]] = []

    # start frames: one per second per shard, its part of that second's assignment
    parts = [
        split_assignment(assignment(run_id, k * rate, rate), [10**6] * shards)[0]
        for k in range(seconds)
    ]
    t, frames = cpu(lambda: [encode_frame(("start", p)) for p in parts], repeat)
    rows.append(("start frame, supervisor (encode_frame)", t / calls_per_shard))
    t, _ = cpu(lambda: [pickle.loads(f[4:]) for f in frames], repeat)
    rows.append(("start frame, shard (pickle.loads)", t / calls_per_shard))

    def shard_side() -> list[bytes]:
        runner = ShardRunner(PipeWriter())  # type: ignore[arg-type]
        for batch in batches:
            for item in batch:
                runner.emit(item)
            runner.flush()
        return runner._writer.chunks  # type: ignore[attr-defined,no-any-return]

    t, chunks = cpu(shard_side, repeat)
    rows.append(("shard emit + encode (per batch)", t / calls_per_shard))
    pipe = b"".join(chunks)

    config = AgentConfig(
        controller_url="ws://127.0.0.1:1/v1/worker",
        token="bench",
        name="bench",
        worker_id="bench",
        state_dir=Path("/tmp/sipswarm-bench-state"),
    )
    sink: list[dict[str, Any]] = []

    def supervisor_side() -> int:
        sink.clear()

        async def read_all() -> int:
            backend = ShardedBackend(config, sink.append, "unused:factory", shards)
            reader = asyncio.StreamReader(limit=2**20)
            reader.feed_data(pipe)
            reader.feed_eof()
            shard = backend._shards[0]
            frames = 0
            while (frame := await read_frame(reader)) is not None:
                backend._on_items(shard, frame)
                frames += 1
            backend._metrics.flush(0.0, force=True)
            return frames

        return asyncio.run(read_all())

    t, _ = cpu(supervisor_side, repeat)
    rows.append(("supervisor read + merge (read_frame, _on_items)", t / calls_per_shard))
    merged = list(sink)

    def data_stream() -> list[str]:
        stream = DataStream("bench")
        stream.connection_made(None)
        sealed: list[str] = []
        per_linger = max(1, int(len(merged) / (seconds / LINGER_S)))
        for i, item in enumerate(merged, 1):
            stream.append(item)
            if i % per_linger == 0:
                for seq, text in stream.frames_to_send():
                    stream.receive_ack(seq)
                    sealed.append(text)
        for seq, text in stream.frames_to_send():
            stream.receive_ack(seq)
            sealed.append(text)
        return sealed

    t, texts = cpu(data_stream, repeat)
    rows.append(("data stream (append JSON, seal, ack)", t / calls_per_shard))

    def deflate() -> int:
        compressor = zlib.compressobj(wbits=-12, memLevel=5)
        size = 0
        for text in texts:
            data = compressor.compress(text.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH)
            size += len(data)
        return size

    t, _ = cpu(deflate, repeat)
    rows.append(("websocket deflate of the frames (link, zlib only)", t / calls_per_shard))
    print(
        f"rate {rate} calls/s, {shards} shards, {seconds} s: {calls_per_shard} calls and "
        f"{items_per_shard} items per shard, {len(chunks)} item frames, {len(pipe)} bytes piped"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=400)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = run(args.rate, args.shards, args.seconds, args.repeat)
    print("| stage | µs CPU per call |")
    print("|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e6:.2f} |")
    print(f"| total | {sum(s for _, s in rows) * 1e6:.2f} |")


if __name__ == "__main__":
    main()
