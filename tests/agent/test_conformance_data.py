"""PROTOCOL.md conformance of a real ``sipswarm agent``: the ``data`` stream (items and
their keys, seq, ack, replay after reconnect), ``media`` and its use by an assign.

Direct calls (``register: false``) between endpoints of the worker on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
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


def test_cancel_hangs_up_cancels_unregisters_and_closes_within_5_s(
    tmp_path: Path, kamailio: Any, sipp_uas: Any
) -> None:
    """cancel: a call in progress gets BYE, a ringing one CANCEL, a registered endpoint
    unregisters, all close CANCELLED within 5 s; one already closed keeps its outcome;
    finished follows."""
    ring = sipp_uas("ring")
    host, port = kamailio.address("udp")
    reg = {"domain": "127.0.0.1", "host": host, "port": port, "register": True}
    ctl = RecordingHarness(heartbeat_interval_s=0.5)

    def phases() -> set[tuple[str, str]]:
        return {(p["endpoint_id"], p["phase"]) for p in ctl.items_of("phase")}

    async def scenario() -> tuple[int, list[str]]:
        await ctl.start()
        try:
            with agent_runner(tmp_path) as agents:
                proc = agents.start(ctl)
                await wait_connected(ctl, proc)
                recv = endpoint(
                    "r-cx/recv/0", "receiver", "1790", password="secret1790", registrar=reg,
                    call={"duration_s": 60, "idle_timeout_s": 60},
                )  # fmt: skip
                lonely = endpoint(
                    "r-cx/lonely/0", "receiver", "1791",
                    call={"duration_s": 60, "idle_timeout_s": 1},
                )  # fmt: skip
                await ctl.send(assign("a-cx1", "r-cx", [recv, lonely]))
                await ctl.wait_for(lambda: kamailio.contacts("1790"), timeout=10)
                talk = endpoint(
                    "r-cx/talk/0", "caller", "1792", password="secret1792",
                    registrar={**reg, "register": False},
                    call={"target": "sip:1790@127.0.0.1", "duration_s": 60},
                )  # fmt: skip
                ringing = endpoint(
                    "r-cx/ring/0", "caller", "1793",
                    call={"target": f"sip:ring@127.0.0.1:{ring.address[1]}",
                          "duration_s": 60, "ring_timeout_s": 60},
                )  # fmt: skip
                await ctl.send(assign("a-cx2", "r-cx", [talk, ringing]))
                want = {
                    ("r-cx/talk/0", "INCALL"),
                    ("r-cx/ring/0", "RINGING"),
                    ("r-cx/lonely/0", "CLOSED"),
                }
                await ctl.wait_for(lambda: want <= phases(), timeout=15)
                sent = int(time.time() * 1000)
                await ctl.send({"type": "cancel", "run_id": "r-cx", "reason": "user"})
                await ctl.wait_for(lambda: len(ctl.items_of("finished")) == 2, timeout=10)
                contacts = kamailio.contacts("1790")
        finally:
            await ctl.stop()
        return sent, contacts

    sent, contacts = run(scenario(), 60)
    assert contacts == [], f"still registered after cancel: {contacts}"
    out = {o["endpoint_id"]: o for o in ctl.items_of("outcome")}
    assert out["r-cx/lonely/0"]["outcome"] == "TIMEOUT", "an endpoint closed before keeps it"
    for eid in ("r-cx/recv/0", "r-cx/talk/0", "r-cx/ring/0"):
        assert out[eid]["outcome"] == "CANCELLED" and out[eid]["reason"] == "user", out[eid]
        assert out[eid]["ts"] - sent <= 5000, f"{eid} closed {out[eid]['ts'] - sent} ms later"
    calls = {c["endpoint_id"]: c for c in ctl.items_of("call")}
    assert calls["r-cx/talk/0"]["bye_ts"] is not None and calls["r-cx/recv/0"]["bye_ts"]
    assert calls["r-cx/ring/0"]["result"] == "cancelled", calls["r-cx/ring/0"]
    sent_msgs = [t["message"] for t in ctl.items_of("trace") if t["dir"] == "out"]
    assert any(m.startswith("CANCEL ") for m in sent_msgs)
    assert any(m.startswith("BYE ") for m in sent_msgs)
    unregister = re.compile(r"^Expires:\s*0\s*$|;expires=0\b", re.I | re.M)
    unregs = [
        t for t in ctl.items_of("trace")
        if t["endpoint_id"] == "r-cx/recv/0" and t["dir"] == "out"
        and t["message"].startswith("REGISTER ") and unregister.search(t["message"])
    ]  # fmt: skip
    assert unregs, "no REGISTER with expires 0 sent"
    finished = ctl.items_of("finished")
    assert sorted(f["endpoints"] for f in finished) == [2, 2]
    last_outcome = max(o["ts"] for o in out.values())
    assert all(f["ts"] >= last_outcome - 1 for f in finished)
