"""PROTOCOL.md conformance of a real ``sipswarm agent``: the ``data`` stream (items and
their keys, seq, ack, replay after reconnect), ``media`` and its use by an assign.

Direct calls (``register: false``) between endpoints of the worker on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from tests.e2e.conftest import assert_phases_forward, assign, assign_pairs, endpoint, run

from .conformance import (
    CUMULATIVE,
    EXTRA_ITEM_KEYS,
    ITEM_KEYS,
    RECV_KEYS,
    SEND_KEYS,
    RecordingHarness,
    agent_runner,
    is_epoch_ms,
    item_ts_keys,
    wait_connected,
    wav_bytes,
)


def check_item_keys(items: list[dict[str, Any]]) -> None:
    """Every item carries exactly the keys PROTOCOL.md lists (plus documented extras)."""
    for item in items:
        kind = item["kind"]
        want = set(ITEM_KEYS[kind])
        if kind == "phase" and item["phase"] == "REGISTERED":
            want.add("contact")
        extra = set(item) - want - EXTRA_ITEM_KEYS.get(kind, set())
        assert set(item) >= want and not extra, f"{kind}: missing {want - set(item)}, extra {extra}"
        for key in item_ts_keys(item):
            assert item[key] is None or is_epoch_ms(item[key]), f"{kind}.{key}: {item[key]!r}"
        if "ts" in want:
            assert is_epoch_ms(item["ts"]), item


def check_metrics(items: list[dict[str, Any]]) -> None:
    """Endpoint entries: media-less ones are endpoint_id + phase only; others carry every
    send/recv key, and counters never go down from one sample to the next."""
    last: dict[tuple[str, str, str], float] = {}
    with_media = 0
    for m in items:
        if m["kind"] != "metrics":
            continue
        for e in m["endpoints"]:
            if set(e) == {"endpoint_id", "phase"}:
                continue
            with_media += 1
            assert set(e) >= {"endpoint_id", "phase", "send", "recv"}, e
            assert set(e["send"]) == SEND_KEYS, set(e["send"]) ^ SEND_KEYS
            assert set(e["recv"]) == RECV_KEYS, set(e["recv"]) ^ RECV_KEYS
            for side, keys in CUMULATIVE.items():
                for key in keys:
                    value = e[side][key]
                    if value is None:
                        continue
                    ref = (e["endpoint_id"], side, key)
                    assert value >= last.get(ref, 0), f"{ref} went down: {value} < {last[ref]}"
                    last[ref] = value
    assert with_media, "no metrics entry with media"
    assert any(v > 0 for (_, _, k), v in last.items() if k == "packets_received")


def test_items_seq_ack_and_replay_from_welcome_acked_seq(tmp_path: Path) -> None:
    """A direct call: every item kind with its exact keys, seq 1, 2, ... per frame;
    unacked frames kept and resent in order after a reconnect from welcome.acked_seq,
    and all of them when a controller that knows nothing answers acked_seq null."""

    async def scenario() -> None:
        ctl = RecordingHarness(heartbeat_interval_s=0.5, auto_ack=False)
        await ctl.start()
        try:
            with agent_runner(tmp_path) as agents:
                proc = agents.start(ctl)
                await wait_connected(ctl, proc)
                ids = await assign_pairs(ctl, "r-data", 1, duration_s=2.5)
                await ctl.wait_for(lambda: len(ctl.items_of("finished")) == 2, timeout=30)
                state = ctl.stream_state()
                top = max(state.held)
                items = list(ctl.items)  # in seq order: nothing was resent yet
                assert top >= 3, "too few frames to check replay"
                acked = top // 2
                await ctl.send({"type": "ack", "seq": acked})
                await asyncio.sleep(0.3)
                ctl.forget_unacked_on_drop = True  # the controller kept only up to `acked`
                state.unacked -= set(range(1, acked + 1))
                before = len(state.arrivals)
                ctl.drop()
                await ctl.wait_for(lambda: len(state.arrivals) >= before + (top - acked), 15)
                replay1 = state.arrivals[before:]
                hello2 = ctl.hellos[1]
                ctl.streams.clear()  # a controller that knows nothing: acked_seq null
                ctl.forget_unacked_on_drop = False
                before = len(state.arrivals)
                ctl.drop()
                await ctl.wait_for(lambda: len(ctl.hellos) == 3, 15)
                fresh = ctl.stream_state()
                await ctl.wait_for(lambda: len(fresh.arrivals) >= top - acked, 15)
                await asyncio.sleep(0.5)
                replay2 = list(fresh.arrivals)
        finally:
            await ctl.stop()
        assert ctl.hellos[0]["resume"] is None
        assert hello2["resume"] == {"stream": hello2["resume"]["stream"], "last_seq": top}
        assert replay1 == list(range(acked + 1, top + 1)), replay1
        assert replay2 == list(range(acked + 1, top + 1)), replay2
        assert state.arrivals[:top] == list(range(1, top + 1)), "first sends not 1, 2, ..."
        check_item_keys(items)
        check_metrics(items)
        assert_phases_forward(items)
        kinds = {i["kind"] for i in items}
        assert kinds >= {"phase", "call", "metrics", "trace", "outcome", "finished"}, kinds
        calls = {c["direction"]: c for c in items if c["kind"] == "call"}
        assert calls["out"]["result"] == "answered" and calls["out"]["final_code"] == 200
        assert calls["in"]["result"] == "answered"
        outcomes = [(o["endpoint_id"], o["outcome"]) for o in items if o["kind"] == "outcome"]
        assert sorted(outcomes) == sorted((i, "SUCCESS") for i in ids)
        for fin in [i for i in items if i["kind"] == "finished"]:
            assert fin["endpoints"] == 1 and fin["outcomes"] == {"SUCCESS": 1}

    run(scenario(), 90)


def test_media_is_checked_kept_listed_and_used_by_a_file_source(tmp_path: Path) -> None:
    """A bad hash is answered with error and not kept; a good file lands in the state
    directory, is listed in the next hello, and an assign with a file source plays it."""
    good = wav_bytes(1.0)
    sha = hashlib.sha256(good).hexdigest()
    other = hashlib.sha256(b"something else").hexdigest()

    async def scenario() -> None:
        ctl = RecordingHarness(heartbeat_interval_s=0.5)
        await ctl.start()
        try:
            with agent_runner(tmp_path) as agents:
                proc = agents.start(ctl)
                await wait_connected(ctl, proc)
                await ctl.send({"type": "media", "sha256": other, "name": "x", "size": len(good)})
                await ctl.send(good)
                await ctl.wait_for(lambda: ctl.of_type("error"))
                await ctl.send({"type": "media", "sha256": sha, "name": "g", "size": len(good)})
                await ctl.send(good)
                await ctl.wait_for(lambda: (tmp_path / "state" / "media" / f"{sha}.wav").exists())
                ctl.drop()
                await wait_connected(ctl, proc, sessions=2)
                recv = endpoint(
                    "r-file/receivers/0",
                    "receiver",
                    "1750",
                    call={"duration_s": 30, "idle_timeout_s": 1},
                )
                await ctl.send(assign("a-r", "r-file", [recv]))
                contact = await ctl.wait_for(
                    lambda: [i["contact"] for i in ctl.items_of("phase") if "contact" in i], 10
                )
                caller = endpoint(
                    "r-file/callers/0",
                    "caller",
                    "1751",
                    call={"target": contact[0], "duration_s": 2},
                )
                caller["media"]["source"] = {"kind": "file", "sha256": sha}
                await ctl.send(assign("a-c", "r-file", [caller]))
                await ctl.wait_for(lambda: len(ctl.items_of("finished")) == 2, timeout=30)
        finally:
            await ctl.stop()
        (err,) = ctl.of_type("error")
        assert err["in_reply_to"] == "media" and "sha256" in err["detail"]
        kept = sorted(p.name for p in (tmp_path / "state" / "media").iterdir())
        assert kept == [f"{sha}.wav"], kept
        assert ctl.hellos[1]["media"] == [sha]
        results = {r["assignment_id"]: r for r in ctl.of_type("assign_result")}
        assert results["a-c"]["accepted"], results["a-c"]
        out = {o["endpoint_id"]: o["outcome"] for o in ctl.items_of("outcome")}
        assert out["r-file/callers/0"] == "SUCCESS", ctl.items_of("outcome")
        sent = [
            e["send"]["packets_sent"]
            for m in ctl.items_of("metrics")
            for e in m["endpoints"]
            if e["endpoint_id"] == "r-file/callers/0" and "send" in e
        ]
        assert sent and max(sent) > 20

    run(scenario(), 60)


def test_drain_refuses_work_finishes_runs_flushes_and_exits_0(tmp_path: Path) -> None:
    async def scenario() -> None:
        ctl = RecordingHarness(heartbeat_interval_s=0.3)
        await ctl.start()
        try:
            with agent_runner(tmp_path) as agents:
                proc = agents.start(ctl)
                await wait_connected(ctl, proc)
                ids = await assign_pairs(ctl, "r-drain", 2, duration_s=2)
                await ctl.send({"type": "drain"})
                await ctl.wait_for(
                    lambda: [h for _, h in ctl.heartbeats if h["status"] == "DRAINING"]
                )
                recv = endpoint("r-late/receivers/0", "receiver", "1760", call={"duration_s": 5})
                await ctl.send(assign("a-late", "r-late", [recv]))
                code = await asyncio.to_thread(proc.popen.wait, 30)
        finally:
            await ctl.stop()
        assert code == 0, proc.log_tail()
        late = [r for r in ctl.of_type("assign_result") if r["assignment_id"] == "a-late"]
        assert late and not late[0]["accepted"] and late[0]["reason"] == "draining"
        out = {o["endpoint_id"]: o["outcome"] for o in ctl.items_of("outcome")}
        assert out == dict.fromkeys(ids, "SUCCESS")
        assert len(ctl.items_of("finished")) == 2
        assert not ctl.stream_state().unacked and ctl.close_codes[-1] == 1000

    run(scenario(), 60)
