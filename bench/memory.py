"""Memory per idle endpoint: RSS growth of one engine shard per registered receiver.

    python bench/memory.py --endpoints 1000,5000

One engine shard (``--shards 1``; the supervisor is this process) takes N
receivers that register to Kamailio (digest auth, users 10000.., one AoR
each; ``--no-register``: they only listen, ``register: false``) and then sit
idle, waiting for a call that never comes. Once every receiver is REGISTERED
and ``--settle`` seconds passed, the shard's RSS minus its RSS before the
assignment, divided by N, is the cost of an idle endpoint (the target is
40 KB). The shard's open file descriptors show whether idle endpoints hold
sockets (they should not hold RTP ports). The run is then cancelled
(un-REGISTER) and the next level starts in a fresh shard.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import psutil
import uvloop

import harness


def idle_receiver(
    eid: str, user: str, password: str, registrar: tuple[str, int] | None
) -> dict[str, Any]:
    ep = harness.receiver(eid, user, idle_s=3600, duration_s=10)
    if registrar is not None:
        ep["account"]["password"] = password
        ep["registrar"] = {
            "domain": harness.LOOPBACK,
            "host": registrar[0],
            "port": registrar[1],
            "transport": "udp",
            "register": True,
            "expires_s": 3600,
        }
    return ep


async def level(args: argparse.Namespace, n: int, registrar: tuple[str, int] | None) -> list[Any]:
    driver = harness.SwarmDriver(1, n + 10, (20000, 39999))
    await driver.start()
    try:
        shard = psutil.Process(driver.shard_pids()[0])
        await asyncio.sleep(2)
        rss0, fds0 = shard.memory_info().rss, shard.num_fds()
        sup0 = psutil.Process().memory_info().rss
        eps = [
            idle_receiver(f"m/{i}", str(10000 + i), f"secret{10000 + i}", registrar)
            for i in range(n)
        ]
        for ep in eps:
            ep["start_offset_ms"] = int(int(ep["endpoint_id"][2:]) * 1000 / args.rate)
        t0 = time.monotonic()
        await driver.assign(f"mem{n}", eps)
        deadline = t0 + n / args.rate + 60
        while driver.items.phases["REGISTERED"] < n and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        reached = driver.items.phases["REGISTERED"]
        await asyncio.sleep(args.settle)
        rss1, fds1 = shard.memory_info().rss, shard.num_fds()
        sup1 = psutil.Process().memory_info().rss
        await driver.backend.cancel_run(f"mem{n}", "benchmark over")
        failed = dict(driver.items.reasons.most_common(3))
    finally:
        await driver.close()
    per = (rss1 - rss0) / n / 1024
    # fmt: off
    return [n, "register" if registrar else "listen", reached, rss0 / 2**20, rss1 / 2**20,
            per, fds0, fds1, (sup1 - sup0) / n / 1024, json.dumps(failed) if failed else ""]
    # fmt: on


async def amain(args: argparse.Namespace) -> None:
    machine = harness.machine()
    print("machine:", json.dumps(machine))
    counts = [int(x) for x in args.endpoints.split(",")]
    kam = None
    if not args.no_register:
        opts = harness.kamailio_peer.KamailioOptions(
            tls=False, children=4, shm_mb=256, users=range(10000, 10000 + max(counts))
        )
        kam = harness.kamailio_peer.start_kamailio(opts)
    rows = []
    try:
        for n in counts:
            rows.append(await level(args, n, kam.address("udp") if kam else None))
            print(rows[-1], flush=True)
    finally:
        if kam is not None:
            kam.stop()
    print("\nmachine:", json.dumps(machine), "| after:", harness.machine()["loadavg"])
    # fmt: off
    harness.print_table(
        ["endpoints", "mode", "REGISTERED", "shard RSS before MiB", "shard RSS after MiB",
         "KB per idle endpoint (shard)", "shard fds before", "shard fds after",
         "KB per endpoint (supervisor, item buffers)", "failures"],
        rows,
    )
    # fmt: on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--endpoints", default="1000,5000")
    parser.add_argument("--rate", type=float, default=500.0, help="registrations per second")
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--no-register", action="store_true")
    uvloop.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
