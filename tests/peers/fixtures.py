"""pytest fixtures over tests/peers, registered by tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .dns import DnsRecords, DnsServer, dnsmasq_available, start_dnsmasq
from .kamailio import Kamailio, KamailioOptions, kamailio_available, start_kamailio
from .pjsua import PjsuaPeer, pjsua_available, start_pjsua
from .relay import UdpRelay
from .sipp import SippUas, sipp_available, start_sipp_uas


@pytest.fixture(scope="session")
def kamailio() -> Iterator[Kamailio]:
    """One Kamailio for the whole session (auth on, TLS when available). Do not stop it."""
    if not kamailio_available():
        pytest.skip("kamailio not installed")
    kam = start_kamailio()
    yield kam
    kam.stop()


@pytest.fixture
def kamailio_factory() -> Iterator[Callable[[KamailioOptions], Kamailio]]:
    """Start Kamailios with custom options; all are stopped at the end of the test."""
    if not kamailio_available():
        pytest.skip("kamailio not installed")
    started: list[Kamailio] = []

    def start(options: KamailioOptions) -> Kamailio:
        kam = start_kamailio(options)
        started.append(kam)
        return kam

    yield start
    for kam in started:
        kam.stop()


@pytest.fixture
def sipp_uas(tmp_path: Path) -> Iterator[Callable[..., SippUas]]:
    """``sipp_uas(mode="answer"|"busy"|"ring", rtp_echo=False, transport="udp")``; stopped after."""
    if not sipp_available():
        pytest.skip("sipp (sip-tester) not installed")
    started: list[SippUas] = []

    def start(mode: str = "answer", **kwargs: Any) -> SippUas:
        uas = start_sipp_uas(tmp_path, mode, **kwargs)
        started.append(uas)
        return uas

    yield start
    for uas in started:
        uas.stop()


@pytest.fixture
def pjsua_peer(tmp_path: Path) -> Iterator[Callable[..., PjsuaPeer]]:
    """``pjsua_peer("answer", "--calls", "1")`` -> a running PjsuaPeer; stopped after."""
    if not pjsua_available():
        pytest.skip("pjsua2 (pjsua2-python) not installed")
    started: list[PjsuaPeer] = []

    def start(mode: str, *args: str, max_time: float = 30) -> PjsuaPeer:
        peer = start_pjsua(tmp_path, mode, *args, max_time=max_time)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


@pytest.fixture
def dns_server_factory(tmp_path: Path) -> Iterator[Callable[[DnsRecords], DnsServer]]:
    """``dns_server_factory(DnsRecords(...))`` -> dnsmasq on loopback; stopped after."""
    if not dnsmasq_available():
        pytest.skip("dnsmasq (dnsmasq-base) not installed")
    started: list[DnsServer] = []

    def start(records: DnsRecords) -> DnsServer:
        workdir = tmp_path / f"dns{len(started)}"
        workdir.mkdir()
        server = start_dnsmasq(workdir, records)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def udp_relay() -> Iterator[Callable[..., UdpRelay]]:
    """``udp_relay(target, drop_every=N, delay=s, jitter=s)`` -> a started relay; stopped after."""
    started: list[UdpRelay] = []

    def start(target: tuple[str, int], **kwargs: Any) -> UdpRelay:
        relay = UdpRelay(target, **kwargs).start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()
