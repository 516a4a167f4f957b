"""An endpoint's set-up: in one callback when nothing needs awaiting, through a task otherwise.

``start()`` of an endpoint whose server is an IP literal and whose transport's shared SIP
runtime is already open does everything up to its INVITE (or its listening contact)
itself: INITIALIZING, REGISTERED and CALLING are out when it returns and no asyncio task
was made. The first endpoint of a transport (the socket still to open), an endpoint with
its own socket, and a server named by DNS take the awaited path. The resolver's
``resolve_now`` is checked against ``resolve`` for the hosts that need no DNS.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sipswarm.engine.endpoint import Endpoint
from sipswarm.engine.engine import EndpointEngine
from sipswarm.engine.resolver import ResolverSettings, ServerTarget, SipResolver
from sipswarm.errors import ConfigError
from sipswarm.protocol import TraceMode
from tests.peers.dns import DnsRecords, dnsmasq_available, start_dnsmasq

from .engine_harness import Collector, assignment, endpoint, make_engine

pytestmark = pytest.mark.timeout(30)


def _start(engine: EndpointEngine, ep: dict[str, Any]) -> Endpoint:
    ep["media"]["rtp"] = False  # signalling only: no RTP pair to bind either
    spec = assignment("setup", ep, trace="none").endpoints[0]
    return engine.start_endpoint(spec, "setup", TraceMode.NONE)


def _caller_target(contact: str, host: str | None = None) -> str:
    if host is None:
        return contact
    user, hostport = contact.split("@", 1)
    return f"{user}@{host}:{hostport.rsplit(':', 1)[1]}"


async def _call(
    items: Collector, engine: EndpointEngine, host: str | None = None
) -> tuple[list[str], list[str], bool]:
    """A receiver, then a caller: the caller's phases right after ``start()`` and
    whether it made a task, the receiver's the same."""
    rx = _start(engine, endpoint("s/rx", "receiver", user="bob", expected_calls=1))
    rx_phases, rx_task = items.phases("s/rx"), rx._task is not None
    contact = await items.contact("s/rx")
    tx = _start(engine, endpoint("s/tx", "caller", target=_caller_target(contact, host),
                                 duration_s=0.2))  # fmt: skip
    tx_phases, tx_task = items.phases("s/tx"), tx._task is not None
    await asyncio.wait_for(engine.wait_idle(), 15)
    for eid in ("s/rx", "s/tx"):
        assert items.outcome(eid)["outcome"] == "SUCCESS", items.outcome(eid)
    assert rx_phases == ["INITIALIZING"] and rx_task  # the first: opens the UDP socket
    return tx_phases, items.phases("s/tx"), tx_task


@pytest.mark.parametrize("per_endpoint", [False, True], ids=["shared-socket", "own-socket"])
def test_an_ip_literal_caller_on_an_open_runtime_sends_its_invite_from_start(
    per_endpoint: bool,
) -> None:
    async def main() -> tuple[list[str], list[str], bool]:
        items = Collector()
        engine = make_engine(items, socket_per_endpoint=per_endpoint)
        try:
            return await _call(items, engine)
        finally:
            await engine.close()

    at_start, phases, task = asyncio.run(main())
    assert phases[-1] == "CLOSED" and "INCALL" in phases
    if per_endpoint:  # its own socket to bind: the awaited path
        assert at_start == ["INITIALIZING"] and task
    else:
        assert at_start == ["INITIALIZING", "REGISTERED", "CALLING"] and not task


@pytest.mark.peers
@pytest.mark.skipif(not dnsmasq_available(), reason="dnsmasq (dnsmasq-base) not installed")
def test_a_target_named_by_dns_is_resolved_through_the_awaited_path(tmp_path: Path) -> None:
    server = start_dnsmasq(tmp_path, DnsRecords(hosts=[("callee.test", "127.0.0.1")]))
    try:

        async def main() -> tuple[list[str], list[str], bool]:
            items = Collector()
            settings = ResolverSettings(nameservers=[server.address], timeout=2.0)
            engine = make_engine(items, resolver=settings)
            try:
                return await _call(items, engine, host="callee.test")
            finally:
                await engine.close()

        at_start, phases, task = asyncio.run(main())
        assert any("query[A] callee.test" in q for q in server.queries())
    finally:
        server.stop()
    assert at_start == ["INITIALIZING"] and task
    assert phases[-1] == "CLOSED" and "INCALL" in phases


# -- SipResolver.resolve_now ---------------------------------------------------------------


def _t(transport: str, ip: str, port: int, domain: str) -> ServerTarget:
    return ServerTarget(transport, (ip, port), domain)


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("127.0.0.9",), {}, _t("UDP", "127.0.0.9", 5060, "127.0.0.9")),
        (("127.0.0.9", 5070, "udp"), {}, _t("UDP", "127.0.0.9", 5070, "127.0.0.9")),
        (("127.0.0.9", None, "tcp"), {}, _t("TCP", "127.0.0.9", 5060, "127.0.0.9")),
        (("127.0.0.9",), {"secure": True}, _t("TLS", "127.0.0.9", 5061, "127.0.0.9")),
        (("127.0.0.9", None, "ws"), {"secure": True}, _t("WSS", "127.0.0.9", 443, "127.0.0.9")),
        (("[::1]", 5062, "tcp"), {}, _t("TCP", "::1", 5062, "::1")),
        (("LocalHost", 5080), {}, _t("UDP", "127.0.0.1", 5080, "localhost")),
        (("pbx.test", None, "tls"), {}, _t("TLS", "127.0.0.7", 5061, "pbx.test")),  # override
    ],
)
def test_resolve_now_answers_as_resolve_for_hosts_without_dns(
    args: tuple[Any, ...], kwargs: dict[str, Any], expected: ServerTarget
) -> None:
    settings = ResolverSettings(nameservers=[], overrides={"pbx.test": ("127.0.0.7", None)})
    resolver = SipResolver(settings)
    assert resolver.resolve_now(*args, **kwargs) == [expected]
    assert resolver.resolve_now(*args, **kwargs) == [expected]  # remembered: the same
    assert asyncio.run(resolver.resolve(*args, **kwargs)) == [expected]
    assert resolver.queries_sent == 0


def test_resolve_now_leaves_dns_names_to_resolve_and_checks_the_transport() -> None:
    resolver = SipResolver(ResolverSettings(nameservers=[]))
    assert resolver.resolve_now("pbx.example.test") is None
    assert resolver.resolve_now("pbx.example.test", 5060, "udp") is None
    assert resolver.resolve_uri_now("sip:bob@pbx.example.test") is None
    assert resolver.resolve_uri_now("sips:127.0.0.9:5071") == [
        _t("TLS", "127.0.0.9", 5071, "127.0.0.9")
    ]
    assert resolver.resolve_uri_now("sip:bob@pbx.test;maddr=127.0.0.3;transport=tcp") == [
        _t("TCP", "127.0.0.3", 5060, "127.0.0.3")
    ]
    with pytest.raises(ConfigError, match="transport must be auto, udp, tcp, tls, ws or wss"):
        resolver.resolve_now("127.0.0.1", None, "sctp")
    with pytest.raises(ConfigError, match="not a SIP URI"):
        resolver.resolve_uri_now("sip:")
    assert resolver.queries_sent == 0
