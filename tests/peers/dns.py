"""A real DNS server on loopback for RFC 3263 tests: dnsmasq with local records only.

    server = start_dnsmasq(tmp_path, DnsRecords(
        hosts=[("sip1.example.test", "127.0.0.1")],
        srv=[("_sip._udp.example.test", "sip1.example.test", 5070, 10, 5)],
        naptr=[("example.test", 10, 50, "SIP+D2U", "_sip._udp.example.test")],
    ))
    ... SipResolver(ResolverSettings(nameservers=[server.address]))
    server.stop()

It answers only the records given (``--no-resolv --no-hosts``), NXDOMAIN for
other names under ``local_domains`` and REFUSED for everything else, and
logs every query (``server.queries()``), so a test can tell a cache hit
from a query.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.resolver

from .procs import LOOPBACK, ManagedProcess, free_port, wait_until


@dataclass
class DnsRecords:
    """Local data: A records, SRV (name, target, port, priority, weight), NAPTR
    (name, order, preference, service, replacement; flag S, empty regexp)."""

    hosts: list[tuple[str, str]] = field(default_factory=list)
    srv: list[tuple[str, str, int, int, int]] = field(default_factory=list)
    naptr: list[tuple[str, int, int, str, str]] = field(default_factory=list)
    local_domains: list[str] = field(default_factory=lambda: ["test"])
    ttl: int = 60


@dataclass
class DnsServer:
    address: tuple[str, int]
    process: ManagedProcess

    def queries(self) -> list[str]:
        """Every query line dnsmasq logged so far, e.g. ``query[SRV] _sip._udp.x from ...``."""
        text = self.process.log_path.read_text(errors="replace")
        return [line.split(": ", 1)[1] for line in text.splitlines() if ": query[" in line]

    def stop(self) -> int:
        return self.process.stop()


def dnsmasq_available() -> bool:
    return shutil.which("dnsmasq") is not None


def start_dnsmasq(workdir: Path, records: DnsRecords, timeout: float = 5.0) -> DnsServer:
    """Start dnsmasq on 127.0.0.1:<free port> serving ``records``; ready when it answers."""
    port = free_port(("udp", "tcp"))
    argv = [
        "dnsmasq",
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        f"--pid-file={workdir / 'dnsmasq.pid'}",
        f"--listen-address={LOOPBACK}",
        "--bind-interfaces",
        f"--port={port}",
        "--log-facility=-",
        "--log-queries",
        f"--local-ttl={records.ttl}",
        f"--host-record=ready.sipswarm.test,{LOOPBACK}",
    ]
    argv += [f"--local=/{d}/" for d in records.local_domains]
    argv += [f"--host-record={name},{ip}" for name, ip in records.hosts]
    argv += [f"--srv-host={n},{t},{p},{pri},{w}" for n, t, p, pri, w in records.srv]
    argv += [
        f"--naptr-record={n},{o},{pref},S,{svc},,{rep}" for n, o, pref, svc, rep in records.naptr
    ]
    process = ManagedProcess(argv, workdir / "dnsmasq.log")
    server = DnsServer((LOOPBACK, port), process)
    probe = dns.resolver.Resolver(configure=False)
    probe.nameservers = [LOOPBACK]
    probe.port = port
    probe.lifetime = 0.5

    def answers() -> bool:
        if not process.running():
            raise RuntimeError(f"dnsmasq exited:\n{process.log_tail()}")
        try:
            probe.resolve("ready.sipswarm.test", "A")
        except dns.exception.DNSException:
            return False
        return True

    try:
        wait_until(answers, timeout, "dnsmasq")
    except BaseException:
        process.stop()
        raise
    return server
