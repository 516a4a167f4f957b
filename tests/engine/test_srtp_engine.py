"""media.srtp sdes end to end in the endpoint engine, and against pjsua2 (a second SRTP stack).

SIPp is not a peer here: SIPp 3.6.1's rtp_stream has no SRTP.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sipswarm.engine import call_media
from sipswarm.media.sdes import SdesKeys
from tests.peers.pjsua import pjsua_available, run_pjsua_call, start_pjsua
from tests.peers.procs import ManagedProcess, free_port, wait_until

from .engine_harness import Collector, assignment, check_items, endpoint, make_engine

SIPSWARM = [sys.executable, "-m", "sipswarm.cli"]


def srtp_endpoint(eid: str, role: str, srtp: str = "sdes", **kw: Any) -> dict[str, Any]:
    ep = endpoint(eid, role, **kw)
    ep["media"]["srtp"] = srtp
    return ep


async def call_pair(run: str, rx_srtp: str, tx_srtp: str, duration: float) -> Collector:
    items = Collector()
    engine = make_engine(items)
    try:
        rx = srtp_endpoint(f"{run}/rx", "receiver", rx_srtp, user="bob", duration_s=10)
        rx["call"]["expected_calls"] = 1
        await engine.start_assignment(assignment(run, rx))
        contact = await items.contact(f"{run}/rx")
        tx = srtp_endpoint(f"{run}/tx", "caller", tx_srtp, target=contact, duration_s=duration)
        await engine.start_assignment(assignment(run, tx))
        await asyncio.wait_for(engine.wait_idle(), 20)
    finally:
        await engine.close()
    return items


def last_media(items: Collector, eid: str) -> dict[str, Any]:
    entries = [e for m in items.of("metrics") for e in m["endpoints"] if e["endpoint_id"] == eid]
    return [e for e in entries if "recv" in e][-1]


@pytest.mark.timeout(40)
def test_two_endpoints_call_with_sdes_srtp() -> None:
    items = asyncio.run(call_pair("s1", "sdes", "sdes", 3.0))
    check_items(items.items)
    for eid in ("s1/tx", "s1/rx"):
        assert items.outcome(eid)["outcome"] == "SUCCESS", items.outcome(eid)
        recv = last_media(items, eid)["recv"]
        assert recv["packets_received"] > 100 and recv["packets_lost"] == 0, recv
        assert recv["mos"] >= 4.3 and recv["srtp_auth_failures"] == 0, recv
        assert recv["srtp_replays"] == 0
    invite = next(t["message"] for t in items.of("trace", "s1/tx") if "INVITE sip" in t["message"])
    assert "m=audio" in invite and "RTP/SAVP" in invite
    assert "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" in invite
    answers = [t["message"] for t in items.of("trace", "s1/rx") if "RTP/SAVP" in t["message"]]
    ok = next(m for m in answers if m.startswith("SIP/2.0 200"))
    assert len(re.findall(r"a=crypto:", ok)) == 1


@pytest.mark.timeout(40)
@pytest.mark.parametrize(
    ("rx_srtp", "tx_srtp", "reason"),
    [
        ("sdes", "off", r"SRTP \(media.srtp sdes\) is required here"),
        ("off", "sdes", r"the offer requires SRTP and media.srtp is off"),
    ],
    ids=["plain-offer-to-sdes", "sdes-offer-to-plain"],
)
def test_srtp_mismatch_is_488(rx_srtp: str, tx_srtp: str, reason: str) -> None:
    items = asyncio.run(call_pair("s2", rx_srtp, tx_srtp, 1.0))
    rx, tx = items.outcome("s2/rx"), items.outcome("s2/tx")
    assert rx["outcome"] == "NEGOTIATION_FAILED" and rx["final_code"] == 488, rx
    assert re.search(reason, rx["reason"]), rx
    assert tx["final_code"] == 488 and tx["outcome"] != "SUCCESS", tx


@pytest.mark.timeout(40)
def test_wrong_key_counts_auth_failures_and_tears_down(monkeypatch: pytest.MonkeyPatch) -> None:
    real = call_media.negotiated_keys

    def answerer_gets_a_wrong_key(local: Any, remote: Any) -> SdesKeys:
        keys = real(local, remote)
        if len(local) == 1:  # the answerer's own line: corrupt the key it decrypts with
            bad = bytes([keys.remote_key_salt[0] ^ 1]) + keys.remote_key_salt[1:]
            return SdesKeys(keys.suite, keys.local_key_salt, bad, keys.tag)
        return keys

    monkeypatch.setattr(call_media, "negotiated_keys", answerer_gets_a_wrong_key)
    items = asyncio.run(call_pair("s3", "sdes", "sdes", 2.0))
    check_items(items.items)
    rx = last_media(items, "s3/rx")["recv"]
    assert rx["packets_received"] == 0 and rx["srtp_auth_failures"] > 50, rx
    assert last_media(items, "s3/tx")["recv"]["packets_received"] > 50
    for eid in ("s3/tx", "s3/rx"):
        assert items.phases(eid)[-2:] == ["DISCONNECTING", "CLOSED"], items.phases(eid)
    out = items.outcome("s3/rx")
    assert out["outcome"] == "COMPLETED_WITH_WARNINGS" and "no RTP" in out["reason"], out
    assert items.outcome("s3/tx")["outcome"] == "SUCCESS"


# -- pjsua2 -------------------------------------------------------------------------------

pjsua = pytest.mark.skipif(not pjsua_available(), reason="pjsua2 not installed")


@pytest.fixture
def sdes_answer(tmp_path: Path) -> Iterator[tuple[ManagedProcess, int]]:
    port = free_port(("udp",))
    lo = free_port(("udp",)) & ~1
    argv = [*SIPSWARM, "answer", "--listen", f"127.0.0.1:{port}", "--srtp", "sdes",
            "--rtp-ports", f"{lo}-{lo + 9}", "--duration", "30"]  # fmt: skip
    proc = ManagedProcess(argv, tmp_path / f"answer-{port}.log")
    try:
        wait_until(lambda: "REGISTERED" in proc.log_path.read_text(), 15, "sipswarm answer")
        yield proc, port
    finally:
        proc.stop(first_signal=signal.SIGTERM, grace=5)


@pjsua
@pytest.mark.peers
@pytest.mark.timeout(60)
def test_pjsua_calls_sipswarm_sdes_receiver(
    sdes_answer: tuple[ManagedProcess, int], tmp_path: Path
) -> None:
    proc, port = sdes_answer
    events = run_pjsua_call(tmp_path, f"sip:service@127.0.0.1:{port}", "--srtp", hold=2.5)
    [end] = [e for e in events if e["event"] == "call_end"]
    assert end["connected"] and end["rtp_rx_packets"] > 50 and end["rtp_tx_packets"] > 50
    assert end["rtp_rx_loss"] == 0
    wait_until(lambda: "SRTP auth failures" in proc.log_path.read_text(), 10, "call summary")
    log = proc.log_path.read_text()
    assert "RTP/SAVP" in log and "200 answered" in log
    received = re.search(r"RTP sent \d+\s+received (\d+)", log)
    assert received is not None and int(received.group(1)) > 20
    assert "SRTP auth failures 0  replays 0" in log


@pjsua
@pytest.mark.peers
@pytest.mark.timeout(60)
def test_pjsua_answers_sipswarm_sdes_caller(tmp_path: Path) -> None:
    peer = start_pjsua(tmp_path, "answer", "--calls", "1", "--srtp")
    try:
        host, port = peer.sip_address
        lo = free_port(("udp",)) & ~1
        done = subprocess.run(
            [
                *SIPSWARM,
                "call",
                f"sip:pjsua@{host}:{port}",
                "--duration",
                "2.5",
                "--srtp",
                "sdes",
                "--bind",
                "127.0.0.1",
                "--rtp-ports",
                f"{lo}-{lo + 9}",
            ],
            capture_output=True,
            text=True,
            timeout=40,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        answer = done.stdout[done.stdout.index("SIP/2.0 200") :]
        assert "RTP/SAVP" in answer and "a=crypto:" in answer
        received = re.search(r"RTP sent (\d+)\s+received (\d+)", done.stdout)
        assert received is not None and int(received.group(1)) > 50
        assert int(received.group(2)) > 50
        assert "SRTP auth failures 0  replays 0" in done.stdout
        events = peer.wait_done(15)
    finally:
        peer.stop()
    [end] = [e for e in events if e["event"] == "call_end"]
    assert end["connected"] and end["rtp_rx_packets"] > 50 and end["rtp_rx_loss"] == 0
