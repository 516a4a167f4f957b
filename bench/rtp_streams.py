"""Benchmark: N concurrent bidirectional G.711 streams in one process, on one media clock.

Each of the N streams is one call leg (one RtpSession, its own socket) that
sends 50 packets/s of PCMU (172-byte packets, 20 ms ptime) and receives 50
packets/s from its partner leg in the same process (legs 2i and 2i+1 talk to
each other over 127.0.0.1). So N = 1000 means 50,000 packets/s sent and
50,000 received by one Python process.

For every N the benchmark opens the sessions, lets them run one second, then
measures for ``--seconds``: CPU of this process (user + system, % of one
core) and of the whole machine (the kernel's loopback delivery partly runs
in ksoftirqd, outside this process), CPU per stream and per packet (user
and system time), send lateness against the media clock's schedule
(p50/p99/max), event-loop lag (p99), skipped clock ticks, and, after the
senders stop and the sockets drain (until nothing arrives for 0.3 s),
receive loss (packets a partner sent that never arrived).

``--far-end process`` puts each leg's partner in a child process (the same
engine, started by this script) so that this process is measured alone, as
when the far end is SIPp or a real system under test: N legs here send N x 50
and receive N x 50 packets/s; the child's CPU is reported next to it.

Pauses are measured where they come from: the process's garbage
collections during the window (``gc.callbacks``: count and longest pause),
the time it spent runnable but waiting for a CPU (``run_delay`` of
``/proc/self/schedstat``: other processes or ksoftirqd on its core, in ms
per second), and after the window the per-second housekeeping of every leg
(``tick_second``: interval close and E-model) and one RTCP report build,
timed in a loop over all legs. The process tunes its garbage collector as
an engine shard does (``tune_gc``: freeze + thresholds 50,000/20/100);
``--gc default`` keeps Python's defaults. ``--timer loop`` drives the media
clock from the loop's ``call_later`` instead of the timerfd.

``--srtp`` keys every leg with SRTP/SRTCP (AES_CM_128_HMAC_SHA1_80, as
SDES would, with fixed bench keys; the far end mirrors them): the
difference to a run without it is libsrtp's cost per packet.

It prints a markdown table and writes it with ``--output``.

The per-packet path is the C extension (``sipswarm._rtpcore``) when it built;
``SIPSWARM_NATIVE=0`` runs the pure-Python fallback (this process and the far
end) for an A/B comparison. The header line says which one ran.

A benchmark, not a test: figures depend on what else runs on the machine.

    python bench/rtp_streams.py --streams 250,500,1000,1500,2000 --seconds 10
    python bench/rtp_streams.py --streams 250,500,1000,1500,2000 --seconds 10 --far-end process
    python bench/rtp_streams.py --streams 500,1000 --seconds 10 --srtp
    python bench/rtp_streams.py --streams 1000 --seconds 10 --gc default --timer loop
    SIPSWARM_NATIVE=0 python bench/rtp_streams.py --streams 250,500,1000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import psutil

from sipswarm.agent.shard_process import tune_gc
from sipswarm.engine.media_clock import BUCKET_S, LatencyHistogram, TimerKind
from sipswarm.engine.media_engine import NATIVE, MediaEngine
from sipswarm.engine.rtp_session import RtpSession
from sipswarm.engine.srtp import SrtpContext
from sipswarm.media.codecs import codec_by_name
from sipswarm.media.sdes import SUITES, SdesKeys
from sipswarm.media.sources import get_source

LOCAL = "127.0.0.1"


@dataclass
class Result:
    streams: int
    seconds: float
    cpu_pct: float
    machine_pct: float
    user_us: float
    sys_us: float
    lateness_p50_ms: float | None
    lateness_p99_ms: float | None
    lateness_max_ms: float | None
    loop_lag_p99_ms: float | None
    skipped_ticks: int
    sent: int
    received: int
    lost: int
    late_shares: str
    pauses: Pauses
    far_cpu_pct: float | None = None

    def row(self) -> str:
        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        far = "-" if self.far_cpu_pct is None else f"{self.far_cpu_pct:.1f}"
        per_stream = self.cpu_pct / self.streams
        return (
            f"| {self.streams} | {self.cpu_pct:.1f} | {far} | {self.machine_pct:.0f} | "
            f"{per_stream:.3f} | {self.user_us + self.sys_us:.1f} "
            f"({self.user_us:.1f} + {self.sys_us:.1f}) | {f(self.lateness_p50_ms)} | "
            f"{f(self.lateness_p99_ms)} | {f(self.lateness_max_ms)} | "
            f"{f(self.loop_lag_p99_ms)} | {self.skipped_ticks} | {self.sent} | "
            f"{self.received} | {self.lost} | {self.late_shares} | {self.pauses.cells()} |"
        )


HEADER = (
    "| streams | CPU % of one core | far end CPU % | machine busy % (200 = 2 cores) | "
    "CPU % per stream | CPU µs per packet (user + sys) | "
    "lateness p50 ms | lateness p99 ms | lateness max ms | loop lag p99 ms | skipped ticks | "
    "packets sent | packets received | lost | sends late ≥ 1 / 2 / 5 ms (%) | "
    "load avg (1 min) | GC collections (longest ms) | waiting for a CPU ms/s | "
    "housekeeping µs per leg-second | RTCP report build µs |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass
class Pauses:
    """Where a process's pauses can come from, over one measured window."""

    load: float
    gc_collections: int
    gc_max_ms: float
    run_delay_ms_per_s: float
    housekeeping_us: float
    rtcp_build_us: float

    def cells(self) -> str:
        return (
            f"{self.load:.2f} | {self.gc_collections} ({self.gc_max_ms:.2f}) | "
            f"{self.run_delay_ms_per_s:.1f} | {self.housekeeping_us:.1f} | "
            f"{self.rtcp_build_us:.1f}"
        )


class GcPauses:
    """Garbage collections and their durations while registered (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.count = 0
        self.longest = 0.0
        self._start = 0.0

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        self.count += 1
        self.longest = max(self.longest, time.perf_counter() - self._start)


def _late_shares(hist: LatencyHistogram) -> str:
    """The lateness histogram in three figures: % of sends at least 1, 2 and 5 ms late."""
    total = max(hist.count, 1)
    shares = []
    for ms in (1, 2, 5):
        first = round(ms * 1e-3 / BUCKET_S)
        shares.append(100 * sum(hist.counts[first:]) / total)
    return " / ".join(f"{x:.2f}" for x in shares)


def _run_delay() -> float:
    """Seconds this process has spent runnable but waiting for a CPU (Linux schedstat)."""
    try:
        with open("/proc/self/schedstat", encoding="ascii") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _housekeeping_cost(legs: list[RtpSession]) -> tuple[float, float]:
    """µs per leg of the per-second chore and of building one RTCP report (no send)."""
    now = time.monotonic()
    t0 = time.perf_counter()
    for s in legs:
        s.tick_second(now)
    t1 = time.perf_counter()
    for s in legs:
        s.rtcp.build_report()
    t2 = time.perf_counter()
    return 1e6 * (t1 - t0) / len(legs), 1e6 * (t2 - t1) / len(legs)


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine, all cores (softirq included: on loopback
    the kernel's receive work often runs in ksoftirqd, outside this process's CPU time)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


#: ``--srtp``: set once by main before any leg starts.
SRTP_ON: list[bool] = [False]
_KEY_NEAR, _KEY_FAR = bytes(range(30)), bytes(range(100, 130))


def srtp_for(near: bool) -> SrtpContext | None:
    """A leg's SRTP context (None without ``--srtp``); near and far legs have mirrored keys."""
    if not SRTP_ON[0]:
        return None
    mine, theirs = (_KEY_NEAR, _KEY_FAR) if near else (_KEY_FAR, _KEY_NEAR)
    return SrtpContext(SdesKeys(SUITES["AES_CM_128_HMAC_SHA1_80"], mine, theirs, 1))


#: ``--timer``: set once by main before any engine starts.
TIMER: list[TimerKind] = ["auto"]


async def open_legs(n: int, port_range: tuple[int, int]) -> tuple[MediaEngine, list[RtpSession]]:
    engine = MediaEngine(port_range, rand=random.Random(n), timer=TIMER[0])
    engine.start()
    codec = codec_by_name("PCMU")
    source = get_source("tone", {"frequency_hz": 1000}, codec, 20)
    return engine, [await engine.open_session(codec, 20, source) for _ in range(n)]


async def drain(legs: list[RtpSession], limit: float = 10.0) -> None:
    """Wait until no leg has received anything for 0.3 s (at most ``limit`` seconds).

    A starved process can hold a backlog of thousands of datagrams in its
    socket buffers; a fixed wait would count them as lost.
    """
    last, stable = -1, 0
    end = time.monotonic() + limit
    while time.monotonic() < end and stable < 3:
        total = sum(s.recv_stats.packets_received for s in legs)
        stable = stable + 1 if total == last else 0
        last = total
        await asyncio.sleep(0.1)


class FarEnd:
    """The partner legs in a child process (``--serve-far-end``), talking over pipes.

    Protocol, one JSON line each way: the child prints its RTP ports; the
    parent writes its own; the child starts sending; on "stop" the child stops
    sending, drains and prints per-leg ``sent``/``received`` and its CPU.
    """

    def __init__(self, n: int, port_range: tuple[int, int], loop_kind: str, gc_kind: str) -> None:
        args = [sys.executable, os.path.abspath(__file__), "--serve-far-end", str(n)]
        args += ["--port-range", f"{port_range[0]}-{port_range[1]}"]
        args += ["--loop", loop_kind, "--timer", TIMER[0], "--gc", gc_kind] + (
            ["--srtp"] if SRTP_ON[0] else []
        )
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    async def _line(self) -> Any:
        assert self.proc.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, self.proc.stdout.readline)
        if not line:
            raise RuntimeError(f"far end exited ({self.proc.wait()})")
        return json.loads(line)

    def _write(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    async def ports(self) -> list[int]:
        return list(await self._line())

    def start(self, ports: list[int]) -> None:
        self._write(ports)

    async def stop(self) -> dict[str, Any]:
        self._write("stop")
        result: dict[str, Any] = await self._line()
        self.proc.wait(10)
        return result


async def serve_far_end(n: int, port_range: tuple[int, int], gc_tuned: bool) -> None:
    """The child side of :class:`FarEnd`."""
    engine, legs = await open_legs(n, port_range)
    if gc_tuned:
        tune_gc()
    loop = asyncio.get_running_loop()
    print(json.dumps([s.local_port for s in legs]), flush=True)
    peers = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    for s, port in zip(legs, peers, strict=True):
        s.start((LOCAL, port), (LOCAL, port + 1), srtp=srtp_for(near=False))
    cpu0, wall0 = time.process_time(), time.monotonic()
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
    cpu = 100 * (time.process_time() - cpu0) / (time.monotonic() - wall0)
    for s in legs:
        s.set_sending(False)
    await drain(legs)
    out = {
        "sent": [s.send_stats.packets_sent for s in legs],
        "received": [s.recv_stats.packets_received for s in legs],
        "cpu_pct": cpu,
    }
    print(json.dumps(out), flush=True)
    await engine.close()


async def run_one(
    n: int, seconds: float, port_range: tuple[int, int], far: FarEnd | None, gc_tuned: bool
) -> Result:
    """Open ``n`` legs (in pairs, or each with a far-end leg), run them, measure, close."""
    engine, legs = await open_legs(n, port_range)
    if far is None:
        for i in range(0, n - 1, 2):
            a, b = legs[i], legs[i + 1]
            a.start((LOCAL, b.local_port), (LOCAL, b.local_rtcp_port), srtp=srtp_for(near=True))
            b.start((LOCAL, a.local_port), (LOCAL, a.local_rtcp_port), srtp=srtp_for(near=False))
    else:
        far_ports = await far.ports()
        far.start([s.local_port for s in legs])
        for s, port in zip(legs, far_ports, strict=True):
            s.start((LOCAL, port), (LOCAL, port + 1), srtp=srtp_for(near=True))
    if gc_tuned:
        tune_gc()  # as an engine shard does once its endpoints are built
    await asyncio.sleep(1.0)  # warm-up: every stream in its slot
    engine.take_clock_stats()
    sent0 = sum(s.send_stats.packets_sent for s in legs)
    recv0 = sum(s.recv_stats.packets_received for s in legs)
    load = os.getloadavg()[0]
    cpu0, wall0, busy0, delay0 = os.times(), time.monotonic(), _machine_busy(), _run_delay()
    with GcPauses() as gc_pauses:
        await asyncio.sleep(seconds)
    cpu1, wall1, busy1, delay1 = os.times(), time.monotonic(), _machine_busy(), _run_delay()
    sent1 = sum(s.send_stats.packets_sent for s in legs)
    recv1 = sum(s.recv_stats.packets_received for s in legs)
    late_shares = _late_shares(engine.clock.lateness)
    clock = engine.take_clock_stats()
    housekeeping_us, rtcp_us = _housekeeping_cost(legs)
    for s in legs:
        s.set_sending(False)
    lost, far_cpu = 0, None
    if far is None:
        await drain(legs)
        for i in range(0, n - 1, 2):
            a, b = legs[i], legs[i + 1]
            lost += a.send_stats.packets_sent - b.recv_stats.packets_received
            lost += b.send_stats.packets_sent - a.recv_stats.packets_received
    else:
        report = await far.stop()  # the far end drains, so do we meanwhile
        await drain(legs)
        far_cpu = report["cpu_pct"]
        for s, f_sent, f_recv in zip(legs, report["sent"], report["received"], strict=True):
            lost += s.send_stats.packets_sent - f_recv
            lost += f_sent - s.recv_stats.packets_received
    await engine.close()
    wall = wall1 - wall0
    packets = max((sent1 - sent0) + (recv1 - recv0), 1)
    user, system = cpu1.user - cpu0.user, cpu1.system - cpu0.system
    return Result(
        streams=n,
        seconds=wall,
        cpu_pct=100 * (user + system) / wall,
        machine_pct=100 * (busy1 - busy0) / wall,
        user_us=1e6 * user / packets,
        sys_us=1e6 * system / packets,
        lateness_p50_ms=clock.lateness_p50_ms,
        lateness_p99_ms=clock.lateness_p99_ms,
        lateness_max_ms=clock.lateness_max_ms,
        loop_lag_p99_ms=clock.loop_lag_p99_ms,
        skipped_ticks=clock.skipped_ticks,
        sent=sent1 - sent0,
        received=recv1 - recv0,
        lost=lost,
        late_shares=late_shares,
        pauses=Pauses(
            load=load,
            gc_collections=gc_pauses.count,
            gc_max_ms=1000 * gc_pauses.longest,
            run_delay_ms_per_s=1000 * (delay1 - delay0) / wall,
            housekeeping_us=housekeeping_us,
            rtcp_build_us=rtcp_us,
        ),
        far_cpu_pct=far_cpu,
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", default="250,500,1000,2000", help="comma-separated N values")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window per N")
    p.add_argument("--port-range", default="20000-29999", help="RTP ports, e.g. 20000-29999")
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument(
        "--far-end",
        choices=["same", "process"],
        default="same",
        help="partner legs in this process (pairs) or each leg's partner in a child process",
    )
    p.add_argument("--serve-far-end", type=int, metavar="N", help=argparse.SUPPRESS)
    p.add_argument("--srtp", action="store_true", help="SRTP/SRTCP on every leg (SDES-like)")
    p.add_argument(
        "--gc",
        choices=["tuned", "default"],
        default="tuned",
        help="tune the garbage collector as an engine shard does (default) or keep Python's",
    )
    p.add_argument(
        "--timer",
        choices=["auto", "timerfd", "loop"],
        default="auto",
        help="what wakes the media clock (auto: timerfd where available)",
    )
    p.add_argument("--output", help="write the markdown table to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    SRTP_ON[0] = args.srtp
    TIMER[0] = args.timer
    low, high = (int(x) for x in args.port_range.split("-"))
    counts = [int(x) for x in args.streams.split(",")]
    runner: Callable[[Coroutine[Any, Any, Any]], Any] = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    if args.serve_far_end is not None:
        runner(serve_far_end(args.serve_far_end, (low, high), args.gc == "tuned"))
        return 0
    mid = low + (high - low) // 2
    ours = (low, mid) if args.far_end == "process" else (low, high)
    lines = [
        f"`{' '.join(['python', 'bench/rtp_streams.py', *sys.argv[1:]])}` "
        f"({args.loop}, hot path {'C' if NATIVE else 'Python'}, far end {args.far_end}, "
        f"GC {args.gc}, timer {args.timer}, "
        f"{os.cpu_count()} CPUs, "
        f"load average before: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())})",
        "",
        HEADER,
    ]
    print("\n".join(lines), flush=True)
    for n in counts:
        far = None
        if args.far_end == "process":
            far = FarEnd(n, (mid + 2, high), args.loop, args.gc)
        result = runner(run_one(n, args.seconds, ours, far, args.gc == "tuned"))
        lines.append(result.row())
        print(result.row(), flush=True)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
