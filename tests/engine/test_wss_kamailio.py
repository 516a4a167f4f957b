"""SIP over WebSocket (RFC 7118) end to end: engine endpoints against Kamailio's websocket module.

Kamailio (tests/peers, ``KamailioOptions(ws=True)``) listens for WS and, with
kamailio-tls-modules, WSS; it challenges REGISTER and INVITE (digest) and
reaches WebSocket clients over their connection (fix_nated_register,
add_contact_alias/handle_ruri_alias). Endpoints register over WS or WSS, call
each other or a UDP endpoint through it, and send RTP both ways.
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

from sipswarm.engine.tls import TlsSettings
from tests.peers.kamailio import (
    Kamailio,
    KamailioOptions,
    kamailio_available,
    start_kamailio,
    ws_available,
)
from tests.peers.procs import ManagedProcess, free_port, wait_until

from .engine_harness import Collector, assignment, check_items, endpoint, make_engine

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]
SIPSWARM = [sys.executable, "-m", "sipswarm.cli"]


@pytest.fixture(scope="module")
def kam() -> Iterator[Kamailio]:
    """A private Kamailio with WS (and WSS when TLS modules are installed)."""
    if not kamailio_available() or not ws_available():
        pytest.skip("kamailio or kamailio-websocket-modules not installed")
    kam = start_kamailio(KamailioOptions(ws=True, users=range(1000, 1010)))
    yield kam
    kam.stop()


def run(kam: Kamailio, steps: list[list[dict[str, Any]]], wait: str, **settings: Any) -> Collector:
    """First step's endpoints, wait until ``wait`` is REGISTERED, then the rest; until idle."""

    async def main() -> Collector:
        items = Collector()
        engine = make_engine(items, **settings)
        try:
            for i, step in enumerate(steps):
                await engine.start_assignment(assignment("ws", *step, trace="all"))
                if i == 0 and wait:
                    await items.contact(wait)
            await asyncio.wait_for(engine.wait_idle(), 30)
        finally:
            await engine.close()
        return items

    items = asyncio.run(main())
    check_items(items.items)
    return items


def ws_endpoint(kam: Kamailio, eid: str, role: str, user: str, **kw: Any) -> dict[str, Any]:
    """Over plain WS: the protocol's transports have no 'ws', so a ;transport=ws proxy URI."""
    ep = endpoint(eid, role, user=user, password=kam.password(user), register=True, **kw)
    host, port = kam.address("ws")
    ep["registrar"]["outbound_proxy"] = f"sip:{host}:{port};transport=ws"
    return ep


def wss_endpoint(kam: Kamailio, eid: str, role: str, user: str, **kw: Any) -> dict[str, Any]:
    host, port = kam.address("wss")
    return endpoint(eid, role, user=user, password=kam.password(user), register=True,
                    host=host, port=port, transport="wss", **kw)  # fmt: skip


def udp_endpoint(kam: Kamailio, eid: str, role: str, user: str, **kw: Any) -> dict[str, Any]:
    host, port = kam.address("udp")
    return endpoint(eid, role, user=user, password=kam.password(user), register=True,
                    host=host, port=port, **kw)  # fmt: skip


def assert_answered_with_rtp(items: Collector, *eids: str) -> None:
    for eid in eids:
        assert items.outcome(eid)["outcome"] == "SUCCESS", items.outcome(eid)
        [call] = items.of("call", eid)
        assert call["final_code"] == 200 and call["first_rtp_ts"] is not None, call
    media = {
        e["endpoint_id"]: e for m in items.of("metrics") for e in m["endpoints"] if "recv" in e
    }
    for eid in eids:
        assert media[eid]["recv"]["packets_received"] > 40, media[eid]


def sent(items: Collector, eid: str, method: str) -> list[dict[str, Any]]:
    return [
        t
        for t in items.of("trace", eid)
        if t["dir"] == "out" and t["message"].startswith(f"{method} ")
    ]


@pytest.mark.parametrize("own_socket", [True, False], ids=["connection-per-endpoint", "shared"])
def test_two_ws_endpoints_register_with_auth_and_call_each_other(
    kam: Kamailio, own_socket: bool
) -> None:
    rx = ws_endpoint(kam, "w/rx", "receiver", "1000", duration_s=10, idle_timeout_s=1)
    tx = ws_endpoint(kam, "w/tx", "caller", "1001", target="sip:1000@127.0.0.1", duration_s=2)
    items = run(kam, [[rx], [tx]], "w/rx", socket_per_endpoint=own_socket)
    assert_answered_with_rtp(items, "w/rx", "w/tx")
    [register, *_] = sent(items, "w/rx", "REGISTER")
    message = register["message"]
    assert register["transport"] == "WS" and "Via: SIP/2.0/WS " in message
    contact = next(line for line in message.split("\r\n") if line.startswith("Contact:"))
    assert ".invalid:80;transport=ws>" in contact  # RFC 7118 §5: no reachable address
    assert [r["status_code"] for r in items.of("registration", "w/rx")][:1] == [200]
    # the caller hung up: its BYE reached the WS callee through Kamailio (alias routing)
    assert sent(items, "w/tx", "BYE") and not sent(items, "w/rx", "BYE")


def test_ws_caller_and_udp_receiver_hanging_up_towards_the_ws_side(kam: Kamailio) -> None:
    rx = udp_endpoint(kam, "m/rx", "receiver", "1002", duration_s=2, idle_timeout_s=1)
    tx = ws_endpoint(kam, "m/tx", "caller", "1003", target="sip:1002@127.0.0.1", duration_s=10)
    items = run(kam, [[rx], [tx]], "m/rx", socket_per_endpoint=True)
    assert_answered_with_rtp(items, "m/rx", "m/tx")
    assert sent(items, "m/rx", "BYE") and not sent(items, "m/tx", "BYE")
    assert all(t["transport"] == "UDP" for t in items.of("trace", "m/rx"))
    assert all(t["transport"] == "WS" for t in items.of("trace", "m/tx"))


def test_two_wss_endpoints_verify_a_custom_ca_and_call_each_other(kam: Kamailio) -> None:
    if kam.wss_port is None or kam.certs is None:
        pytest.skip("kamailio-tls-modules not installed: no WSS listener")
    tls = TlsSettings(verify="custom", ca_file=str(kam.certs.ca))
    rx = wss_endpoint(kam, "s/rx", "receiver", "1004", duration_s=10, idle_timeout_s=1)
    tx = wss_endpoint(kam, "s/tx", "caller", "1005", target="sip:1004@127.0.0.1", duration_s=2)
    items = run(kam, [[rx], [tx]], "s/rx", socket_per_endpoint=True, tls=tls)
    assert_answered_with_rtp(items, "s/rx", "s/tx")
    [invite, *_] = sent(items, "s/tx", "INVITE")
    assert invite["transport"] == "WSS" and "Via: SIP/2.0/WSS " in invite["message"]
    assert ";transport=wss>" in invite["message"]


def test_wss_with_an_untrusted_certificate_fails_the_endpoint_at_once(kam: Kamailio) -> None:
    if kam.wss_port is None:
        pytest.skip("kamailio-tls-modules not installed: no WSS listener")
    ep = wss_endpoint(kam, "s/bad", "caller", "1006", target="sip:1000@127.0.0.1")
    items = run(kam, [[ep]], "", socket_per_endpoint=True, tls=TlsSettings(verify="system"))
    out = items.outcome("s/bad")  # the connect error, not a Timer F timeout 32 s later
    assert out["outcome"] in ("OSERROR", "REGISTRATION_FAILED"), out
    assert "certificate" in out["reason"].lower(), out
    assert not items.of("phase", "s/bad") or items.phases("s/bad")[-1] == "CLOSED"


def test_cli_answer_over_ws_and_call_over_wss(kam: Kamailio, tmp_path: Path) -> None:
    """``sipswarm answer --transport ws`` registers; ``sipswarm call --transport wss`` calls it."""
    ws_host, ws_port = kam.address("ws")
    listen = f"127.0.0.1:{free_port(('udp',))}"  # not bound over WS, but the flag needs a port
    argv = [*SIPSWARM, "answer", "--listen", listen, "--rtp-ports", "52000-52099",
            "--transport", "ws", "--registrar", f"{ws_host}:{ws_port}", "--user", "1007",
            "--password", kam.password("1007"), "--duration", "30"]  # fmt: skip
    answerer = ManagedProcess(argv, tmp_path / "answer.log")
    try:
        wait_until(lambda: "REGISTERED" in answerer.log_path.read_text(), 15, "sipswarm answer")
        call = ["--transport", "ws", "--registrar", f"{ws_host}:{ws_port}"]
        if kam.wss_port is not None and kam.certs is not None:
            call = ["--transport", "wss", "--registrar", f"127.0.0.1:{kam.wss_port}",
                    "--tls-verify", "custom", "--ca-file", str(kam.certs.ca)]  # fmt: skip
        done = subprocess.run(
            [*SIPSWARM, "call", "sip:1007@127.0.0.1", *call, "--user", "1008",
             "--password", kam.password("1008"), "--duration", "1.5", "--bind", "127.0.0.1",
             "--rtp-ports", "52100-52199"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        transport = call[1].upper()
        assert f"Via: SIP/2.0/{transport} " in done.stdout
        assert re.search(r"\.invalid:(80|443);transport=wss?>", done.stdout)
    finally:
        answerer.stop(first_signal=signal.SIGTERM, grace=5)
