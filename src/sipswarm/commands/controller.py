"""``sipswarm controller``: the reference controller alone, for a fleet of workers.

Workers connect to ``ws://LISTEN/v1/worker`` with a token from ``--tokens``;
the REST API listens on ``--api`` (default: the same host, port + 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from sipswarm.controller.hub import load_tokens
from sipswarm.controller.server import Controller, ControllerConfig
from sipswarm.errors import ConfigError


def parse_hostport(value: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); ConfigError naming the option."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{option} must be HOST:PORT with PORT 0-65535, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        default="0.0.0.0:8080",
        help="worker WebSocket address HOST:PORT (path /v1/worker; default %(default)s)",
    )
    parser.add_argument(
        "--api",
        default=None,
        help="REST API address HOST:PORT (default: the --listen host, port + 1)",
    )
    parser.add_argument(
        "--tokens", required=True, help="file of worker tokens, one per line (# comments)"
    )
    parser.add_argument("--db", default="sipswarm.db", help="SQLite file (default %(default)s)")
    parser.add_argument(
        "--plans-dir",
        default=".",
        help="directory against which CSV/media paths of API-submitted plans are resolved",
    )
    parser.add_argument(
        "--lost-grace",
        type=float,
        default=60.0,
        help="seconds a run waits for a lost worker before giving up on it (default 60)",
    )


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        host, port = parse_hostport(args.listen, "--listen")
        api_host, api_port = (
            parse_hostport(args.api, "--api") if args.api else (host, port + 1 if port else 0)
        )
        config = ControllerConfig(
            host=host,
            port=port,
            api_host=api_host,
            api_port=api_port,
            tokens=load_tokens(args.tokens),
            db_path=args.db,
            lost_grace_s=args.lost_grace,
            plans_dir=args.plans_dir,
        )
    except ConfigError as exc:
        print(f"sipswarm controller: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"sipswarm controller: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


async def serve(config: ControllerConfig) -> None:
    """Run the controller until SIGINT or SIGTERM."""
    controller = Controller(config)
    await controller.start()
    print(f"workers: {controller.worker_url}", flush=True)
    print(
        f"api:     {controller.api_url}  (OpenAPI: {controller.api_url}/openapi.json)", flush=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await controller.stop()
