"""Run tests/peers/pjsua_peer.py (pjsua2) as a bounded subprocess and read its JSON events.

    peer = start_pjsua(tmp_path, "answer", "--calls", "1")   # returns once "ready"
    peer.sip_address                                       # ("127.0.0.1", port)
    ... call it ...
    events = peer.wait_done(timeout=20)                    # all events, process exited
    [end] = [e for e in events if e["event"] == "call_end"]

    events = run_pjsua_call(tmp_path, "sip:service@127.0.0.1:5070", hold=2)

See pjsua_peer.py for the modes, options and events.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import ManagedProcess, free_port, wait_until

SCRIPT = Path(__file__).with_name("pjsua_peer.py")


def pjsua_available() -> bool:
    return importlib.util.find_spec("pjsua2") is not None


@dataclass
class PjsuaPeer:
    process: ManagedProcess
    sip_address: tuple[str, int]

    def events(self) -> list[dict[str, Any]]:
        """Every JSON event printed so far (non-JSON lines are pjsua/Python noise)."""
        out = []
        for line in self.process.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def wait_for(self, event: str, timeout: float = 10) -> dict[str, Any]:
        """Wait for the first event named ``event`` and return it."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in self.events() if e.get("event") == event]
            if not found and not self.process.running():
                raise RuntimeError(
                    f"pjsua peer exited before {event!r}:\n{self.process.log_tail()}"
                )
            return bool(found)

        wait_until(seen, timeout, f"pjsua event {event!r}")
        return found[0]

    def wait_done(self, timeout: float = 30) -> list[dict[str, Any]]:
        """Wait for the process to finish by itself (it is bounded by --max-time)."""
        deadline = time.monotonic() + timeout
        while self.process.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop()
        return self.events()

    def stop(self) -> int:
        return self.process.stop(grace=3.0)


def start_pjsua(workdir: Path, mode: str, *args: str, max_time: float = 30) -> PjsuaPeer:
    """Start the peer on a free SIP port and return once it printed ``ready``."""
    port = free_port(("udp",))
    rtp = free_port(("udp",))
    name = f"pjsua-{mode}-{port}"
    argv = [sys.executable, str(SCRIPT), mode, *args, "--port", str(port),
            "--rtp-port", str(rtp), "--max-time", str(max_time),
            "--log-file", str(workdir / f"{name}.pjlog"), "--log-level", "4"]  # fmt: skip
    process = ManagedProcess(argv, workdir / f"{name}.out")
    peer = PjsuaPeer(process, ("127.0.0.1", port))
    try:
        ready = peer.wait_for("ready", 15)
    except BaseException:
        peer.stop()
        raise
    peer.sip_address = ("127.0.0.1", int(ready["sip_port"]))
    return peer


def run_pjsua_call(
    workdir: Path, uri: str, *args: str, hold: float = 2.0, max_time: float = 20
) -> list[dict[str, Any]]:
    """Place one call to ``uri``, hang up after ``hold`` s; return all events."""
    peer = start_pjsua(workdir, "call", uri, "--hold", str(hold), *args, max_time=max_time)
    return peer.wait_done(max_time + 10)
