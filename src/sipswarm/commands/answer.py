"""``sipswarm answer``: answer every call until interrupted (a test callee, a smoke target).

    sipswarm answer --listen 127.0.0.1:5070 --answer-delay 1 --duration 5
    sipswarm answer --listen 127.0.0.1:5070 --registrar pbx --user 2000 --password s

One *service* endpoint of the same :class:`~sipswarm.engine.engine.EndpointEngine`
the agent runs listens on ``--listen`` (registering first if asked) and hands
each INVITE, for any user, to a child endpoint that rings, answers after
``--answer-delay`` seconds, sends RTP and hangs up after ``--duration``
(unless the caller does first). A second call while one is up is simply
another child. OPTIONS are answered 200. SIGINT/SIGTERM unregister and exit
0; ``--max-calls N`` exits after N calls (for scripts). It runs on uvloop
with the garbage collector tuned as an agent's engine process is
(``tune_gc``), so a far end under load behaves as the agent's shards do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import uvloop

from sipswarm.agent.shard_process import tune_gc
from sipswarm.commands.call import (
    ItemPrinter,
    add_common,
    endpoint_spec,
    engine_settings,
    host_port,
)
from sipswarm.engine.engine import EndpointEngine
from sipswarm.errors import ConfigError, SipswarmError
from sipswarm.protocol import TraceMode

__all__ = ["configure", "main"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sipswarm answer``."""
    parser.add_argument("--listen", default="127.0.0.1:5070", help="host:port (127.0.0.1:5070)")
    parser.add_argument("--answer-delay", type=float, default=0.0, help="ring N s first (0)")
    parser.add_argument("--max-calls", type=int, default=0, help="exit after N calls (0: never)")
    add_common(parser)


async def run_answer(args: argparse.Namespace, printer: ItemPrinter) -> int:
    """Serve until a signal (or --max-calls); return the exit status."""
    host, port = host_port(args.listen, "--listen")
    if port is None:
        raise ConfigError(f"--listen needs host:port, got {args.listen!r}")
    spec = endpoint_spec(args, "receiver", None, host)
    engine = EndpointEngine(engine_settings(args, host, port), printer)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    trace = TraceMode.NONE if args.quiet else TraceMode.ALL
    try:
        service = engine.start_service(spec, "answer", trace)
        tune_gc()  # as an agent's engine does once built: a far end takes many calls
        while not stop.is_set() and not service.closed:
            if args.max_calls and len(printer.calls) >= args.max_calls:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        await engine.cancel_run("answer", "interrupted")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await engine.close()
    failed = [o for o in printer.outcomes if o["endpoint_id"] == "cli/receiver"]
    if failed and failed[0]["outcome"] not in ("SUCCESS", "CANCELLED", "COMPLETED_WITH_WARNINGS"):
        print(f"sipswarm answer: {failed[0]['reason']}", file=sys.stderr)
        return 1
    return 0


def main(args: argparse.Namespace) -> int:
    """Entry point of ``sipswarm answer``."""
    printer = ItemPrinter(sys.stdout, trace=not args.quiet)
    try:
        code: int = uvloop.run(run_answer(args, printer))  # the agent's loop
        return code
    except SipswarmError as exc:
        print(f"sipswarm answer: {exc}", file=sys.stderr)
        return 2
