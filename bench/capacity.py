"""RTP capacity side by side with SIPp: concurrent bidirectional G.711 calls.

    python bench/capacity.py --calls 250,500,1000 --window 10

At each level N, one after the other, on 127.0.0.1 (no proxy: Kamailio is
never on the media path):

* ``sipp>echo``   SIPp UAC with ``rtp_stream`` (PCMU 20 ms, looped 440 Hz)
  -> SIPp UAS ``-rtp_echo`` (the testbed's reference; SIPp's UAC never reads
  the echoed RTP, so it has no loss, jitter or MOS of its own);
* ``swarm>echo``  sipswarm callers (``--shards``, default 1: the per-core
  figure) -> the same SIPp echo UAS; every leg sends a tone and keeps full
  receive statistics (loss, jitter, E-model MOS) of the echo;
* ``swarm>swarm`` sipswarm callers and sipswarm receivers (``--e2e-shards``
  engine processes, default 2, holding both ends) -> 2N legs in sipswarm.

The echo side is one SIPp UAS per ``--per-echo`` calls (250): one SIPp echo
thread overflows the default 208 KiB socket buffer from ~300-1000 calls
(testbed notes); this script does not change ``net.core.rmem_default`` on a
shared machine. Calls ramp up at ``--ramp`` calls/s; once all are up and
``--settle`` seconds passed, a ``--window`` s window is measured: CPU of the
generator tree and of the echo UASes (``/proc/<pid>/stat``), send lateness
p50/p99 and loop lag p99 of the engine's media clock (per shard, per second,
bench/bench_engine.py), and, from the engine's own ``metrics`` items at the
end of the window, receive loss, jitter and MOS over all legs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

import harness
from harness import (
    LOOPBACK_ONLY,
    SCENARIOS,
    ManagedProcess,
    SippUas,
    free_port,
    media_port,
    start_sipp_uas,
    write_ulaw_tone,
)

MODES = ("sipp>echo", "swarm>echo", "swarm>swarm")


@dataclass
class Level:
    calls: int
    mode: str
    legs: int
    cpu: dict[str, float]
    answered: int = 0
    clock: dict[str, float | None] = field(default_factory=dict)
    quality: dict[str, float | None] = field(default_factory=dict)
    warnings: int = 0

    @property
    def cpu_per_leg(self) -> float | None:
        return self.cpu["gen"] / self.legs if self.legs else None


def quality(metrics: list[dict[str, Any]], prefix: str) -> dict[str, float | None]:
    """Loss, jitter and MOS over the legs of the last metrics item of the window."""
    last: dict[str, dict[str, Any]] = {}
    for item in metrics:
        for ep in item["endpoints"]:
            if ep["endpoint_id"].startswith(prefix) and ep.get("recv"):
                last[ep["endpoint_id"]] = ep["recv"]
    if not last:
        return dict.fromkeys(("legs", "lost", "received", "jitter_mean", "jitter_max", "mos"))
    recv = list(last.values())
    lost = sum(r.get("packets_lost") or 0 for r in recv)
    got = sum(r.get("packets_received") or 0 for r in recv)
    jit = [r["jitter_ms"] for r in recv if r.get("jitter_ms") is not None]
    mos = [r["mos"] for r in recv if r.get("mos") is not None]
    return {
        "legs": float(len(recv)),
        "lost": float(lost),
        "received": float(got),
        "jitter_mean": sum(jit) / len(jit) if jit else None,
        "jitter_max": max(jit) if jit else None,
        "mos": min(mos) if mos else None,
        "mos_mean": sum(mos) / len(mos) if mos else None,
    }


def start_echoes(workdir: Path, calls: int, per: int) -> list[SippUas]:
    return [start_sipp_uas(workdir, "answer", rtp_echo=True) for _ in range(-(-calls // per))]


def stop_all(uases: list[SippUas]) -> None:
    for uas in uases:
        uas.stop()


async def measure(meter: harness.CpuMeter, seconds: float, poll: Any = None) -> None:
    meter.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        meter.sample()
        if poll is not None:
            poll()
        await asyncio.sleep(0.25)
    meter.stop()


async def run_sipp(args: argparse.Namespace, workdir: Path, calls: int) -> Level:
    """SIPp UACs with rtp_stream, one per echo UAS, ``per-echo`` calls each."""
    echoes = start_echoes(workdir, calls, args.per_echo)
    tone = write_ulaw_tone(workdir / "tone.ul", 1.0)
    text = (SCENARIOS / "uac.xml").read_text()
    scenario = workdir / "uac_rtp.xml"
    stream = f'<nop><action><exec rtp_stream="{tone},-1,0"/></action></nop>'
    scenario.write_text(text.replace("<!-- @RTP@ -->", stream))
    csv = workdir / "acc.csv"
    csv.write_text("SEQUENTIAL\nsipp;service;-\n")
    hold = calls / args.ramp + args.settle + args.window + 3
    uacs = []
    for i, uas in enumerate(echoes):
        n = min(args.per_echo, calls - i * args.per_echo)
        # fmt: off
        argv = ["sipp", f"{uas.address[0]}:{uas.address[1]}", "-sf", str(scenario),
                *LOOPBACK_ONLY, "-inf", str(csv), "-p", str(free_port(("udp", "tcp"))),
                "-mp", str(media_port()), "-cp", str(free_port(("udp",))), "-t", "u1",
                "-m", str(n), "-r", str(args.ramp / len(echoes)), "-d", str(int(hold * 1000)),
                "-l", str(n), "-timeout", f"{int(hold) + 60}s"]
        # fmt: on
        uacs.append(ManagedProcess(argv, workdir / f"uac-{calls}-{i}.log"))
    try:
        await asyncio.sleep(calls / args.ramp + args.settle)
        trees: dict[str, int | list[int]] = {f"uac{i}": p.pid for i, p in enumerate(uacs)}
        trees.update({f"echo{i}": u.process.pid for i, u in enumerate(echoes)})
        meter = harness.CpuMeter(trees)
        await measure(meter, args.window)
    finally:
        for p in uacs:
            p.stop()
        stop_all(echoes)
    cpu = {
        "gen": sum(meter.percent(k) for k in trees if k.startswith("uac")),
        "far": sum(meter.percent(k) for k in trees if k.startswith("echo")),
    }
    return Level(calls, "sipp>echo", calls, cpu)


async def run_swarm_echo(args: argparse.Namespace, workdir: Path, calls: int) -> Level:
    echoes = start_echoes(workdir, calls, args.per_echo)
    driver = harness.SwarmDriver(args.shards, calls + 10, (20000, 39999))
    driver.items.keep_metrics = True
    await driver.start()
    try:
        hold = calls / args.ramp + args.settle + args.window + 2
        eps = []
        for i in range(calls):
            uas = echoes[i // args.per_echo]
            target = f"sip:service@{uas.address[0]}:{uas.address[1]}"
            offset = int(i * 1000 / args.ramp)
            eps.append(
                harness.caller(
                    f"c/{i}", "swarm", "", target, uas.address,
                    offset_ms=offset, duration_s=hold, source="tone",
                )
            )  # fmt: skip
        aid = await driver.assign(f"echo{calls}", eps)
        level = await window(args, driver, calls, calls, "c/", aid, echoes_pids(echoes))
        level.mode = "swarm>echo"
        return level
    finally:
        await driver.close()
        stop_all(echoes)


def echoes_pids(echoes: list[SippUas]) -> dict[str, int | list[int]]:
    return {f"echo{i}": u.process.pid for i, u in enumerate(echoes)}


async def window(
    args: argparse.Namespace,
    driver: harness.SwarmDriver,
    calls: int,
    legs: int,
    prefix: str,
    aid: str,
    far: dict[str, int | list[int]],
) -> Level:
    """Wait for the ramp and settle, measure the window, then wait for the end."""
    ramp_end = time.monotonic() + calls / args.ramp + args.settle
    while time.monotonic() < ramp_end:
        driver.poll_clock()
        await asyncio.sleep(0.25)
    driver.clock_summary()
    driver.items.metrics.clear()
    meter = harness.CpuMeter({"gen": driver.generator_pids(), **far})
    await measure(meter, args.window, driver.poll_clock)
    clock = driver.clock_summary()
    q = quality(driver.items.metrics, prefix)
    driver.items.metrics.clear()
    driver.items.keep_metrics = False
    await driver.wait_finished([aid], args.window + calls / args.ramp + 60)
    cpu = {"gen": meter.percent("gen"), "far": sum(meter.percent(k) for k in far)}
    level = Level(calls, "", legs, cpu, driver.items.calls.get("answered", 0), clock, q)
    level.warnings = driver.items.outcomes.get("COMPLETED_WITH_WARNINGS", 0)
    return level


async def run_swarm_swarm(args: argparse.Namespace, workdir: Path, calls: int) -> Level:
    # room for a stale per-shard free count (status every 250 ms) when the split is computed
    driver = harness.SwarmDriver(args.e2e_shards, 4 * calls + 10, (20000, 39999))
    driver.items.keep_metrics = True
    await driver.start()
    try:
        hold = calls / args.ramp + args.settle + args.window + 2
        receivers = [
            harness.receiver(f"r/{i}", f"r{i}", idle_s=hold + 60, duration_s=hold + 30)
            for i in range(calls)
        ]
        raid = await driver.assign(f"e2e{calls}", receivers)
        deadline = time.monotonic() + 30
        while len(driver.items.contacts) < calls and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        eps = []
        for i in range(calls):
            contact = driver.items.contacts[f"r/{i}"]
            hostport = contact.split("@", 1)[1].split(";", 1)[0].rstrip(">")
            host, port = hostport.rsplit(":", 1)
            offset = int(i * 1000 / args.ramp)
            eps.append(
                harness.caller(
                    f"c/{i}", "swarm", "", f"sip:r{i}@{hostport}", (host, int(port)),
                    offset_ms=offset, duration_s=hold, source="tone",
                )
            )  # fmt: skip
        aid = await driver.assign(f"e2e{calls}", eps)
        level = await window(args, driver, calls, 2 * calls, "", aid, {})
        await driver.wait_finished([raid], 30)
        level.mode = "swarm>swarm"
        return level
    finally:
        await driver.close()


RUNNERS = {"sipp>echo": run_sipp, "swarm>echo": run_swarm_echo, "swarm>swarm": run_swarm_swarm}


def report(levels: list[Level], machine: dict[str, str]) -> None:
    print("\nmachine:", json.dumps(machine), "| after:", harness.machine()["loadavg"])
    rows = []
    for lv in levels:
        q, c = lv.quality, lv.clock
        loss = None
        if q.get("received") is not None:
            total = (q["lost"] or 0) + (q["received"] or 0)
            loss = 100 * (q["lost"] or 0) / total if total else None
        # fmt: off
        rows.append([lv.calls, lv.mode, lv.legs, lv.cpu["gen"], lv.cpu_per_leg, lv.cpu["far"],
                     c.get("p50"), c.get("p99"), c.get("p99_worst"), loss, q.get("jitter_mean"),
                     q.get("jitter_max"), q.get("mos_mean"), q.get("mos"), c.get("lag_p99"),
                     c.get("lag_worst"), lv.warnings])
    harness.print_table(
        [
            "calls",
            "generator > far end",
            "generator legs",
            "generator CPU %",
            "CPU % per leg",
            "far end CPU %",
            "lateness p50 ms",
            "lateness p99 ms (mean of s)",
            "lateness p99 worst s",
            "recv loss %",
            "jitter mean ms",
            "jitter max ms",
            "MOS mean",
            "MOS min",
            "loop lag p99 ms (mean)",
            "loop lag p99 worst s",
            "COMPLETED_WITH_WARNINGS",
        ],
        rows,
    )
    # fmt: on
    by = {(lv.calls, lv.mode): lv for lv in levels}
    ratio_rows = []
    for calls in sorted({lv.calls for lv in levels}):
        s, w = by.get((calls, "sipp>echo")), by.get((calls, "swarm>echo"))
        e = by.get((calls, "swarm>swarm"))
        ratio_rows.append(
            [calls,
             harness.ratio(w.cpu_per_leg, s.cpu_per_leg) if w and s else None,
             harness.ratio(e.cpu_per_leg, s.cpu_per_leg) if e and s else None]
        )  # fmt: skip
    harness.print_table(
        ["calls", "CPU per leg swarm>echo ÷ SIPp UAC", "CPU per leg swarm>swarm ÷ SIPp UAC"],
        ratio_rows,
    )


async def amain(args: argparse.Namespace) -> None:
    machine = harness.machine()
    print("machine:", json.dumps(machine))
    levels = []
    with tempfile.TemporaryDirectory(prefix="sipswarm-cap-") as tmp:
        for calls in [int(x) for x in args.calls.split(",")]:
            for mode in args.modes.split(","):
                await asyncio.sleep(2)
                level = await RUNNERS[mode](args, Path(tmp), calls)
                levels.append(level)
                print(f"{calls} {mode}: cpu {level.cpu} clock {level.clock} q {level.quality}",
                      flush=True)  # fmt: skip
    report(levels, machine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", default="250,500,1000")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--ramp", type=float, default=200.0, help="calls per second")
    parser.add_argument("--per-echo", type=int, default=250, help="calls per SIPp echo UAS")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--e2e-shards", type=int, default=2)
    uvloop.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
