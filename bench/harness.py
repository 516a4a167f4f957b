"""Shared parts of the side-by-side benchmarks (call_rate, capacity, memory).

Not a test module: the scripts in ``bench/`` import it. It gives them

* :class:`CpuMeter` - CPU seconds of process trees from ``/proc/<pid>/stat``
  (utime + stime of every thread; a tree = the PID and its descendants, so
  Kamailio counts its workers and a sharded sipswarm counts its shards);
* :func:`machine` - nproc, CPU model, load average: what docs/benchmarks.md
  records next to every figure;
* :class:`SwarmDriver` - a :class:`~sipswarm.agent.shards.ShardedBackend`
  run in this process (this process plays the agent's supervisor), fed with
  PROTOCOL.md ``assign`` dicts through ``validate_assignment``, items
  collected in memory;
* :func:`peers` - the real-peer helpers of ``tests/peers`` (Kamailio, SIPp),
  importable when the scripts run from the repository root.

Every process is started by us and stopped by its PID; every address is
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


from tests.peers import kamailio as kamailio_peer  # noqa: E402 - re-exported
from tests.peers import media as media_peer  # noqa: E402
from tests.peers import procs  # noqa: E402
from tests.peers import sipp as sipp_peer  # noqa: E402

from sipswarm.agent.assignment import validate_assignment  # noqa: E402
from sipswarm.agent.config import AgentConfig  # noqa: E402
from sipswarm.agent.shards import ShardedBackend  # noqa: E402

# The peers' helpers the bench scripts use, re-exported under one name each.
Kamailio = kamailio_peer.Kamailio
KamailioOptions = kamailio_peer.KamailioOptions
start_kamailio = kamailio_peer.start_kamailio
ManagedProcess = procs.ManagedProcess
free_port = procs.free_port
wait_until = procs.wait_until
LOOPBACK_ONLY = sipp_peer.LOOPBACK_ONLY
SCENARIOS = sipp_peer.SCENARIOS
SippUas = sipp_peer.SippUas
media_port = sipp_peer.media_port
parse_trace_stat = sipp_peer.parse_trace_stat
run_sipp_register = sipp_peer.run_sipp_register
start_sipp_uas = sipp_peer.start_sipp_uas
write_ulaw_tone = media_peer.write_ulaw_tone

LOOPBACK = "127.0.0.1"
#: The shard factory with send-lateness counters (see bench/bench_engine.py).
BENCH_FACTORY = "bench_engine:bench_engine_factory"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    try:
        proc = psutil.Process(pid)
        return [pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def _pids(spec: int | list[int]) -> list[int]:
    """An int is a process tree; a list is exactly those processes."""
    return list(spec) if isinstance(spec, list) else tree_pids(spec)


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuMeter:
    """CPU of named process trees over a window: ``start()``, ``stop()``, ``percent(name)``.

    Trees are resolved at ``start()`` and again at ``stop()`` (PIDs that
    appear later are counted from 0); :meth:`sample` reads only the PIDs known
    then. Resolving a tree walks all of ``/proc`` (psutil ``children``): done on
    every sample it cost the measuring process ~60 % of its own CPU, which
    ``swarm`` runs counted as generator CPU. A process that exits inside the
    window keeps the figures of its last sample, so measure while they live.
    """

    def __init__(self, trees: dict[str, int | list[int]]) -> None:
        self.trees = trees
        self._t0 = 0.0
        self._wall = 0.0
        self._pids: dict[str, list[int]] = {}
        self._before: dict[str, dict[int, float]] = {}
        self._last: dict[str, dict[int, float]] = {}
        self.seconds: dict[str, float] = {}

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._last = {}
        self._pids = {name: _pids(spec) for name, spec in self.trees.items()}
        self._before = {
            name: {p: cpu_seconds(p) for p in pids} for name, pids in self._pids.items()
        }

    def sample(self) -> None:
        """Note the CPU of every known process now (a process that exits before
        ``stop()`` is then counted up to its last sample)."""
        for name, pids in self._pids.items():
            seen = self._last.setdefault(name, {})
            for p in pids:
                value = cpu_seconds(p)
                if value:
                    seen[p] = value

    def stop(self) -> None:
        self._wall = time.monotonic() - self._t0
        for name, spec in self.trees.items():
            known = self._pids.setdefault(name, [])
            known.extend(p for p in _pids(spec) if p not in known)
        self.sample()
        for name in self.trees:
            before = self._before.get(name, {})
            last = self._last.get(name, {})
            self.seconds[name] = max(0.0, sum(v - before.get(p, 0.0) for p, v in last.items()))

    @property
    def wall(self) -> float:
        return self._wall

    def percent(self, name: str) -> float:
        """CPU % of one core (100 = one core busy) over the window."""
        return 100.0 * self.seconds.get(name, 0.0) / self._wall if self._wall else 0.0


def udp_drops(pids: Iterable[int]) -> int:
    """Datagrams the kernel dropped on the UDP sockets ``pids`` hold (receive buffer
    full), summed from the ``drops`` column of /proc/net/udp[6]."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    cols = line.split()
                    if cols[9] in inodes:
                        total += int(cols[-1])
        except OSError:
            continue
    return total


def machine_busy() -> tuple[float, float]:
    """(idle, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as fh:
        parts = [float(x) for x in fh.readline().split()[1:]]
    return parts[3] + parts[4], sum(parts)


def machine() -> dict[str, str]:
    """What every figure is recorded with: nproc, CPU model, load average."""
    model = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "loadavg": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        "python": sys.version.split()[0],
    }


def others_percent(seconds: float = 1.0, exclude: Iterable[int] = ()) -> float:
    """CPU % (200 = both cores) used by every process but ``exclude`` trees, over ``seconds``."""
    skip: set[int] = set()
    for pid in exclude:
        skip.update(tree_pids(pid))
    skip.add(os.getpid())
    idle0, total0 = machine_busy()
    own0 = sum(cpu_seconds(p) for p in skip)
    time.sleep(seconds)
    idle1, total1 = machine_busy()
    own1 = sum(cpu_seconds(p) for p in skip)
    busy = ((total1 - total0) - (idle1 - idle0)) / CLK_TCK
    ncpu = os.cpu_count() or 1
    wall_cpu = (total1 - total0) / CLK_TCK / ncpu
    return max(0.0, 100.0 * (busy - (own1 - own0)) / wall_cpu) if wall_cpu else 0.0


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A Markdown table (pastes straight into docs/benchmarks.md)."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(_cell(v) for v in row) + " |")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


@dataclass
class Collected:
    """Items a SwarmDriver saw, indexed for the benchmarks."""

    calls: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    contacts: dict[str, str] = field(default_factory=dict)
    phases: Counter[str] = field(default_factory=Counter)
    finished: set[str] = field(default_factory=set)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    keep_metrics: bool = False

    def __call__(self, item: dict[str, Any]) -> None:
        kind = item["kind"]
        if kind == "call":
            self.calls[item["result"]] += 1
        elif kind == "outcome":
            self.outcomes[item["outcome"]] += 1
            if item["outcome"] not in ("SUCCESS", "CANCELLED"):
                self.reasons[str(item.get("reason"))[:80]] += 1
        elif kind == "phase":
            self.phases[item["phase"]] += 1
            if item.get("contact"):
                self.contacts[item["endpoint_id"]] = item["contact"]
        elif kind == "finished":
            self.finished.add(item["assignment_id"])
        elif kind == "metrics" and self.keep_metrics:
            self.metrics.append(item)


class SwarmDriver:
    """A sharded sipswarm engine in this process's loop. Next: ``await start()``,
    ``await assign(endpoints, ...)``, ``wait_finished``, ``await close()``."""

    def __init__(
        self, shards: int, max_endpoints: int, rtp_ports: tuple[int, int], trace: str = "none"
    ) -> None:
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(BENCH), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
        )
        self.items = Collected()
        self.config = AgentConfig(
            controller_url="ws://127.0.0.1:1/v1/worker",
            token="bench",
            name="bench",
            worker_id="bench",
            state_dir=Path("/tmp/sipswarm-bench-state"),
            max_endpoints=max_endpoints,
            sip_bind_address=LOOPBACK,
            rtp_port_range=rtp_ports,
            shards=shards,
        )
        self.backend = ShardedBackend(self.config, self.items, BENCH_FACTORY, shards)
        self.trace = trace  # the assignments' trace setting (a plan's default is failures)
        self._n = 0
        self._last_second: dict[int, float] = {}
        self.clock_samples: list[dict[str, float]] = []

    async def start(self) -> None:
        await self.backend.start()

    def shard_pids(self) -> list[int]:
        """PIDs of the live shard processes."""
        return [s.proc.pid for s in self.backend._shards if s.proc is not None]

    def generator_pids(self) -> list[int]:
        """This process (the supervisor) and its shards: what a sipswarm agent costs."""
        return [os.getpid(), *self.shard_pids()]

    async def assign(
        self, run_id: str, endpoints: list[dict[str, Any]], start_at_ms: int | None = None
    ) -> str:
        """Validate and start one assignment; return its id."""
        self._n += 1
        aid = f"{run_id}-a{self._n}"
        raw = {
            "type": "assign",
            "assignment_id": aid,
            "run_id": run_id,
            "start_at": start_at_ms,
            "settings": {"trace": self.trace, "metrics_interval_ms": 1000},
            "endpoints": endpoints,
        }
        spec, problems = validate_assignment(raw, ())
        if spec is None:
            raise ValueError("; ".join(problems[:5]))
        await self.backend.start_assignment(spec)
        return aid

    async def wait_finished(self, ids: Iterable[str], timeout: float) -> bool:
        """Wait (bounded) until every assignment in ``ids`` sent its ``finished``."""
        want = set(ids)
        deadline = time.monotonic() + timeout
        while not want <= self.items.finished:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def counters(self) -> dict[str, float]:
        return self.backend.counters()

    def shard_counters(self) -> list[dict[str, float]]:
        """The counters each shard last pushed (status every 250 ms)."""
        return [dict(s.status.get("counters", {})) for s in self.backend._shards]

    def poll_clock(self) -> None:
        """Keep each shard's new per-second media clock figures (call every ~0.25 s)."""
        for index, counters in enumerate(self.shard_counters()):
            second = counters.get("bench_seconds", 0.0)
            if second and self._last_second.get(index) != second:
                self._last_second[index] = second
                self.clock_samples.append(
                    {k: float(v) for k, v in counters.items() if k.startswith("bench_")}
                )

    def clock_summary(self) -> dict[str, float | None]:
        """Median p50, mean and worst p99 lateness, mean and worst loop lag p99 of the
        samples kept since the last call (then cleared)."""
        samples, self.clock_samples = self.clock_samples, []
        if not samples:
            return dict.fromkeys(("p50", "p99", "p99_worst", "lag_p99", "lag_worst"))
        p50 = sorted(s["bench_lateness_p50_ms"] for s in samples)
        p99 = [s["bench_lateness_p99_ms"] for s in samples]
        lag = [s["bench_loop_lag_p99_ms"] for s in samples]
        return {
            "p50": p50[len(p50) // 2],
            "p99": sum(p99) / len(p99),
            "p99_worst": max(p99),
            "lag_p99": sum(lag) / len(lag),
            "lag_worst": max(lag),
        }

    async def close(self) -> None:
        await self.backend.close()


def caller(
    eid: str,
    user: str,
    password: str,
    target: str,
    registrar: tuple[str, int],
    *,
    offset_ms: int,
    duration_s: float,
    source: str = "silence",
    rtp: bool = True,
) -> dict[str, Any]:
    """A PROTOCOL.md caller endpoint that does not register and calls ``target``
    through ``registrar`` (outbound proxy: INVITE sent there); ``rtp`` false makes its
    call signalling only (docs/protocol.md ``media.rtp``)."""
    return {
        "endpoint_id": eid,
        "group": "callers",
        "role": "caller",
        "start_offset_ms": offset_ms,
        "account": {"username": user, "password": password},
        "registrar": {
            "domain": LOOPBACK,
            "host": registrar[0],
            "port": registrar[1],
            "transport": "udp",
            "register": False,
        },
        "call": {"target": target, "duration_s": duration_s, "ring_timeout_s": 10},
        "media": _media(source, rtp),
    }


def receiver(
    eid: str, user: str, *, idle_s: float, duration_s: float, rtp: bool = True
) -> dict[str, Any]:
    """A listening (``register: false``) receiver; its contact comes in its REGISTERED phase.
    ``rtp`` false: signalling-only calls."""
    return {
        "endpoint_id": eid,
        "group": "receivers",
        "role": "receiver",
        "start_offset_ms": 0,
        "account": {"username": user, "password": None},
        "registrar": {"domain": LOOPBACK, "host": LOOPBACK, "port": 9, "register": False},
        "call": {"duration_s": duration_s, "idle_timeout_s": idle_s},
        "media": _media("tone", rtp),
    }


def _media(source: str, rtp: bool = True) -> dict[str, Any]:
    src: dict[str, Any] = {"kind": source}
    if source == "tone":
        src["frequency_hz"] = 440
    media: dict[str, Any] = {"codecs": ["PCMU"], "ptime_ms": 20, "source": src, "srtp": "off"}
    if not rtp:
        media["rtp"] = False  # extension: only sent when it says false
    return media
