"""RFC 3263 server location: which transport, address and port to send a request to.

Theory of operation
-------------------
:meth:`SipResolver.resolve` turns a host (and optional port and transport)
into an ordered failover list of :class:`ServerTarget` (RFC 3263 §4.3: try
them in order). The steps, each cited where it is implemented:

1. An override (``ResolverSettings.overrides``) replaces the host, and its
   port if it has one, before anything else: a test plan's outbound proxy.
2. Transport (§4.1): an explicit transport wins. Otherwise an IP literal or
   an explicit port means UDP (TLS for sips). Otherwise NAPTR records of the
   host pick transports and SRV names; without NAPTR the SRV names of each
   supported transport are tried; without either, UDP (TLS for sips).
3. Address and port (§4.2): an IP literal is used as it is (no DNS). An
   explicit port means A/AAAA of the host. Otherwise SRV records, ordered by
   priority and, within a priority, by RFC 2782 weighted random choice; each
   SRV target's A/AAAA records. Without SRV, A/AAAA of the host with the
   default port (5060, 5061 for TLS).

Without DNS: :meth:`SipResolver.resolve_now` answers at once, without
awaiting, for a host that needs no query (an IP literal, ``localhost``, an
override to one) and returns None otherwise (then await :meth:`resolve`).
Its answers never change, so they are remembered per argument tuple: a
caller shard placing thousands of calls to one proxy address resolves it
once, and each endpoint's set-up stays in one callback (engine/setup.py).

Every DNS answer is cached for its TTL (clamped to ``min_ttl``..``max_ttl``);
a name that does not exist or has no record of the type is cached for
``negative_ttl``. A server that does not answer is not cached. Randomness
(SRV weights) and the clock are injected so tests are deterministic.
"""

from __future__ import annotations

import ipaddress
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver
from sipmessage import URI

from sipswarm.engine.transport import Address
from sipswarm.errors import ConfigError, ResolutionError
from sipswarm.memo import remember

__all__ = ["DEFAULT_PORTS", "ResolverSettings", "ServerTarget", "SipResolver"]

DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061, "WS": 80, "WSS": 443}
# RFC 3263 §4.1: NAPTR service field -> transport; SRV prefix per transport.
_NAPTR_SERVICES = {"SIP+D2U": "UDP", "SIP+D2T": "TCP", "SIPS+D2T": "TLS"}
_SRV_PREFIX = {"UDP": "_sip._udp.", "TCP": "_sip._tcp.", "TLS": "_sips._tcp."}
_TRANSPORTS = ("UDP", "TCP", "TLS")
# RFC 7118 defines no NAPTR/SRV service for SIP over WebSocket: only when asked for
# explicitly, by A/AAAA and the port given (default 80/443, the URI's scheme).
_WEBSOCKET = ("WS", "WSS")
#: Bound of each of the resolver's memos (cleared when full: plans use a few hosts).
_MEMO_SIZE = 1024


@dataclass(frozen=True, slots=True)
class ServerTarget:
    """One place to send to: transport token, (ip, port), and the TLS server name.

    ``server_name`` is the domain the request was addressed to: the name for
    TLS SNI and certificate matching (RFC 5922 §4), not the SRV target.
    """

    transport: str
    address: Address
    server_name: str


@dataclass(frozen=True, slots=True)
class ResolverSettings:
    """Where to ask and what to prefer.

    ``nameservers``: (ip, port) pairs; None reads /etc/resolv.conf.
    ``overrides``: host -> (host or IP, port or None), applied before DNS.
    ``transports``: the transports this client supports, in preference order
    for the SRV probe when a domain has no NAPTR records.
    """

    nameservers: Sequence[Address] | None = None
    overrides: Mapping[str, tuple[str, int | None]] = field(default_factory=dict)
    transports: Sequence[str] = _TRANSPORTS
    ipv6: bool = False
    timeout: float = 2.0
    min_ttl: float = 0.0
    max_ttl: float = 3600.0
    negative_ttl: float = 30.0


def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


class SipResolver:
    """RFC 3263 resolver with a TTL cache; one per engine shard.

    Call :meth:`resolve` (or :meth:`resolve_uri`) for each new target; the
    result is the failover order. ResolutionError says why nothing was found.
    """

    def __init__(
        self,
        settings: ResolverSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings = settings or ResolverSettings()
        for name in settings.transports:
            if name not in _TRANSPORTS:
                raise ConfigError(
                    f"resolver.transports has {name!r}; use some of {', '.join(_TRANSPORTS)}"
                )
        self._clock = clock
        self._rng = rng or random.Random()
        self._cache: dict[tuple[str, str], tuple[float, list[Any]]] = {}
        self._dns = dns.asyncresolver.Resolver(configure=settings.nameservers is None)
        if settings.nameservers is not None:
            if len({port for _, port in settings.nameservers}) > 1:
                raise ConfigError("resolver.nameservers must all use the same port")
            self._dns.nameservers = [ip for ip, _ in settings.nameservers]
            self._dns.port = settings.nameservers[0][1] if settings.nameservers else 53
        self._dns.lifetime = settings.timeout
        self._dns.timeout = settings.timeout
        # resolve_now's answers and parsed URIs: they depend on the arguments only
        self._literal_memo: dict[tuple[str, int | None, str, bool], ServerTarget | None] = {}
        self._uri_memo: dict[str, tuple[str, int | None, str, bool]] = {}
        self.queries_sent = 0
        self.cache_hits = 0
        self._last_failure = ""

    async def resolve_uri(self, uri: str) -> list[ServerTarget]:
        """Resolve a ``sip:``/``sips:`` URI: maddr, port and transport parameters respected."""
        host, port, transport, secure = self._uri_parts(uri)
        return await self.resolve(host, port, transport, secure=secure)

    def resolve_uri_now(self, uri: str) -> list[ServerTarget] | None:
        """:meth:`resolve_uri` without awaiting when no DNS is needed, else None
        (see :meth:`resolve_now`)."""
        host, port, transport, secure = self._uri_parts(uri)
        return self.resolve_now(host, port, transport, secure=secure)

    def resolve_now(
        self, host: str, port: int | None = None, transport: str = "auto", *, secure: bool = False
    ) -> list[ServerTarget] | None:
        """The targets of :meth:`resolve` when they need no DNS (an IP literal,
        ``localhost``, an override to an IP), found without awaiting; None when
        DNS must be asked: then ``await resolve(...)`` with the same arguments.

        Raises ConfigError for an unknown transport, as :meth:`resolve` does.
        """
        key = (host, port, transport, secure)
        try:
            target = self._literal_memo[key]
        except KeyError:
            target = self._literal_target(*self._normalise(host, port, transport, secure))
            remember(self._literal_memo, key, target, _MEMO_SIZE)
        return None if target is None else [target]

    async def resolve(
        self, host: str, port: int | None = None, transport: str = "auto", *, secure: bool = False
    ) -> list[ServerTarget]:
        """Return the targets for ``host`` in failover order (RFC 3263 §4).

        ``transport`` is ``auto`` or one of UDP/TCP/TLS/WS/WSS (any case); ``secure``
        is true for a sips URI (then only TLS qualifies). Raises
        ResolutionError when DNS has nothing usable.
        """
        literal = self.resolve_now(host, port, transport, secure=secure)
        if literal is not None:
            return literal
        name, port, transport, domain, _ = self._normalise(host, port, transport, secure)
        self._last_failure = ""
        if transport == "AUTO":
            targets = await self._resolve_auto(name, port, domain, secure)
        else:
            targets = await self._resolve_transport(name, port, transport, domain)
        if not targets:
            why = f": {self._last_failure}" if self._last_failure else ""
            raise ResolutionError(
                f"no SIP server found for {host!r} (transport {transport.lower()}){why}; "
                "check the domain's NAPTR/SRV/A records or give an IP address"
            )
        return targets

    def clear_cache(self) -> None:
        """Forget every cached answer."""
        self._cache.clear()

    def _uri_parts(self, uri: str) -> tuple[str, int | None, str, bool]:
        """Host (maddr first), port, transport and sips-ness of a SIP URI (remembered)."""
        parts = self._uri_memo.get(uri)
        if parts is not None:
            return parts
        try:
            parsed = URI.parse(uri)
        except ValueError as exc:
            raise ConfigError(f"not a SIP URI: {uri!r} ({exc})") from exc
        params = parsed.parameters
        host = params.get("maddr") or parsed.host
        transport = (params.get("transport") or "auto").upper()
        parts = (host, parsed.port, transport, parsed.scheme == "sips")
        return remember(self._uri_memo, uri, parts, _MEMO_SIZE)

    def _normalise(
        self, host: str, port: int | None, transport: str, secure: bool
    ) -> tuple[str, int | None, str, str, bool]:
        """(name to look up, port, TRANSPORT or AUTO, domain, secure) for ``host``:
        transport checked, sips applied, override applied, localhost made loopback."""
        transport = transport.upper()
        if transport != "AUTO" and transport not in _TRANSPORTS + _WEBSOCKET:
            raise ConfigError(
                f"transport must be auto, udp, tcp, tls, ws or wss, got {transport!r}"
            )
        if secure and transport in ("UDP", "TCP"):
            transport = "TLS"  # RFC 3263 §4.1: sips is TLS over TCP
        elif secure and transport == "WS":
            transport = "WSS"  # RFC 7118: a sips URI over WebSocket means WSS
        domain = host.strip("[]").rstrip(".").lower()
        name, port = self._apply_override(domain, port)
        if name == "localhost" or name.endswith(".localhost"):
            name = "127.0.0.1"  # RFC 6761 6.3: loopback, without asking DNS
        return name, port, transport, domain, secure

    @staticmethod
    def _literal_target(
        name: str, port: int | None, transport: str, domain: str, secure: bool
    ) -> ServerTarget | None:
        """The one target of an IP literal (RFC 3263 §4.2: no DNS at all), else None."""
        ip = _ip_literal(name)
        if ip is None:
            return None
        if transport == "AUTO":  # RFC 3263 §4.1: a numeric IP selects UDP (TLS for sips)
            transport = "TLS" if secure else "UDP"
        return ServerTarget(transport, (ip, port or DEFAULT_PORTS[transport]), domain)

    def _apply_override(self, domain: str, port: int | None) -> tuple[str, int | None]:
        override = self.settings.overrides.get(domain)
        if override is None:
            return domain, port
        new_host, new_port = override
        return new_host.lower(), new_port if new_port is not None else port

    async def _resolve_auto(
        self, name: str, port: int | None, domain: str, secure: bool
    ) -> list[ServerTarget]:
        # RFC 3263 §4.1: a numeric IP or an explicit port selects UDP (TLS for sips).
        if _ip_literal(name) is not None or port is not None:
            return await self._resolve_transport(name, port, "TLS" if secure else "UDP", domain)
        targets: list[ServerTarget] = []
        for transport, srv_name in await self._naptr(name, secure):
            targets += await self._srv_targets(srv_name, transport, domain)
        if targets:
            return _unique(targets)
        # RFC 3263 §4.1: no NAPTR -> SRV query for each supported transport.
        for transport in self._supported(secure):
            targets += await self._srv_targets(_SRV_PREFIX[transport] + name, transport, domain)
        if targets:
            return _unique(targets)
        # RFC 3263 §4.1: neither -> UDP (TLS for sips); §4.2: A/AAAA with the default port.
        fallback = "TLS" if secure else "UDP"
        return await self._host_targets(name, DEFAULT_PORTS[fallback], fallback, domain)

    async def _resolve_transport(
        self, name: str, port: int | None, transport: str, domain: str
    ) -> list[ServerTarget]:
        ip = _ip_literal(name)
        if ip is not None:  # RFC 3263 §4.2: numeric IP -> no DNS at all
            return [ServerTarget(transport, (ip, port or DEFAULT_PORTS[transport]), domain)]
        if port is not None or transport in _WEBSOCKET:  # RFC 3263 §4.2: explicit port
            port = port or DEFAULT_PORTS[transport]
            return await self._host_targets(name, port, transport, domain)
        targets = await self._srv_targets(_SRV_PREFIX[transport] + name, transport, domain)
        if targets:
            return _unique(targets)
        return await self._host_targets(name, DEFAULT_PORTS[transport], transport, domain)

    def _supported(self, secure: bool) -> list[str]:
        return [t for t in self.settings.transports if t == "TLS" or not secure]

    async def _naptr(self, name: str, secure: bool) -> list[tuple[str, str]]:
        """RFC 3263 §4.1: SIP NAPTR records with flag S, by order then preference."""
        records = await self._query(name, "NAPTR")
        supported = self._supported(secure)
        chosen = []
        for rd in sorted(records, key=lambda r: (r.order, r.preference)):
            transport = _NAPTR_SERVICES.get(rd.service.decode("ascii", "replace").upper())
            if rd.flags.lower() == b"s" and transport in supported:
                chosen.append((transport, rd.replacement.to_text(omit_final_dot=True)))
        return chosen

    async def _srv_targets(self, srv_name: str, transport: str, domain: str) -> list[ServerTarget]:
        """RFC 2782 order of one SRV set, each target expanded to its addresses."""
        targets: list[ServerTarget] = []
        for host, port in self._order_srv(await self._query(srv_name, "SRV")):
            targets += await self._host_targets(host, port, transport, domain)
        return targets

    def _order_srv(self, records: list[Any]) -> list[tuple[str, int]]:
        """RFC 2782: ascending priority; within one, weighted random without replacement."""
        ordered: list[tuple[str, int]] = []
        for priority in sorted({r.priority for r in records}):
            # RFC 2782: zero-weight records first, so they win only when the draw is 0.
            group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight)
            while group:
                pick = self._rng.uniform(0, sum(r.weight for r in group))
                running, index = 0, len(group) - 1
                for i, r in enumerate(group):
                    running += r.weight
                    if running >= pick:
                        index = i
                        break
                rd = group.pop(index)
                target = rd.target.to_text(omit_final_dot=True)
                if target not in ("", "."):  # "." = service decidedly not available
                    ordered.append((target.lower(), int(rd.port)))
        return ordered

    async def _host_targets(
        self, name: str, port: int, transport: str, domain: str
    ) -> list[ServerTarget]:
        ip = _ip_literal(name)
        override = self.settings.overrides.get(name)
        if ip is None and override is not None:
            ip = _ip_literal(override[0])
        if ip is not None:
            return [ServerTarget(transport, (ip, port), domain)]
        kinds = ("A", "AAAA") if self.settings.ipv6 else ("A",)
        targets = []
        for kind in kinds:
            for rd in await self._query(name, kind):
                targets.append(ServerTarget(transport, (rd.address, port), domain))
        return targets

    async def _query(self, name: str, rdtype: str) -> list[Any]:
        """One DNS question through the TTL cache; [] when there is no answer."""
        key = (name, rdtype)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            self.cache_hits += 1
            return cached[1]
        self.queries_sent += 1
        settings = self.settings
        try:
            answer = await self._dns.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            self._cache[key] = (now + settings.negative_ttl, [])
            return []
        except (dns.exception.DNSException, OSError) as exc:
            self._last_failure = f"{rdtype} {name}: {exc}"
            return []
        if answer.rrset is None:
            self._cache[key] = (now + settings.negative_ttl, [])
            return []
        ttl = min(max(float(answer.rrset.ttl), settings.min_ttl), settings.max_ttl)
        records = list(answer.rrset)
        self._cache[key] = (now + ttl, records)
        return records


def _unique(targets: list[ServerTarget]) -> list[ServerTarget]:
    return list(dict.fromkeys(targets))
