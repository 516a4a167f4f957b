"""Transport errors reach the SIP stack: a refused TCP peer fails at once with 503."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from .engine_harness import Collector, assignment, check_items, endpoint, make_engine

pytestmark = pytest.mark.timeout(30)


def refused_tcp_port() -> int:
    """A loopback TCP port nobody listens on (bound, then closed: connect gets RST)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def run_one(ep: dict[str, object]) -> tuple[Collector, float]:
    async def main() -> tuple[Collector, float]:
        items = Collector()
        engine = make_engine(items, socket_per_endpoint=True)
        t0 = time.monotonic()
        try:
            await engine.start_assignment(assignment("te", ep))
            await asyncio.wait_for(engine.wait_idle(), 20)
        finally:
            await engine.close()
        return items, time.monotonic() - t0

    items, took = asyncio.run(main())
    check_items(items.items)
    return items, took


def test_call_to_refusing_tcp_peer_is_call_failed_503_at_once() -> None:
    port = refused_tcp_port()
    ep = endpoint("te/tx", "caller", transport="tcp",
                  target=f"sip:nobody@127.0.0.1:{port};transport=tcp")  # fmt: skip
    items, took = run_one(ep)
    out = items.outcome("te/tx")
    assert out["outcome"] == "CALL_FAILED" and out["final_code"] == 503, out
    assert took < 5  # not Timer B (32 s)
    [call] = items.of("call", "te/tx")
    assert call["final_code"] == 503 and call["result"] == "unavailable"


def test_register_to_refusing_tcp_registrar_is_registration_failed_503() -> None:
    port = refused_tcp_port()
    ep = endpoint("te/rx", "receiver", transport="tcp", register=True, host="127.0.0.1",
                  port=port, password="pw")  # fmt: skip
    items, took = run_one(ep)
    out = items.outcome("te/rx")
    assert out["outcome"] == "REGISTRATION_FAILED" and out["final_code"] == 503, out
    assert took < 5
    assert items.of("registration", "te/rx")[0]["status_code"] == 503
