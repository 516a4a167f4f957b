"""A finished call leaves no reference cycle: reference counting alone frees its objects.

Why: an engine shard tunes the cyclic collector down (``agent/shard_process.tune_gc``),
so cyclic garbage piles up and a full collection pauses the process, and the media
clock with it, for as long as it takes (170-210 ms for 1,000 finished calls,
docs/benchmarks.md "RTP capacity"). How: with the collector disabled and
``gc.DEBUG_SAVEALL``, an explicit ``gc.collect()`` after the calls ended puts every
object that only the collector could free into ``gc.garbage``; it must be empty.

Each test first runs one warm-up call in the same engine and collects: what a first
call creates once per process or per engine (lazy imports, caches, the original
class of a ``slots=True`` dataclass that a first use lets go) is not per call. The
measured batch then runs in a run of its own, so the run's objects are freed too.
Both ends of every call are sipswarm endpoints of the one engine, so both the caller
and the receiver side are counted.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.peers.kamailio import Kamailio

from .engine_harness import Collector, assignment, endpoint, make_engine

pytestmark = pytest.mark.timeout(60)

CALLS = 4
Pair = Callable[[int, str], tuple[dict[str, Any], dict[str, Any] | None]]


@pytest.fixture
def saveall() -> Iterator[None]:
    """The collector off and saving everything it finds; restored afterwards."""
    was_enabled, flags = gc.isenabled(), gc.get_debug()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


def _cyclic_garbage() -> Counter[str]:
    """Objects only the cyclic collector frees, by type (``gc.DEBUG_SAVEALL`` is on)."""
    gc.garbage.clear()
    gc.collect()
    found = Counter(type(o).__qualname__ for o in gc.garbage)
    gc.garbage.clear()
    gc.set_debug(0)
    gc.collect()  # free what was found, so that _alive() does not count it
    gc.set_debug(gc.DEBUG_SAVEALL)
    return found


Spec = dict[str, Any]


async def _calls(engine: Any, items: Collector, run: str, pairs: list[tuple[Spec, Spec | None]]
                 ) -> None:  # fmt: skip
    """Start the receivers, then a caller to each receiver's contact; wait until all closed."""
    receivers = [rx for _, rx in pairs if rx is not None]
    if receivers:
        await engine.start_assignment(assignment(run, *receivers, trace="none"))
    callers = []
    for tx, rx in pairs:
        if rx is not None:  # registered (or listening): its contact is known
            contact = await items.contact(rx["endpoint_id"])
            tx["call"]["target"] = tx["call"]["target"] or contact
        callers.append(tx)
    await engine.start_assignment(assignment(run, *callers, trace="none"))
    await asyncio.wait_for(engine.wait_idle(), 30)


#: What a call leaves behind if anything holds it (the engine's long-lived objects aside).
#: Not ScheduledCall: a cancelled one waits in the scheduler's heap for its deadline, but
#: holds nothing (it drops its callback when cancelled or run, engine/scheduler.py).
PER_CALL = {"Endpoint", "CallMedia", "RtpSession", "RtcpReporter", "FastPath", "Sender",
            "UacCall", "UasCall", "Dialog", "ClientTransaction", "ServerTransaction",
            "Registration", "FailureTrace"}  # fmt: skip


def _alive() -> Counter[str]:
    """Per-call objects still alive, as ``alive:<type>`` (none once the calls are over)."""
    kinds = (type(o) for o in gc.get_objects())
    ours = (t for t in kinds if t.__qualname__ in PER_CALL)  # (type.__module__: a descriptor)
    return Counter(f"alive:{t.__qualname__}" for t in ours if t.__module__.startswith("sipswarm"))


def _expire_sip_state(engine: Any) -> None:
    """Run each SIP stack past its longest transaction timer (64*T1, RFC 3261 §17.1.1.2,
    §17.2.1) so that it drops the finished calls' transactions and dialogs now, as it would
    32 s later on its own; nothing is sent (no flush)."""
    later = engine.loop.time() + 120
    for runtime in engine._runtimes.values():  # the shared runtimes (one per transport)
        stack = runtime.stack
        for _ in range(100):
            deadline = stack.get_timer() if stack is not None else None
            if deadline is None or deadline > later:
                break
            stack.handle_timer(later)


def _garbage_per_batch(pair: Pair) -> tuple[Collector, Counter[str]]:
    """Warm up with one call, collect; run CALLS calls in a new run; the cyclic garbage."""

    async def main() -> tuple[Collector, Counter[str]]:
        items = Collector()
        engine = make_engine(items)
        try:
            await _calls(engine, items, "warm", [pair(0, "warm")])
            _cyclic_garbage()
            # that full collection stalls the loop: let the generator's judged second
            # end, so the measured calls do not overlap it (they would end
            # COMPLETED_WITH_WARNINGS "generator overloaded", correctly)
            await asyncio.sleep(1.1)
            await _calls(engine, items, "measured", [pair(i, "m") for i in range(1, CALLS + 1)])
            await asyncio.sleep(0)  # the tasks that closed the endpoints are done
            _expire_sip_state(engine)
            garbage = _cyclic_garbage()
            return items, garbage + _alive()
        finally:
            await engine.close()

    return asyncio.run(main())


def _check(items: Collector, garbage: Counter[str], expect_calls: int) -> None:
    measured = [i for i in items.of("outcome") if i["run_id"] == "measured"]
    # a loaded machine can still make the engine judge itself overloaded: that warning is
    # honest and not what this test is about; any other outcome fails it
    outcomes = Counter(
        "SUCCESS"
        if i["outcome"] == "COMPLETED_WITH_WARNINGS"
        and (i.get("reason") or "").startswith("generator overloaded")
        else i["outcome"]
        for i in measured
    )
    assert outcomes == {"SUCCESS": expect_calls}, measured
    answered = [c for c in items.of("call") if c["run_id"] == "measured"]
    assert len(answered) == expect_calls and all(c["final_code"] == 200 for c in answered)
    assert garbage == Counter(), f"cyclic garbage after {CALLS} finished calls: {garbage}"


def _direct(media: dict[str, Any], caller_actions: list[dict[str, Any]] | None = None) -> Pair:
    def pair(i: int, tag: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        rx = endpoint(f"{tag}/rx{i}", "receiver", user=f"rx{i}", duration_s=10,
                      expected_calls=1)  # fmt: skip
        tx = endpoint(f"{tag}/tx{i}", "caller", duration_s=0.6)
        for ep in (rx, tx):
            ep["media"].update(media)
        tx["actions"] = list(caller_actions or [])
        return tx, rx

    return pair


KINDS = {
    "rtp": _direct({}),
    "signalling-only": _direct({"rtp": False}),
    "srtp-dtmf-hold": _direct(
        {"srtp": "sdes"},
        [
            {"at_s": 0.1, "do": "dtmf", "digits": "1"},
            {"at_s": 0.3, "do": "hold"},
            {"at_s": 0.45, "do": "resume"},
        ],
    ),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_finished_direct_calls_leave_no_cyclic_garbage(kind: str, saveall: None) -> None:
    items, garbage = _garbage_per_batch(KINDS[kind])
    _check(items, garbage, 2 * CALLS)


@pytest.mark.peers
@pytest.mark.parametrize("rtp", [True, False], ids=["rtp", "signalling-only"])
def test_finished_registered_calls_through_kamailio_leave_no_cyclic_garbage(
    rtp: bool, kamailio: Kamailio, saveall: None
) -> None:
    host, port = kamailio.address("udp")
    base = 1920 if rtp else 1940

    def registered(eid: str, role: str, user: str, **kw: Any) -> dict[str, Any]:
        ep = endpoint(eid, role, user=user, password=kamailio.password(user), host=host,
                      port=port, register=True, **kw)  # fmt: skip
        ep["media"]["rtp"] = rtp
        return ep

    def pair(i: int, tag: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        rx_user, tx_user = str(base + 2 * i), str(base + 2 * i + 1)
        rx = registered(f"{tag}/rx{i}", "receiver", rx_user, duration_s=10, expected_calls=1)
        tx = registered(f"{tag}/tx{i}", "caller", tx_user, target=f"sip:{rx_user}@127.0.0.1",
                        duration_s=0.4)  # fmt: skip
        return tx, rx

    items, garbage = _garbage_per_batch(pair)
    _check(items, garbage, 2 * CALLS)
