"""A worker process for the SIGTERM test: run_agent with the scripted backend.

Run as ``python tests/agent/agent_process.py`` with the usual environment
(CONTROLLER_URL, WORKER_TOKEN, STATE_DIR, ...) plus SCRIPT_HOLD_S.
"""

from __future__ import annotations

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scripted_backend import Script, ScriptedBackend

from sipswarm.agent.config import LinkTimings, load_config
from sipswarm.agent.main import run_agent
from sipswarm.errors import ConfigError


def main() -> int:
    try:
        config = load_config(timings=LinkTimings(backoff_initial_s=0.05, backoff_max_s=0.2))
    except ConfigError as exc:
        print(f"sipswarm agent: {exc}", file=sys.stderr)
        return 2
    script = Script(hold_s=float(os.environ.get("SCRIPT_HOLD_S", "0.5")))
    return asyncio.run(run_agent(config, lambda c, e: ScriptedBackend(c, e, script)))


if __name__ == "__main__":
    sys.exit(main())
