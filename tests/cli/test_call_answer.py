"""``sipswarm call`` and ``sipswarm answer`` as subprocesses against SIPp and pjsua2.

Each test starts its processes on free loopback ports and stops them by PID;
everything is bounded by timeouts.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.peers.pjsua import PjsuaPeer, run_pjsua_call
from tests.peers.procs import ManagedProcess, free_port, wait_until
from tests.peers.sipp import SippUas, run_sipp_uac

pytestmark = [pytest.mark.peers, pytest.mark.timeout(90)]
SIPSWARM = [sys.executable, "-m", "sipswarm.cli"]
TORTURE = Path(__file__).parents[1] / "data" / "sip"


def sipswarm_call(*args: str, timeout: float = 40) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SIPSWARM, "call", *args, "--bind", "127.0.0.1", "--rtp-ports", "50000-50999"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def answer(tmp_path: Path) -> Iterator[Callable[..., tuple[ManagedProcess, int]]]:
    """Start ``sipswarm answer`` on a free port; stopped (SIGTERM, by PID) after the test."""
    started: list[ManagedProcess] = []

    def start(*args: str) -> tuple[ManagedProcess, int]:
        port = free_port(("udp",))
        argv = [*SIPSWARM, "answer", "--listen", f"127.0.0.1:{port}",
                "--rtp-ports", "51000-51999", *args]  # fmt: skip
        proc = ManagedProcess(argv, tmp_path / f"answer-{port}.log")
        started.append(proc)
        wait_until(lambda: "REGISTERED" in proc.log_path.read_text(), 15, "sipswarm answer")
        return proc, port

    yield start
    for proc in started:
        proc.stop(first_signal=signal.SIGTERM, grace=5)


def test_call_to_sipp_uas_succeeds(sipp_uas: Callable[..., SippUas]) -> None:
    uas = sipp_uas("answer", rtp_echo=True)
    target = f"sip:service@{uas.address[0]}:{uas.address[1]}"
    done = sipswarm_call(target, "--duration", "2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert "INVITE sip:service@" in done.stdout and "SIP/2.0 200 OK" in done.stdout
    assert re.search(r"call cli/caller \(out\): 200 answered", done.stdout)
    assert re.search(r"pdd \d+ ms .* setup \d+ ms", done.stdout)
    mos = re.search(r"MOS ([0-9.]+)", done.stdout)
    assert mos is not None and float(mos.group(1)) >= 4.3


def test_call_to_busy_uas_exits_non_zero_with_reason(sipp_uas: Callable[..., SippUas]) -> None:
    uas = sipp_uas("busy")
    done = sipswarm_call(f"sip:service@{uas.address[0]}:{uas.address[1]}", "--quiet")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("sipswarm call: not answered: ")
    assert "CALL_FAILED (486)" in done.stderr


def test_call_with_bad_flags_exits_2() -> None:
    done = sipswarm_call("sip:x@127.0.0.1", "--registrar", "127.0.0.1:99999", "--user", "u")
    assert done.returncode == 2 and "--registrar must be host[:port]" in done.stderr


def test_sipp_uac_calls_answer_without_failures(
    answer: Callable[..., tuple[ManagedProcess, int]], tmp_path: Path
) -> None:
    proc, port = answer("--duration", "30", "--quiet")
    result = run_sipp_uac(tmp_path, ("127.0.0.1", port), calls=10, rate=20, hold_ms=500,
                          timeout=40)  # fmt: skip
    assert result.returncode == 0, result.log[-2000:]
    assert result.stats.successful == 10 and result.stats.failed == 0
    assert proc.running()


def test_pjsua_calls_answer_with_rtp(
    answer: Callable[..., tuple[ManagedProcess, int]], tmp_path: Path
) -> None:
    proc, port = answer("--duration", "30")
    events = run_pjsua_call(tmp_path, f"sip:service@127.0.0.1:{port}", hold=2.5)
    [end] = [e for e in events if e["event"] == "call_end"]
    assert end["connected"] and end["rtp_rx_packets"] > 50 and end["rtp_tx_packets"] > 50
    wait_until(lambda: "answered" in proc.log_path.read_text(), 10, "call summary")
    log = proc.log_path.read_text()
    assert "call cli/receiver/1 (in): 200 answered" in log
    received = re.search(r"RTP sent \d+\s+received (\d+)", log)
    assert received is not None and int(received.group(1)) > 20


def test_pjsua_answers_call_with_rtp(pjsua_peer: Callable[..., PjsuaPeer]) -> None:
    peer = pjsua_peer("answer", "--calls", "1")
    host, port = peer.sip_address
    done = sipswarm_call(f"sip:pjsua@{host}:{port}", "--duration", "2.5", "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    received = re.search(r"RTP sent (\d+)\s+received (\d+)", done.stdout)
    assert received is not None and int(received.group(1)) > 50 and int(received.group(2)) > 50
    events = peer.wait_done(15)
    [end] = [e for e in events if e["event"] == "call_end"]
    assert end["connected"] and end["rtp_rx_packets"] > 50


def _udp_exchange(port: int, data: bytes, wait: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(wait)
        sock.sendto(data, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def test_torture_messages_answer_stays_up(
    answer: Callable[..., tuple[ManagedProcess, int]],
) -> None:
    proc, port = answer("--duration", "1", "--answer-delay", "0", "--quiet")
    answered = 0
    for case in sorted(TORTURE.glob("*.sip")):
        expected = case.name.split("_", 1)[0]
        if expected == "100":
            continue  # its Via names a host without rport: the answer would leave our socket
        # rport (RFC 3581) so that every response comes back to this test's own socket
        data = (
            case.read_bytes()
            .replace(b"\n", b"\r\n")
            .replace(b"127.0.0.1:5070", b"127.0.0.1:%d" % port)
            .replace(b"127.0.0.1:5099;", b"127.0.0.1:5099;rport;")
        )
        reply = _udp_exchange(port, data, 0.3 if expected == "drop" else 2.0)
        if expected in ("400", "505", "416", "420", "481", "501", "200"):
            assert reply is not None and reply.startswith(f"SIP/2.0 {expected}".encode()), (
                case.name, reply[:80] if reply else None)  # fmt: skip
            answered += 1
        assert proc.running(), f"sipswarm answer died on {case.name}"
    assert answered >= 10
    options = (f"OPTIONS sip:x@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;rport;"
               "branch=z9hG4bKopt1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\n"
               "Call-ID: opt1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
               "Content-Length: 0\r\n\r\n")  # fmt: skip
    time.sleep(0.1)
    reply = _udp_exchange(port, options.encode(), 2.0)
    assert reply is not None and reply.startswith(b"SIP/2.0 200")
