"""SIPp as a test peer: a long-running UAS and bounded UAC / registration runs.

    uas = start_sipp_uas(tmp_path, mode="answer", rtp_echo=True)   # or "busy", "ring"
    uas.address                                     # ("127.0.0.1", port) to send INVITEs to
    stats = run_sipp_uac(tmp_path, uas.address, calls=5, rate=10)
    assert stats.successful == 5 and stats.failed == 0
    uas.stop()                                      # SIGUSR1 soft exit, then TERM, by PID
    uas.stats()                                     # parsed -trace_stat CSV (final after stop)

UAS modes (scenarios in ``scenarios/``): ``answer`` (180, 200 with PCMU SDP,
waits for BYE), ``busy`` (486), ``ring`` (180, then waits for CANCEL: 200 +
487). Through a proxy: register the UAS first with :func:`run_sipp_register`.
The UAC reads ``caller;callee;password`` rows (given as ``accounts``) and
answers 401/407 challenges with them. Every sipp is bound to 127.0.0.1 only
(``-i``, ``-mi``, ``-ci``) on ports the kernel chose, with ``-nostdin``.
"""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .procs import LOOPBACK, ManagedProcess, free_port, wait_until

SCENARIOS = Path(__file__).with_name("scenarios")
UAS_SCENARIOS = {
    "answer": "uas_answer.xml",
    "busy": "uas_busy.xml",
    "ring": "uas_ring_cancel.xml",
}
TRANSPORT_FLAGS = {"udp": "u1", "tcp": "t1"}
LOOPBACK_ONLY = ["-i", LOOPBACK, "-mi", LOOPBACK, "-ci", LOOPBACK, "-nostdin"]


def sipp_available() -> bool:
    return shutil.which("sipp") is not None


@dataclass(frozen=True)
class SippStats:
    """The last row of a ``-trace_stat`` CSV, cumulative counters."""

    created: int
    successful: int
    failed: int
    retransmissions: int
    row: dict[str, str]


def parse_trace_stat(path: Path) -> SippStats | None:
    """Parse sipp's ``-trace_stat`` CSV (``;``-separated); None if it has no data row yet."""
    if not path.exists():
        return None
    rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    if len(rows) < 2:
        return None
    row = dict(zip(rows[0], rows[-1], strict=False))

    def num(key: str) -> int:
        return int(row.get(key, "0") or 0)

    return SippStats(
        created=num("TotalCallCreated"),
        successful=num("SuccessfulCall(C)"),
        failed=num("FailedCall(C)"),
        retransmissions=num("Retransmissions(C)"),
        row=row,
    )


def media_port() -> int:
    """A free UDP port p with p+1..p+3 free too (sipp uses p for RTP and p+2 for video)."""
    for _ in range(50):
        port = free_port(("udp",))
        if port < 65000 and all(_udp_free(port + i) for i in range(1, 4)):
            return port
    raise RuntimeError("no free block of 4 UDP ports for sipp media")


def _udp_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


@dataclass
class SippUas:
    """A running SIPp UAS; see the module docstring."""

    mode: str
    address: tuple[str, int]
    media_port: int
    process: ManagedProcess
    stat_file: Path

    def stats(self) -> SippStats | None:
        return parse_trace_stat(self.stat_file)

    def stop(self) -> int:
        """SIGUSR1 (sipp's soft exit: final statistics written), then SIGTERM, by PID."""
        return self.process.stop(first_signal=signal.SIGUSR1, grace=3.0)


def start_sipp_uas(
    workdir: Path, mode: str = "answer", *, transport: str = "udp", rtp_echo: bool = False
) -> SippUas:
    """Start a SIPp UAS on a free port; return once its SIP port is bound."""
    if mode not in UAS_SCENARIOS:
        raise ValueError(f"mode must be one of {sorted(UAS_SCENARIOS)}, got {mode!r}")
    port = free_port(("udp", "tcp"))
    mport = media_port()
    stat_file = workdir / f"uas-{mode}-{port}.csv"
    argv = ["sipp", "-sf", str(SCENARIOS / UAS_SCENARIOS[mode]), *LOOPBACK_ONLY,
            "-p", str(port), "-mp", str(mport), "-cp", str(free_port(("udp",))),
            "-t", TRANSPORT_FLAGS[transport], "-trace_stat", "-stf", str(stat_file), "-fd", "1",
            "-trace_err", "-error_file", str(workdir / f"uas-{mode}-{port}.err")]  # fmt: skip
    if rtp_echo:
        argv.append("-rtp_echo")
    process = ManagedProcess(argv, workdir / f"uas-{mode}-{port}.log")
    uas = SippUas(mode, (LOOPBACK, port), mport, process, stat_file)

    def bound() -> bool:
        if not process.running():
            raise RuntimeError(f"sipp UAS exited at start:\n{process.log_tail()}")
        return not (_udp_free(port) if transport == "udp" else _tcp_free(port))

    try:
        wait_until(bound, 10, "sipp UAS")
    except BaseException:
        uas.stop()
        raise
    return uas


def _tcp_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _write_csv(path: Path, rows: list[tuple[str, ...]]) -> Path:
    path.write_text("SEQUENTIAL\n" + "".join(";".join(row) + "\n" for row in rows))
    return path


@dataclass(frozen=True)
class SippRun:
    """Outcome of a bounded sipp client run: exit code (0 = every call OK) and statistics."""

    returncode: int
    stats: SippStats
    log: str


def _run_client(argv: list[str], workdir: Path, name: str, timeout: float) -> SippRun:
    stat_file = workdir / f"{name}.csv"
    log = workdir / f"{name}.log"
    argv += ["-trace_stat", "-stf", str(stat_file), "-fd", "1",
             "-trace_err", "-error_file", str(workdir / f"{name}.err")]  # fmt: skip
    process = ManagedProcess(argv, log)
    try:
        code = process.popen.wait(timeout)
    except subprocess.TimeoutExpired as exc:
        process.stop(first_signal=signal.SIGUSR1, grace=3.0)
        tail = process.log_tail()
        raise TimeoutError(f"sipp {name} still running after {timeout} s:\n{tail}") from exc
    process.stop()
    stats = parse_trace_stat(stat_file)
    if stats is None:
        raise RuntimeError(f"sipp {name} wrote no statistics (exit {code}):\n{process.log_tail()}")
    return SippRun(code, stats, log.read_text(errors="replace"))


def run_sipp_uac(
    workdir: Path,
    target: tuple[str, int],
    *,
    calls: int = 1,
    rate: float = 10.0,
    hold_ms: int = 0,
    accounts: list[tuple[str, str, str]] | None = None,
    transport: str = "udp",
    rtp_file: Path | None = None,
    timeout: float = 60.0,
) -> SippRun:
    """Place ``calls`` calls at ``rate`` per second to ``target``, holding each ``hold_ms``.

    ``accounts``: (caller, callee, password) rows used in turn; default one
    unauthenticated row ``sipp;service;-``. ``rtp_file``: headerless G.711
    u-law played (looped) as RTP after the ACK. Bounded by ``timeout`` seconds.
    """
    rows = accounts or [("sipp", "service", "-")]
    name = f"uac-{free_port(('udp',))}"
    scenario = SCENARIOS / "uac.xml"
    if rtp_file is not None:
        text = scenario.read_text().replace(
            "<!-- @RTP@ -->",
            f'<nop><action><exec rtp_stream="{rtp_file},-1,0"/></action></nop>',
        )
        scenario = workdir / f"{name}.xml"
        scenario.write_text(text)
    argv = ["sipp", f"{target[0]}:{target[1]}", "-sf", str(scenario), *LOOPBACK_ONLY,
            "-inf", str(_write_csv(workdir / f"{name}-accounts.csv", list(rows))),
            "-p", str(free_port(("udp", "tcp"))), "-mp", str(media_port()),
            "-cp", str(free_port(("udp",))), "-t", TRANSPORT_FLAGS[transport],
            "-m", str(calls), "-r", str(rate), "-d", str(hold_ms), "-l", str(max(calls, 1)),
            "-timeout", f"{int(timeout)}s", "-timeout_error", "-recv_timeout", "10000"]  # fmt: skip
    return _run_client(argv, workdir, name, timeout + 10)


def run_sipp_register(
    workdir: Path,
    registrar: tuple[str, int],
    users: list[tuple[str, str]],
    contact: tuple[str, int],
    *,
    expires: int = 300,
    timeout: float = 30.0,
) -> SippRun:
    """Register each (user, password) with Contact ``sip:user@contact``; digest auth answered."""
    name = f"reg-{free_port(('udp',))}"
    argv = ["sipp", f"{registrar[0]}:{registrar[1]}", "-sf", str(SCENARIOS / "reg.xml"),
            *LOOPBACK_ONLY, "-inf", str(_write_csv(workdir / f"{name}-users.csv", list(users))),
            "-p", str(free_port(("udp", "tcp"))), "-cp", str(free_port(("udp",))),
            "-key", "contact", f"{contact[0]}:{contact[1]}", "-key", "expires", str(expires),
            "-m", str(len(users)), "-r", "100", "-timeout", f"{int(timeout)}s",
            "-timeout_error", "-recv_timeout", "5000"]  # fmt: skip
    return _run_client(argv, workdir, name, timeout + 10)
