"""DataStream: seq, acks, replay, window, bound and gap, by literal items (no sockets)."""

from __future__ import annotations

import json
from typing import Any

from sipswarm.agent.datastream import DataStream


def phase(i: int, ts: int = 1000) -> dict[str, Any]:
    return {
        "kind": "phase",
        "run_id": "r-1",
        "endpoint_id": f"e{i}",
        "ts": ts,
        "phase": "INITIALIZING",
    }


def metrics(ts: int, run: str = "r-1", pad: int = 0) -> dict[str, Any]:
    return {
        "kind": "metrics",
        "run_id": run,
        "ts": ts,
        "endpoints": [{"endpoint_id": "e" + "x" * pad, "phase": "INCALL"}],
    }


def trace(ts: int) -> dict[str, Any]:
    return {
        "kind": "trace",
        "run_id": "r-1",
        "endpoint_id": "e",
        "ts": ts,
        "dir": "out",
        "transport": "udp",
        "local": "a",
        "remote": "b",
        "message": "OPTIONS " + "x" * 200,
    }


def decode(frames: list[tuple[int, str]]) -> list[dict[str, Any]]:
    out = [json.loads(text) for _, text in frames]
    assert [f["seq"] for f in out] == [s for s, _ in frames]
    assert all(f["type"] == "data" for f in out)
    return out


def items(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [it for f in frames for it in f["items"]]


def test_nothing_is_sent_before_connection_and_resume_is_null_on_fresh_start() -> None:
    ds = DataStream("u-1")
    ds.append(phase(0))
    assert ds.frames_to_send() == []
    assert ds.resume() is None
    assert ds.connection_made(None) == 0
    frames = decode(ds.frames_to_send())
    assert [f["seq"] for f in frames] == [1]
    assert items(frames) == [phase(0)]
    assert ds.resume() == {"stream": "u-1", "last_seq": 1}


def test_seq_grows_by_one_per_frame_and_batches_respect_limits() -> None:
    ds = DataStream("u", max_items_per_frame=3)
    ds.connection_made(None)
    for i in range(7):
        ds.append(phase(i))
    frames = decode(ds.frames_to_send())
    assert [len(f["items"]) for f in frames] == [3, 3, 1]
    assert [f["seq"] for f in frames] == [1, 2, 3]
    ds.append(phase(7))
    assert [f["seq"] for f in decode(ds.frames_to_send())] == [4]
    assert ds.frames_to_send() == []


def test_frame_byte_limit_splits_frames() -> None:
    ds = DataStream("u", max_frame_bytes=800)
    ds.connection_made(None)
    for i in range(6):
        ds.append(trace(i))
    frames = ds.frames_to_send()
    assert len(frames) == 3 and all(len(t) <= 800 for _, t in frames)
    assert [it["ts"] for it in items(decode(frames))] == list(range(6))


def test_ack_releases_and_replay_resends_unacked_in_order_exactly() -> None:
    ds = DataStream("u", max_items_per_frame=1)
    ds.connection_made(None)
    for i in range(5):
        ds.append(phase(i))
    sent = ds.frames_to_send()
    ds.receive_ack(2)
    assert ds.unacked_frames == 3 and ds.acked_seq == 2
    ds.connection_lost()
    ds.append(phase(5))
    assert ds.frames_to_send() == []
    assert ds.resume() == {"stream": "u", "last_seq": 5}
    assert ds.connection_made(acked_seq=3) == 2  # the controller had seq 3 after all
    replay = ds.frames_to_send()
    assert replay[:2] == sent[3:]  # byte for byte
    assert [s for s, _ in replay] == [4, 5, 6]
    ds.receive_ack(6)
    assert ds.all_acked and ds.buffered_bytes == 0


def test_welcome_with_null_acked_seq_replays_everything_held() -> None:
    ds = DataStream("u", max_items_per_frame=1)
    ds.connection_made(None)
    ds.append(phase(0))
    ds.append(phase(1))
    first = ds.frames_to_send()
    ds.connection_lost()
    ds.connection_made(None)
    assert ds.frames_to_send() == first


def test_stale_and_future_acks_are_counted_not_fatal() -> None:
    ds = DataStream("u", max_items_per_frame=1)
    ds.connection_made(None)
    ds.append(phase(0))
    ds.frames_to_send()
    ds.receive_ack(99)
    assert ds.counters.future_acks == 1 and ds.acked_seq == 1 and ds.all_acked
    ds.receive_ack(1)
    assert ds.counters.stale_acks == 1


def test_window_limits_frames_in_flight() -> None:
    ds = DataStream("u", max_items_per_frame=1, window_frames=2)
    ds.connection_made(None)
    for i in range(5):
        ds.append(phase(i))
    assert [s for s, _ in ds.frames_to_send()] == [1, 2]
    assert ds.frames_to_send() == []
    ds.receive_ack(1)
    assert [s for s, _ in ds.frames_to_send()] == [3]
    ds.receive_ack(3)
    assert [s for s, _ in ds.frames_to_send()] == [4, 5]


def test_bound_drops_oldest_metrics_and_emits_one_gap_per_run() -> None:
    probe = len(json.dumps(metrics(0), separators=(",", ":")))
    ds = DataStream("u", max_bytes=probe * 5 + 400)
    ds.append(phase(0))
    for ts in range(1000, 21000, 1000):  # 20 samples, only ~5 fit
        ds.append(metrics(ts))
    ds.append(phase(1, ts=21000))
    assert ds.buffered_bytes <= ds.max_bytes
    ds.connection_made(None)
    got = items(decode(ds.frames_to_send()))
    kinds = [it["kind"] for it in got]
    assert kinds.count("phase") == 2  # never dropped
    gaps = [it for it in got if it["kind"] == "gap"]
    assert len(gaps) == 1
    kept = [it["ts"] for it in got if it["kind"] == "metrics"]
    gap = gaps[0]
    assert gap["run_id"] == "r-1" and gap["dropped_items"] == 20 - len(kept)
    assert gap["dropped_kinds"] == {"metrics": gap["dropped_items"]}
    # oldest first: what was kept is the newest, and the gap covers exactly the rest
    assert kept == list(range(21000 - 1000 * len(kept), 21000, 1000))
    assert gap["from_ts"] == 1000 and gap["to_ts"] == kept[0] - 1000
    assert ds.counters.dropped_items == gap["dropped_items"]


def test_traces_are_dropped_only_after_metrics_and_other_kinds_never() -> None:
    ds = DataStream("u", max_bytes=2000)
    for i in range(30):
        ds.append(phase(i))  # undroppable: the stream holds them over the bound
    ds.append(metrics(1))
    ds.append(trace(2))
    assert ds.over_bound
    ds.connection_made(None)
    got = items(decode(ds.frames_to_send()))
    assert [it["kind"] for it in got].count("phase") == 30
    gap = next(it for it in got if it["kind"] == "gap")
    assert gap["dropped_kinds"] == {"metrics": 1, "trace": 1}
    assert (gap["from_ts"], gap["to_ts"], gap["dropped_items"]) == (1, 2, 2)


def test_gaps_are_per_run_and_a_sealed_gap_is_not_reused() -> None:
    probe = len(json.dumps(metrics(0, run="r-a"), separators=(",", ":")))
    ds = DataStream("u", max_bytes=probe * 2 + 10)
    ds.append(metrics(1, run="r-a"))
    ds.append(metrics(2, run="r-b"))
    ds.append(metrics(3, run="r-a"))  # drops r-a@1
    ds.append(metrics(4, run="r-b"))  # drops r-b@2 (gap bytes count too)
    ds.connection_made(None)
    first = items(decode(ds.frames_to_send()))
    gaps = {it["run_id"]: it for it in first if it["kind"] == "gap"}
    assert set(gaps) >= {"r-a"}
    ds.receive_ack(ds.last_seq)
    ds.connection_lost()
    for ts in range(5, 12):
        ds.append(metrics(ts, run="r-a"))
    ds.connection_made(None)
    later = items(decode(ds.frames_to_send()))
    new_gaps = [it for it in later if it["kind"] == "gap"]
    assert new_gaps and all(g["from_ts"] >= 3 for g in new_gaps if g["run_id"] == "r-a")
    total = sum(g["dropped_items"] for g in [*gaps.values(), *new_gaps])
    sent_metrics = sum(1 for it in first + later if it["kind"] == "metrics")
    assert total + sent_metrics == 11


def test_sealed_unacked_frames_are_never_altered() -> None:
    ds = DataStream("u", max_bytes=3000, max_items_per_frame=2)
    ds.connection_made(None)
    ds.append(metrics(1))
    ds.append(metrics(2))
    sent = ds.frames_to_send()
    ds.connection_lost()
    for ts in range(3, 60):
        ds.append(metrics(ts))
    ds.connection_made(None)
    assert ds.frames_to_send()[0] == sent[0]


def test_oversize_item_is_counted_and_dropped() -> None:
    ds = DataStream("u")
    ds.append({"kind": "trace", "run_id": "r", "ts": 5, "message": "x" * (17 * 1024 * 1024)})
    assert ds.counters.oversize_dropped == 1
    ds.connection_made(None)
    got = items(decode(ds.frames_to_send()))
    assert got == [
        {
            "kind": "gap",
            "run_id": "r",
            "from_ts": 5,
            "to_ts": 5,
            "dropped_items": 1,
            "dropped_kinds": {"trace": 1},
        }
    ]


def test_items_are_encoded_as_json_dumps_would() -> None:
    """The item encoder is made once (not per item) and writes json.dumps's bytes."""
    from pathlib import Path

    item = {
        "kind": "outcome",
        "run_id": "r-ü",
        "endpoint_id": "e/1",
        "ts": 7,
        "reason": 'said "no" ☎',
        "final_code": None,
        "nested": {"x": [1, 2.5, True, None], "path": Path("/tmp/a")},
        3: "int key",
    }
    ds = DataStream("u")
    ds.append(item)
    ds.connection_made(None)
    ((_, text),) = ds.frames_to_send()
    expected = json.dumps(item, separators=(",", ":"), ensure_ascii=False, default=str)
    assert text == f'{{"type":"data","seq":1,"items":[{expected}]}}'


def test_oversize_is_measured_in_utf8_bytes() -> None:
    """6 M characters: under the 16 MiB frame as ASCII, over it as 3-byte characters."""
    ds = DataStream("u")
    ds.append({"kind": "trace", "run_id": "r", "ts": 1, "message": "x" * 6_000_000})
    assert ds.counters.oversize_dropped == 0
    ds.append({"kind": "trace", "run_id": "r", "ts": 2, "message": "€" * 6_000_000})
    assert ds.counters.oversize_dropped == 1
