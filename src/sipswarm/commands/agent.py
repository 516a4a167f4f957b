"""``sipswarm agent``: the worker, configured from the environment (flags override).

Every setting is listed in :mod:`sipswarm.agent.config` (CONTROLLER_URL,
WORKER_TOKEN, ..., SHARDS); each has a ``--flag`` except the token, which
stays out of argv (``ps`` shows argv to every user of the host). A missing or
malformed setting exits 2 with one line naming it. With one shard the
endpoint engine runs in this process; with more, one engine process per
shard (:func:`~sipswarm.agent.shards.sharded_backend_factory`). SIGTERM and
SIGINT drain: finish the current runs, flush the data, close, exit 0.
"""

from __future__ import annotations

import argparse
import sys

import uvloop

from sipswarm.agent.backend import BackendFactory
from sipswarm.agent.config import AgentConfig, add_arguments, load_config
from sipswarm.agent.main import run_agent
from sipswarm.agent.shard_process import tune_gc
from sipswarm.agent.shards import sharded_backend_factory
from sipswarm.engine.engine import engine_backend_factory
from sipswarm.errors import ConfigError

EXIT_CONFIG = 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Settings come from the environment (CONTROLLER_URL, WORKER_TOKEN, WORKER_NAME, "
        "WORKER_ID, MAX_ENDPOINTS, LOG_LEVEL, LOG_FORMAT, HEALTH_PORT, STATE_DIR, "
        "SIP_BIND_ADDRESS, SIP_PUBLIC_ADDRESS, RTP_PORT_RANGE, SHARDS, ...); a flag overrides "
        "its variable. The token has no flag: set WORKER_TOKEN."
    )
    add_arguments(parser)


def backend_factory_for(config: AgentConfig) -> BackendFactory:
    """The in-process engine for one shard, else one engine process per shard."""
    if config.shards == 1:
        return engine_backend_factory
    return sharded_backend_factory


def main(args: argparse.Namespace) -> int:
    """Load the settings (exit 2 naming a bad one), then run until drained."""
    try:
        config = load_config(overrides=vars(args))
    except ConfigError as exc:
        print(f"sipswarm agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if config.shards == 1:  # the engine runs in this process
        tune_gc()
    code: int = uvloop.run(run_agent(config, backend_factory_for(config)))
    return code
