"""A real worker process: SIGTERM drains it to exit 0; its logs never hold the token."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from .conftest import controller, run
from .scripted_backend import assign_frame

SCRIPT = Path(__file__).with_name("agent_process.py")


def test_sigterm_drains_a_real_process_and_token_stays_out_of_logs(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with controller() as ctl:
            env = {
                **os.environ,
                "CONTROLLER_URL": ctl.url,
                "WORKER_TOKEN": ctl.token,
                "WORKER_NAME": "proc-1",
                "STATE_DIR": str(tmp_path),
                "HEALTH_ADDRESS": "127.0.0.1",
                "HEALTH_PORT": "0",
                "MAX_ENDPOINTS": "10",
                "LOG_LEVEL": "debug",
                "SCRIPT_HOLD_S": "0.8",
            }
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(SCRIPT),
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                await ctl.wait_for(lambda: ctl.ws is not None, timeout=15)
                assert ctl.hellos[0]["name"] == "proc-1"
                assert (tmp_path / "worker_id").read_text().strip() == ctl.hellos[0]["worker_id"]
                await ctl.send(assign_frame(n=2))
                await ctl.wait_for(lambda: ctl.of_type("assign_result"))
                proc.send_signal(signal.SIGTERM)
                await ctl.wait_for(
                    lambda: any(h["status"] == "DRAINING" for _, h in ctl.heartbeats)
                )
                _, stderr = await asyncio.wait_for(proc.communicate(), 10)
            finally:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            assert proc.returncode == 0, stderr.decode()[-2000:]
            assert {o["outcome"] for o in ctl.items_of("outcome")} == {"SUCCESS"}
            assert ctl.items_of("finished") and ctl.close_codes[-1] == 1000
            log = stderr.decode()
            assert "Authorization: Bearer [REDACTED]" in log  # websockets' own debug line
            assert ctl.token not in log
            assert '"event": "draining"' in log and '"why": "SIGTERM"' in log

    run(scenario(), timeout=40)
