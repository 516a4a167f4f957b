"""Call rate side by side with SIPp: sipswarm callers and SIPp's UAC through Kamailio.

    python bench/call_rate.py --rates 100,200,400,700,1000,1400 --seconds 12

Kamailio (digest auth on every INVITE: 407, ACK, INVITE with credentials, as
in /work/shared/testbed) runs on 127.0.0.1 with 4 UDP workers. Two far ends
are registered to it: SIPp's UAS (AoRs 1500-1599) and a sipswarm engine
answering every call (bench/swarm_answer.py, AoRs 1600-1699). At each rate,
one after the other, for ``--seconds`` each:

* ``sipp>sipp``   SIPp UAC -> SIPp UAS (the testbed's reference)
* ``swarm>sipp``  sipswarm callers (``--shards`` engine processes) -> SIPp UAS
* ``swarm>swarm`` sipswarm callers -> sipswarm far end
* ``sipp>swarm``  SIPp UAC -> sipswarm far end (the far ends compared)

Calls hold ``--hold-ms`` (100 ms: a sipswarm call lasts at least 0.1 s) and
carry no media, on either side: the sipswarm callers and far end run
signalling-only calls (``media.rtp: false``, docs/protocol.md: SDP offered and
answered with the codecs, ``a=inactive`` on the discard port 9, no RTP socket,
no packet), as SIPp's UAC and UAS send none here. ``--media`` gives the old
shape instead (an RTP pair bound per call and the ~5 packets of its 0.1 s). CPU comes from
``/proc/<pid>/stat`` deltas of whole process trees over the run: the
generator (SIPp UAC; or this process, which plays the agent supervisor, plus
its shard processes), Kamailio (main + workers), the far end; "other" is the
rest of the machine. Every process shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import uvloop

import harness
from harness import (
    LOOPBACK_ONLY,
    SCENARIOS,
    Kamailio,
    KamailioOptions,
    ManagedProcess,
    SippUas,
    free_port,
    media_port,
    parse_trace_stat,
    run_sipp_register,
    start_kamailio,
    start_sipp_uas,
    wait_until,
)
from sipswarm.errors import ResourceError

MODES = ("sipp>sipp", "swarm>sipp", "swarm>swarm", "sipp>swarm")
CALLERS = range(1000, 1500)
SIPP_CALLEES = range(1500, 1600)
SWARM_CALLEES = range(1600, 1700)


@dataclass
class Result:
    rate: int
    mode: str
    attempted: int
    answered: int
    failed: int
    wall_s: float
    cpu: dict[str, float]
    seconds: dict[str, float]
    lag_p99: float | None = None
    drops: dict[str, int] | None = None

    @property
    def cpu_ms_per_call(self) -> float | None:
        return self.ms_per_call("gen") if self.attempted else None

    def ms_per_call(self, tree: str) -> float:
        """CPU milliseconds of one measured tree per attempted call."""
        return 1000 * self.seconds.get(tree, 0.0) / self.attempted if self.attempted else 0.0


class Bed:
    """Kamailio, both far ends and the sipswarm callers; ``close()`` stops them by PID."""

    def __init__(self, workdir: Path, shards: int, rtp: bool = False, far_gc: str = "tuned",
                 trace: str = "none") -> None:  # fmt: skip
        self.workdir = workdir
        self.shards = shards
        self.rtp = rtp  # sipswarm calls with media (--media), else signalling only
        self.far_gc = far_gc
        self.trace = trace  # the sipswarm callers' trace setting
        self.kam: Kamailio | None = None
        self.uas: SippUas | None = None
        self.far: ManagedProcess | None = None
        self.far_port = 0
        self.driver: harness.SwarmDriver | None = None

    async def open(self) -> None:
        opts = KamailioOptions(tls=False, children=4, shm_mb=256, pkg_mb=16)
        self.kam = start_kamailio(opts)
        self.uas = start_sipp_uas(self.workdir, "answer")
        self.far_port = free_port(("udp",))
        argv = ["python", str(harness.BENCH / "swarm_answer.py"), "--port", str(self.far_port),
                "--duration", "30", "--rtp-ports", "40000-49999"]  # fmt: skip
        if not self.rtp:
            argv.append("--no-rtp")
        argv += ["--gc", self.far_gc]
        env_path = f"{harness.ROOT / 'src'}:{harness.BENCH}:{harness.ROOT}"
        os.environ["PYTHONPATH"] = env_path
        self.far = ManagedProcess(argv, self.workdir / "swarm_answer.log")
        far = self.far
        wait_until(lambda: b"ready" in far.log_path.read_bytes(), 20, "swarm_answer")
        kam = self.kam.address("udp")
        for callees, address in (
            (SIPP_CALLEES, self.uas.address),
            (SWARM_CALLEES, (harness.LOOPBACK, self.far_port)),
        ):
            users = [(str(u), self.kam.password(str(u))) for u in callees]
            reg = run_sipp_register(self.workdir, kam, users, address, expires=3600)
            if reg.stats.failed or reg.stats.successful != len(users):
                raise RuntimeError(f"registration of {callees} failed: {reg.stats}")
        self.driver = harness.SwarmDriver(self.shards, 40_000, (20000, 39999), self.trace)
        await self.driver.start()

    async def close(self) -> str:
        far_report = ""
        if self.driver is not None:
            await self.driver.close()
        if self.far is not None:
            os.kill(self.far.pid, signal.SIGTERM)
            await asyncio.sleep(2)
            far_report = self.far.log_tail(1)
            self.far.stop()
        if self.uas is not None:
            self.uas.stop()
        if self.kam is not None:
            self.kam.stop()
        return far_report

    def trees(self, generator: int | list[int]) -> dict[str, int | list[int]]:
        assert self.kam and self.uas and self.far and self.driver
        return {
            "gen": generator,
            "kamailio": self.kam.pid,
            "sipp_uas": self.uas.process.pid,
            "swarm_far": self.far.pid,
            "swarm_callers": self.driver.generator_pids(),
            "supervisor": [os.getpid()],
            "shards": self.driver.shard_pids(),
        }

    def drops(self) -> dict[str, int]:
        """UDP receive drops so far on the sockets of the callers' shards and the far ends."""
        assert self.uas and self.far and self.driver
        return {
            "shards": harness.udp_drops(self.driver.shard_pids()),
            "swarm_far": harness.udp_drops(harness.tree_pids(self.far.pid)),
            "sipp_uas": harness.udp_drops([self.uas.process.pid]),
        }


async def run_sipp(bed: Bed, rate: int, seconds: int, hold_ms: int, callees: range) -> Result:
    """SIPp's UAC: rate x seconds calls through Kamailio."""
    assert bed.kam is not None
    calls = rate * seconds
    rows = [f"{u};{callees[i % len(callees)]};{bed.kam.password(str(u))}"
            for i, u in enumerate(CALLERS)]  # fmt: skip
    csv = bed.workdir / "callers.csv"
    csv.write_text("SEQUENTIAL\n" + "\n".join(rows) + "\n")
    name = f"uac-{rate}-{callees[0]}"
    stat = bed.workdir / f"{name}.csv"
    host, port = bed.kam.address("udp")
    errors = bed.workdir / f"{name}.err"
    argv = ["sipp", f"{host}:{port}", "-sf", str(uac_scenario(bed.workdir)), *LOOPBACK_ONLY,
            "-inf", str(csv), "-p", str(free_port(("udp", "tcp"))), "-mp", str(media_port()),
            "-cp", str(free_port(("udp",))), "-t", "u1", "-m", str(calls), "-r", str(rate),
            "-d", str(hold_ms), "-l", "10000", "-timeout", f"{seconds + 40}s", "-timeout_error",
            "-recv_timeout", "10000", "-trace_stat", "-stf", str(stat), "-fd", "1",
            "-trace_err", "-error_file", str(errors)]  # fmt: skip
    proc = ManagedProcess(argv, bed.workdir / f"{name}.log")
    meter = harness.CpuMeter(bed.trees(proc.pid))
    drops = bed.drops()
    meter.start()
    deadline = time.monotonic() + seconds + 60
    while proc.running() and time.monotonic() < deadline:
        meter.sample()
        await asyncio.sleep(0.2)
    meter.stop()
    proc.stop()
    stats = parse_trace_stat(stat)
    if stats is None:
        raise RuntimeError(f"sipp wrote no statistics:\n{proc.log_tail()}")
    if stats.failed:
        print_sipp_errors(errors)
    mode = "sipp>sipp" if callees is SIPP_CALLEES else "sipp>swarm"
    return Result(rate, mode, stats.created, stats.successful, stats.failed, meter.wall,
                  {k: meter.percent(k) for k in meter.seconds}, meter.seconds,
                  drops=_delta(bed.drops(), drops))  # fmt: skip


def uac_scenario(workdir: Path) -> Path:
    """tests/peers' uac.xml, accepting a 180 that arrives after the 200.

    Kamailio's UDP workers relay replies in parallel, so from ~400 cps a 180
    can arrive after the 200 (testbed README, "Reordering"); SIPp then fails
    the call as an unexpected message, which says nothing about the far end.
    The 180 to the authenticated INVITE is made ``optional="global"`` here.
    """
    path = workdir / "uac-reorder.xml"
    text = (SCENARIOS / "uac.xml").read_text()
    late_180 = '<recv response="180" optional="true"/>'
    head, sep, tail = text.rpartition(late_180)
    if not sep:
        raise RuntimeError("tests/peers/scenarios/uac.xml changed: no optional 180 to relax")
    path.write_text(head + '<recv response="180" optional="global" advance_state="false"/>' + tail)
    return path


def print_sipp_errors(path: Path, lines: int = 3) -> None:
    """The first distinct reasons in a SIPp -trace_err file (why calls failed)."""
    if not path.exists():
        return
    seen: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        if "] " in line and ("Aborting" in line or "unexpected" in line.lower()):
            key = line.split("] ", 1)[1][:100]
            seen[key] = seen.get(key, 0) + 1
    for key, count in sorted(seen.items(), key=lambda kv: -kv[1])[:lines]:
        print(f"  sipp: {count} x {key}")


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


async def run_swarm(bed: Bed, rate: int, seconds: int, hold_ms: int, callees: range) -> Result:
    """sipswarm callers: one assignment per second of calls, sent a second ahead."""
    assert bed.kam is not None and bed.driver is not None
    driver = bed.driver
    kam = bed.kam.address("udp")
    run_id = f"rate{rate}-{callees[0]}-{time.monotonic_ns()}"
    before = driver.items.calls.copy()
    reasons_before = driver.items.reasons.copy()
    meter = harness.CpuMeter(bed.trees(driver.generator_pids()))
    drops = bed.drops()
    meter.start()
    sampled = time.monotonic()
    t0 = int(time.time() * 1000) + 1000
    ids = []
    driver.clock_summary()
    for k in range(seconds):
        eps = []
        for i in range(rate):
            n = k * rate + i
            user = str(CALLERS[n % len(CALLERS)])
            target = f"sip:{callees[n % len(callees)]}@{kam[0]}:{kam[1]}"
            password = bed.kam.password(user)
            offset, hold = i * 1000 // rate, hold_ms / 1000
            eps.append(
                harness.caller(f"{run_id}/{n}", user, password, target, kam,
                               offset_ms=offset, duration_s=hold, rtp=bed.rtp)
            )  # fmt: skip
        try:
            ids.append(await driver.assign(run_id, eps, t0 + k * 1000))
        except ResourceError as exc:  # endpoints of failing calls still hold their slots
            print(f"  second {k}: generator refused the assignment: {exc}")
            break
        while time.time() * 1000 < t0 + k * 1000 - 300:
            driver.poll_clock()
            if time.monotonic() - sampled > 0.5:
                meter.sample()
                sampled = time.monotonic()
            await asyncio.sleep(0.05)
    done = await driver.wait_finished(ids, seconds + 60)
    driver.poll_clock()
    meter.stop()
    calls = driver.items.calls - before
    attempted = rate * seconds
    answered = calls.get("answered", 0)
    if not done:
        print(f"  warning: {run_id} did not finish in time")
    for reason, count in (driver.items.reasons - reasons_before).most_common(3):
        print(f"  {count} x {reason}")
    mode = "swarm>sipp" if callees is SIPP_CALLEES else "swarm>swarm"
    lag = driver.clock_summary()["lag_worst"]
    return Result(rate, mode, attempted, answered, attempted - answered, meter.wall,
                  {k: meter.percent(k) for k in meter.seconds}, meter.seconds, lag,
                  _delta(bed.drops(), drops))  # fmt: skip


RUNNERS = {
    "sipp>sipp": (run_sipp, SIPP_CALLEES),
    "swarm>sipp": (run_swarm, SIPP_CALLEES),
    "swarm>swarm": (run_swarm, SWARM_CALLEES),
    "sipp>swarm": (run_sipp, SWARM_CALLEES),
}


def report(results: list[Result], machine_before: dict[str, str]) -> None:
    print("\nmachine:", json.dumps(machine_before), "| after:", harness.machine()["loadavg"])
    rows = []
    for r in results:
        far = "sipp_uas" if r.mode.endswith(">sipp") else "swarm_far"
        swarm = r.mode.startswith("swarm")
        idle = None if swarm else r.cpu["swarm_callers"]
        split = (
            f"{r.ms_per_call('supervisor'):.2f} + {r.ms_per_call('shards'):.2f}"
            if swarm and r.attempted
            else None
        )
        drops = r.drops or {}
        lost = f"{drops.get('shards', 0)} / {drops.get(far, 0)}" if drops else None
        # fmt: off
        rows.append([r.rate, r.mode, r.attempted, r.answered, r.failed,
                     round(r.answered / r.wall_s, 1), r.cpu["gen"], r.cpu_ms_per_call, split,
                     r.cpu["kamailio"], r.cpu[far], idle, r.lag_p99, lost])
    harness.print_table(
        [
            "cps",
            "generator > far end",
            "attempted",
            "answered",
            "failed",
            "answered/s (run wall)",
            "generator CPU %",
            "generator CPU ms/call",
            "of which supervisor + shards ms/call",
            "kamailio CPU %",
            "far end CPU %",
            "idle sipswarm callers CPU %",
            "swarm loop lag p99 ms (worst s)",
            "UDP drops callers' shards / far end",
        ],
        rows,
    )
    # fmt: on
    by = {(r.rate, r.mode): r for r in results}
    print("\nsipswarm / SIPp, same rate, same run (generator CPU per call; far end CPU %):")
    ratio_rows = []
    for rate in sorted({r.rate for r in results}):
        s, w = by.get((rate, "sipp>sipp")), by.get((rate, "swarm>sipp"))
        ws, ss = by.get((rate, "swarm>swarm")), by.get((rate, "sipp>swarm"))
        ratio_rows.append([
            rate,
            harness.ratio(w.cpu_ms_per_call, s.cpu_ms_per_call) if w and s else None,
            harness.ratio(ws.cpu_ms_per_call, s.cpu_ms_per_call) if ws and s else None,
            harness.ratio(ss.cpu["swarm_far"], s.cpu["sipp_uas"]) if ss and s else None,
        ])  # fmt: skip
    # fmt: off
    harness.print_table(
        ["cps", "caller CPU/call swarm>sipp ÷ sipp>sipp", "caller CPU/call swarm>swarm ÷ sipp>sipp",
         "far end CPU sipswarm ÷ SIPp UAS (SIPp UAC calling)"],
        ratio_rows,
    )
    # fmt: on
    for mode in MODES:
        clean = [r.rate for r in results if r.mode == mode and r.failed == 0 and r.attempted]
        print(f"highest rate with 0 failed calls, {mode}: {max(clean) if clean else '-'}")


async def amain(args: argparse.Namespace) -> None:
    machine = harness.machine()
    print("machine:", json.dumps(machine))
    print(
        "sipswarm calls:",
        "with RTP (--media)" if args.media else "signalling only (media.rtp false)",
        f"trace: {args.trace}",
    )
    with tempfile.TemporaryDirectory(prefix="sipswarm-rate-") as tmp:
        bed = Bed(Path(tmp), args.shards, rtp=args.media, far_gc=args.far_gc, trace=args.trace)
        results: list[Result] = []
        try:
            await bed.open()
            for rate in [int(x) for x in args.rates.split(",")]:
                for mode in args.modes.split(","):
                    runner, callees = RUNNERS[mode]
                    await asyncio.sleep(args.pause)
                    r = await runner(bed, rate, args.seconds, args.hold_ms, callees)
                    results.append(r)
                    print(f"{rate:5d} cps {mode:12s} attempted {r.attempted} answered "
                          f"{r.answered} failed {r.failed} gen {r.cpu['gen']:.1f}% "
                          f"({r.cpu_ms_per_call or 0:.3f} ms/call) kam {r.cpu['kamailio']:.1f}%",
                          flush=True)  # fmt: skip
        finally:
            far = await bed.close()
        print("sipswarm far end:", far[:400])
        report(results, machine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="100,200,400,700,1000,1400")
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--hold-ms", type=int, default=100)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between runs")
    parser.add_argument(
        "--far-gc",
        choices=("tuned", "default"),
        default="tuned",
        help="the sipswarm far end's GC: tuned as a shard's, or Python's",
    )
    parser.add_argument(
        "--trace", choices=("none", "failures", "all"), default="none",
        help="the sipswarm callers' trace setting (none; a plan's default is failures)",
    )  # fmt: skip
    parser.add_argument("--media", action="store_true",
                        help="sipswarm calls carry RTP (default: signalling only, media.rtp "
                             "false, as SIPp's UAC/UAS here)")  # fmt: skip
    args = parser.parse_args()
    uvloop.run(amain(args))


if __name__ == "__main__":
    main()
