"""Processes and ports for real-peer fixtures: start bounded, stop by PID, leave nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"


def free_port(kinds: Sequence[str] = ("udp", "tcp"), host: str = LOOPBACK) -> int:
    """Return a port free right now for every kind in ``kinds`` ("udp", "tcp") on ``host``.

    The kernel picks it (never a fixed number), so parallel test runs do not
    collide; a race with another process binding it first is possible but rare.
    """
    for _ in range(50):
        first = socket.socket(socket.AF_INET, _SOCK[kinds[0]])
        first.bind((host, 0))
        port = first.getsockname()[1]
        others: list[socket.socket] = []
        try:
            for kind in kinds[1:]:
                sock = socket.socket(socket.AF_INET, _SOCK[kind])
                others.append(sock)
                sock.bind((host, port))
            return int(port)
        except OSError:
            continue
        finally:
            first.close()
            for sock in others:
                sock.close()
    raise RuntimeError(f"no port free for {kinds} on {host} after 50 tries")


_SOCK = {"udp": socket.SOCK_DGRAM, "tcp": socket.SOCK_STREAM}


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``check`` until true; raise TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready within {timeout} s")


class ManagedProcess:
    """A child process whose output goes to a log file, stopped by PID only.

    ``stop()`` sends ``first_signal`` (then SIGTERM, then SIGKILL after
    ``grace`` s each) to the PID we started, waits for it, and then checks
    that every descendant seen while it ran is gone too (killing leftovers by
    their PIDs). ``descendants_seen`` lets tests assert nothing is left.
    """

    def __init__(self, argv: Sequence[str], log_path: Path, *, cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,  # a Ctrl-C on pytest does not hit it mid-teardown
        )
        self.pid = self.popen.pid
        # pid -> create_time, so a PID reused by someone else is never touched
        self.descendants_seen: dict[int, float] = {}

    def running(self) -> bool:
        return self.popen.poll() is None

    def note_descendants(self) -> set[int]:
        """Record (and return) the PIDs of this process's children, grandchildren..."""
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    self.descendants_seen[child.pid] = child.create_time()
        return set(self.descendants_seen)

    def log_tail(self, lines: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, first_signal: int = signal.SIGTERM, grace: float = 5.0) -> int:
        """Stop by PID; return the exit code. Idempotent."""
        if self.running():
            self.note_descendants()
        for sig in (first_signal, signal.SIGTERM, signal.SIGKILL):
            if not self.running():
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        code = self.popen.wait(grace)
        self._reap_descendants(grace)
        self._log.close()
        return code

    def leftovers(self) -> list[int]:
        """PIDs of recorded descendants still alive (zombies of others do not count)."""
        alive = []
        for pid, created in self.descendants_seen.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
        return alive

    def _reap_descendants(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
