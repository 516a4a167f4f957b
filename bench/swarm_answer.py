"""A sipswarm far end for the benchmarks: one engine process answering every call.

    python bench/swarm_answer.py --port 5070 --duration 30 [--rtp-ports 40000-49999] [--no-rtp]
        [--gc tuned|default]

The same :class:`~sipswarm.engine.engine.EndpointEngine` service endpoint as
``sipswarm answer`` (each INVITE, for any user, goes to a child receiver that
rings, answers, sends a 440 Hz PCMU tone and hangs up after ``--duration``
unless the caller does first), with items counted instead of printed, so that
the far end costs what the engine costs. Its garbage collector is tuned as an
engine shard's (``--gc default`` keeps Python's; ``sipswarm answer`` itself
does not tune it). It prints ``ready`` once listening
and one JSON line of counts on SIGTERM/SIGINT, then exits 0. It is the
counterpart of SIPp's UAS in bench/call_rate.py and bench/capacity.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import Counter
from typing import Any

import uvloop

import harness
from sipswarm.agent.assignment import validate_assignment
from sipswarm.agent.shard_process import tune_gc
from sipswarm.engine.engine import EndpointEngine, EngineSettings
from sipswarm.protocol import TraceMode


async def serve(args: argparse.Namespace) -> dict[str, Any]:
    low, high = (int(x) for x in args.rtp_ports.split("-"))
    raw = {
        "type": "assign",
        "assignment_id": "far",
        "run_id": "far",
        "endpoints": [
            harness.receiver(
                "far/service",
                "service",
                idle_s=86400,
                duration_s=args.duration,
                rtp=not args.no_rtp,
            )
        ],
    }
    spec, problems = validate_assignment(raw, ())
    if spec is None:
        raise SystemExit("; ".join(problems))
    counts: dict[str, Counter[str]] = {"calls": Counter(), "outcomes": Counter()}

    def emit(item: dict[str, Any]) -> None:
        if item["kind"] == "call":
            counts["calls"][item["result"]] += 1
        elif item["kind"] == "outcome":
            counts["outcomes"][item["outcome"]] += 1

    settings = EngineSettings(
        bind_host=harness.LOOPBACK, sip_port=args.port, rtp_port_range=(low, high),
        max_endpoints=100_000,
    )  # fmt: skip
    engine = EndpointEngine(settings, emit)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    engine.start_service(spec.endpoints[0], "far", TraceMode.NONE)
    if args.gc == "tuned":
        tune_gc()  # as an engine shard does once built (agent/shard_process.py)
    print("ready", flush=True)
    await stop.wait()
    result = {
        "calls": dict(counts["calls"]),
        "outcomes": dict(counts["outcomes"]),
        "counters": engine.counters(),
    }
    await engine.cancel_run("far", "benchmark over")
    await engine.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--rtp-ports", default="40000-49999")
    parser.add_argument(
        "--gc",
        choices=("tuned", "default"),
        default="tuned",
        help="tuned: collect as an engine shard does (freeze, thresholds 50,000/20/100)",
    )
    parser.add_argument(
        "--no-rtp",
        action="store_true",
        help="signalling-only calls (media.rtp false: SDP a=inactive, no RTP)",
    )
    args = parser.parse_args()
    result = uvloop.run(serve(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
