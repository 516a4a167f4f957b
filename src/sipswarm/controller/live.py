"""Live progress of a run in the terminal: a rich panel, or plain lines when not a TTY.

``async with LiveView(snapshot_fn) as view: ...`` redraws from
``snapshot_fn()`` (:meth:`RunManager.snapshot`) every ``interval`` seconds;
it shows status, elapsed time, endpoints by phase, calls, ASR, MOS and
workers: progress, not a log stream. When stdout is not a terminal it
prints one summary line every ``plain_interval`` seconds instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import termios
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

Snapshot = dict[str, Any]
PHASES = (
    "PENDING", "INITIALIZING", "REGISTERED", "CALLING", "RINGING", "NEGOTIATING", "INCALL",
    "DISCONNECTING", "CLOSED",
)  # fmt: skip


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.1f} %"


def _num(v: float | None, fmt: str = ".2f") -> str:
    return "–" if v is None else format(v, fmt)


def plain_line(s: Snapshot) -> str:
    """One line of progress, for logs and non-TTY output."""
    phases = " ".join(f"{p}={s['phases'][p]}" for p in PHASES if s["phases"].get(p))
    active = s.get("calls_active", 0)
    in_progress = f" (+{active} in progress)" if active else ""
    return (
        f"[{s['elapsed_s']:6.1f}s] {s['status']:<9} endpoints {s['endpoints']} ({phases}) "
        f"calls {s['calls_answered']}/{s['calls_attempted']}{in_progress} ASR {_pct(s['asr'])} "
        f"MOS {_num(s['mos_mean'])} workers {len(s['workers'])}"
    )


def _calls(s: Snapshot) -> str:
    """Ended calls (a call is counted when it ends) and the callers' calls under way."""
    text = f"{s['calls_answered']} answered of {s['calls_attempted']} ended"
    active = s.get("calls_active", 0)
    return f"{text} · {active} in progress" if active else text


def render(s: Snapshot) -> Panel:
    """The rich panel for one snapshot."""
    head = Table.grid(padding=(0, 2))
    head.add_row("status", f"[bold]{s['status']}[/bold]", "elapsed", f"{s['elapsed_s']:.1f} s")
    head.add_row("calls", _calls(s), "ASR", _pct(s["asr"]))
    head.add_row("MOS mean", _num(s["mos_mean"]), "MOS min", _num(s["mos_min"]))
    # The heading is a line of its own: as a table title it was wrapped to the width
    # of the table's columns ("endpoint / s by / phase" over a single CLOSED column).
    phases = Table(show_edge=False, pad_edge=False)
    present = [p for p in PHASES if s["phases"].get(p)]
    for p in present:
        phases.add_column(p, justify="right")
    phases.add_row(*(str(s["phases"][p]) for p in present))
    workers = ", ".join(f"{w} {st}" for w, st in s["workers"].items()) or "none yet"
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(s["outcomes"].items())) or "none yet"
    body = Group(
        head, "", "endpoints by phase", phases, "", f"outcomes: {outcomes}", f"workers: {workers}"
    )
    title = f"sipswarm run {s['run_id']} · {s['name']} · {s['endpoints']} endpoints"
    return Panel(body, title=title, subtitle=s["reason"] or None)


@contextlib.contextmanager
def quiet_terminal(fd: int) -> Iterator[None]:
    """No echo on terminal ``fd`` while the panel is drawn: the ``^C`` of a Ctrl-C (or
    keys typed) would move the cursor under rich, which then redraws the panel below a
    stale copy of its top line. Restored on exit; a no-op when ``fd`` is not a tty."""
    try:
        saved = termios.tcgetattr(fd)
    except (termios.error, OSError, ValueError):
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~(termios.ECHO | termios.ECHOCTL)  # lflags
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


class LiveView:
    """Redraws progress until closed. See the module docstring."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        out: TextIO | None = None,
        interval: float = 0.5,
        plain_interval: float = 5.0,
    ) -> None:
        self.snapshot = snapshot
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.interval = interval if self.tty else plain_interval
        self._task: asyncio.Task[None] | None = None
        self._live: Live | None = None
        self._quiet: contextlib.AbstractContextManager[None] | None = None

    async def __aenter__(self) -> LiveView:
        if self.tty:
            self._quiet = quiet_terminal(sys.stdin.fileno()) if sys.stdin.isatty() else None
            if self._quiet is not None:
                self._quiet.__enter__()
            self._live = Live(
                render(self.snapshot()), console=Console(file=self.out), auto_refresh=False
            )
            self._live.start()
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.update()  # the final state stays on screen
        if self._live is not None:
            self._live.stop()
        if self._quiet is not None:
            self._quiet.__exit__(None, None, None)

    def update(self) -> None:
        snap = self.snapshot()
        if self._live is not None:
            self._live.update(render(snap), refresh=True)
        else:
            print(plain_line(snap), file=self.out, flush=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.update()
