"""How much cyclic garbage finished calls leave, and what a full collection then costs.

Run from the repository root (under the CPU lock, the figures are timings)::

    flock /tmp/sipswarm-cpu.lock python -m tests.engine.gc_pause --pairs 500 [--no-rtp]

One engine on 127.0.0.1 runs ``--pairs`` receivers and as many callers calling them
(both ends are sipswarm endpoints, so 2 x pairs endpoints finish), ramped at
``--rate`` calls/s, with the cyclic collector off as in a long run between two
collections. When every endpoint closed, the SIP stacks are run past their
transaction timers (as 32 s later), then one ``gc.collect()`` is timed: the
objects it freed are what reference counting could not free. A second collection
right after is the cost of a full pass over what is alive (no garbage).
tests/engine/test_no_cycles.py is the pass/fail check; this prints figures for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections import Counter

from .engine_harness import Collector, assignment, endpoint, make_engine
from .test_no_cycles import _expire_sip_state


def _collect() -> tuple[int, float]:
    """One full collection: objects freed and milliseconds taken."""
    t0 = time.perf_counter()
    freed = gc.collect()
    return freed, (time.perf_counter() - t0) * 1000


async def _run(pairs: int, rate: float, rtp: bool) -> tuple[Counter[str], list[tuple[int, float]]]:
    """Run the calls; the outcomes and two collections (the engine still up, as in a shard)."""
    items = Collector()
    engine = make_engine(items, max_endpoints=2 * pairs)
    try:
        receivers = [endpoint(f"g/rx{i}", "receiver", user=f"rx{i}", duration_s=60,
                              expected_calls=1) for i in range(pairs)]  # fmt: skip
        for ep in receivers:
            ep["media"]["rtp"] = rtp
        await engine.start_assignment(assignment("g", *receivers, trace="none"))
        callers = []
        for i in range(pairs):
            contact = await items.contact(f"g/rx{i}", timeout=60)
            ep = endpoint(f"g/tx{i}", "caller", target=contact, duration_s=1.0,
                          offset_ms=int(i * 1000 / rate))  # fmt: skip
            ep["media"]["rtp"] = rtp
            callers.append(ep)
        await engine.start_assignment(assignment("g", *callers, trace="none"))
        await asyncio.wait_for(engine.wait_idle(), 60 + pairs / rate)
        await asyncio.sleep(0)
        _expire_sip_state(engine)
        collections = [_collect(), _collect()]
        return Counter(i["outcome"] for i in items.of("outcome")), collections
    finally:
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--rate", type=float, default=200.0, help="calls started per second")
    parser.add_argument("--no-rtp", action="store_true", help="media.rtp false")
    args = parser.parse_args()
    gc.collect()
    gc.freeze()  # as tune_gc does: what exists before the run is not scanned
    gc.disable()
    outcomes, [(freed, full_ms), (again, empty_ms)] = asyncio.run(
        _run(args.pairs, args.rate, not args.no_rtp)
    )
    endpoints = 2 * args.pairs
    print(f"endpoints {endpoints} ({'rtp' if not args.no_rtp else 'signalling only'}), "
          f"outcomes {dict(outcomes)}")  # fmt: skip
    print(f"full collection: {freed} objects freed ({freed / endpoints:.1f} per endpoint), "
          f"{full_ms:.1f} ms; next one: {again} freed, {empty_ms:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
