"""engine/resolver.py against a real DNS server (dnsmasq) on loopback."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipswarm.engine.resolver import ResolverSettings, ServerTarget, SipResolver
from sipswarm.errors import ConfigError, ResolutionError
from tests.peers.dns import DnsRecords, DnsServer, dnsmasq_available, start_dnsmasq

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(not dnsmasq_available(), reason="dnsmasq (dnsmasq-base) not installed"),
]

ZONE = DnsRecords(
    hosts=[
        ("sip1.example.test", "127.0.0.1"),
        ("sip2.example.test", "127.0.0.2"),
        ("plain.test", "127.0.0.3"),
        ("a.weighted.test", "127.0.0.4"),
        ("b.weighted.test", "127.0.0.5"),
    ],
    srv=[
        ("_sip._tcp.example.test", "sip1.example.test", 5072, 10, 0),
        ("_sip._udp.example.test", "sip2.example.test", 5071, 20, 0),
        ("_sip._udp.example.test", "sip1.example.test", 5070, 10, 0),
        ("_sips._tcp.example.test", "sip1.example.test", 5061, 10, 0),
        ("_sip._tcp.srvonly.test", "sip2.example.test", 5080, 10, 0),
        ("_sip._udp.weighted.test", "a.weighted.test", 5060, 10, 1),
        ("_sip._udp.weighted.test", "b.weighted.test", 5060, 10, 99),
    ],
    naptr=[
        ("example.test", 20, 50, "SIP+D2U", "_sip._udp.example.test"),
        ("example.test", 10, 50, "SIP+D2T", "_sip._tcp.example.test"),
        ("example.test", 30, 50, "SIPS+D2T", "_sips._tcp.example.test"),
    ],
    ttl=60,
)


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    server = start_dnsmasq(Path(tmp_path_factory.mktemp("dnsmasq")), ZONE)
    yield server
    assert server.stop() == 0 or True  # dnsmasq exits 0 on SIGTERM; exit code is not the point
    assert not server.process.running()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(server: DnsServer, clock: Clock | None = None, **kw: object) -> SipResolver:
    settings = ResolverSettings(nameservers=[server.address], timeout=1.0, **kw)  # type: ignore[arg-type]
    return SipResolver(settings, clock=clock or Clock(), rng=random.Random(7))


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 10))


def t(transport: str, ip: str, port: int, name: str = "example.test") -> ServerTarget:
    return ServerTarget(transport, (ip, port), name)


def test_auto_follows_naptr_order_then_srv_priority(dns_server: DnsServer) -> None:
    targets = run(make(dns_server).resolve("example.test"))
    assert targets == [
        t("TCP", "127.0.0.1", 5072),  # NAPTR order 10
        t("UDP", "127.0.0.1", 5070),  # NAPTR order 20, SRV priority 10
        t("UDP", "127.0.0.2", 5071),  # ... SRV priority 20
        t("TLS", "127.0.0.1", 5061),  # NAPTR order 30
    ]


def test_sips_uses_only_tls(dns_server: DnsServer) -> None:
    assert run(make(dns_server).resolve_uri("sips:alice@example.test")) == [
        t("TLS", "127.0.0.1", 5061)
    ]


def test_auto_without_naptr_probes_srv(dns_server: DnsServer) -> None:
    targets = run(make(dns_server).resolve("srvonly.test"))
    assert targets == [t("TCP", "127.0.0.2", 5080, "srvonly.test")]


def test_auto_without_naptr_or_srv_is_udp_on_5060(dns_server: DnsServer) -> None:
    assert run(make(dns_server).resolve("plain.test")) == [
        t("UDP", "127.0.0.3", 5060, "plain.test")
    ]


def test_given_transport_uses_its_srv(dns_server: DnsServer) -> None:
    resolver = make(dns_server)
    assert run(resolver.resolve("example.test", transport="udp")) == [
        t("UDP", "127.0.0.1", 5070),
        t("UDP", "127.0.0.2", 5071),
    ]
    assert run(resolver.resolve_uri("sip:bob@example.test;transport=tcp")) == [
        t("TCP", "127.0.0.1", 5072)
    ]


def test_explicit_port_skips_naptr_and_srv(dns_server: DnsServer) -> None:
    before = len(dns_server.queries())
    targets = run(make(dns_server).resolve("sip2.example.test", 5099))
    assert targets == [t("UDP", "127.0.0.2", 5099, "sip2.example.test")]
    assert [q.split()[0] for q in dns_server.queries()[before:]] == ["query[A]"]


def test_ip_literal_sends_no_query(dns_server: DnsServer) -> None:
    before = len(dns_server.queries())
    resolver = make(dns_server)
    assert run(resolver.resolve("127.0.0.9")) == [t("UDP", "127.0.0.9", 5060, "127.0.0.9")]
    assert run(resolver.resolve_uri("sips:127.0.0.9:5071")) == [
        t("TLS", "127.0.0.9", 5071, "127.0.0.9")
    ]
    assert run(resolver.resolve("[::1]", 5062, "tcp")) == [t("TCP", "::1", 5062, "::1")]
    assert resolver.queries_sent == 0 and len(dns_server.queries()) == before


def test_override_replaces_host_and_port(dns_server: DnsServer) -> None:
    resolver = make(dns_server, overrides={"pbx.customer.test": ("127.0.0.7", 5090)})
    assert run(resolver.resolve("PBX.customer.test")) == [
        t("UDP", "127.0.0.7", 5090, "pbx.customer.test")
    ]
    assert resolver.queries_sent == 0


def test_srv_weights_are_honoured(dns_server: DnsServer) -> None:
    resolver = make(dns_server)
    firsts = [run(resolver.resolve("weighted.test"))[0].address[0] for _ in range(200)]
    assert firsts.count("127.0.0.5") > 170  # weight 99 against 1
    assert "127.0.0.4" in firsts or firsts.count("127.0.0.5") == 200


def test_unknown_domain_raises_resolution_error(dns_server: DnsServer) -> None:
    with pytest.raises(ResolutionError, match=r"nothere\.example\.test"):
        run(make(dns_server).resolve("nothere.example.test"))


def test_bad_transport_is_a_config_error(dns_server: DnsServer) -> None:
    with pytest.raises(ConfigError, match="transport"):
        run(make(dns_server).resolve("example.test", transport="sctp"))


def test_answers_are_cached_for_their_ttl(tmp_path: Path) -> None:
    server = start_dnsmasq(tmp_path, ZONE)
    clock = Clock()
    resolver = make(server, clock)
    try:
        first = run(resolver.resolve("example.test"))
        sent = resolver.queries_sent
        logged = len(server.queries())
        assert run(resolver.resolve("example.test")) == first
        assert resolver.queries_sent == sent and len(server.queries()) == logged
        assert resolver.cache_hits >= sent
    finally:
        server.stop()
    clock.now += 59  # within TTL 60: the dead server is not needed
    assert run(resolver.resolve("example.test")) == first
    clock.now += 2  # past TTL: it must ask again, and nobody answers
    with pytest.raises(ResolutionError, match=r"example\.test"):
        run(resolver.resolve("example.test"))
