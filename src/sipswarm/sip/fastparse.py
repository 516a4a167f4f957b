"""Fast paths for the header values the stack reads on every message.

sipmessage's typed parsers are thorough but cost 10-30 us per value (regexes
plus whitespace normalisation per parameter). A load generator reads the top
Via, the From/To tags, CSeq and the Request-URI user of every message, so
these are matched here with one precompiled regex each for the forms real
peers send; anything else (folded LWS, quoted parameters, IPv6 oddities, RFC
4475 torture) falls back to sipmessage, which stays the authority on syntax:
a value it rejects makes the message malformed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import unquote

from sipmessage import URI, Address, CSeq, Parameters, Via

from sipswarm.memo import remember

__all__ = [
    "TopVia",
    "first_uri",
    "parse_cseq",
    "parse_host_port",
    "parse_ruri",
    "parse_tag",
    "parse_top_via",
    "route_set",
    "sipmessage_parse",
    "strip_tag",
]

T = TypeVar("T")


def sipmessage_parse(parse: Callable[[str], T], value: str) -> T:
    """``parse(value)`` with one of sipmessage's parsers; raises a fresh ValueError.

    sipmessage raises module-level ValueError instances (``VIA_EXCEPTION``,
    ``ADDRESS_EXCEPTION``...). Each raise leaves on that shared object a traceback
    whose frames, ours included (the stack, its calls and transactions), stay alive
    until the next failure of the same kind. The shared object is cut loose here."""
    try:
        return parse(value)
    except ValueError as exc:
        exc.__traceback__ = exc.__context__ = exc.__cause__ = None
        raise ValueError(str(exc)) from None


_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_VIA = re.compile(
    r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?"
    rf"((?:;[{_TOKEN_CHARS}]+(?:=[{_TOKEN_CHARS}:\[\]]+)?)*)\s*(?:,|$)"
)
_ADDR = re.compile(
    rf'\s*(?:"(?:[^"\\]|\\.)*"\s*|[{_TOKEN_CHARS} ]*)<(sips?:[^<>\s"]*[A-Za-z0-9\]])>\s*'
    rf"((?:;\s*[{_TOKEN_CHARS}]+(?:\s*=\s*[{_TOKEN_CHARS}]+)?\s*)*)$"
)
_TAG = re.compile(rf";\s*tag\s*=\s*([{_TOKEN_CHARS}]+)", re.IGNORECASE)
_CSEQ = re.compile(r"\s*(\d{1,10})\s+([A-Za-z]+)\s*$")
_SIP_URI = re.compile(
    r"(sips?):(?:([A-Za-z0-9\-_.!~*'()&=+$,;?/%]+)(?::[A-Za-z0-9\-_.!~*'()&=+$,%]*)?@)?"
    r"(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
    r"(?:;[A-Za-z0-9\-_.!~*'()%]+(?:=[A-Za-z0-9\-_.!~*'()%\[\]:/&+$]+)?)*"
)
_LIST_COMMA = re.compile(r"\s*,\s*")
# one Record-Route entry as proxies write it: <uri>, no display name, no header parameters
_ROUTE = re.compile(rf"\s*(<{_SIP_URI.pattern}>)\s*")
_HOST_PORT = re.compile(
    r"(sips?):(?:[^@;?]*@)?([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?((?:;[^;?]*)*)$"
)


class TopVia:
    """The top Via: where responses go and which transaction a message belongs to.

    ``params`` is parsed on first use: most messages only need the branch, which
    is cut out of the raw parameter text directly.
    """

    __slots__ = ("_params", "_raw", "host", "port", "transport")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None,
        params: dict[str, str | None] | None = None,
        raw_params: str = "",
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self._params = params
        self._raw = raw_params

    @property
    def params(self) -> dict[str, str | None]:
        """Via parameters, name -> value (None for a parameter without '=')."""
        params = self._params
        if params is None:
            params = {}
            for item in self._raw.split(";")[1:]:
                key, eq, val = item.partition("=")
                params[key] = val if eq else None
            self._params = params
        return params

    @property
    def branch(self) -> str:
        """The branch parameter, '' when absent."""
        if self._params is not None:
            return self._params.get("branch") or ""
        raw = self._raw
        start = raw.find(";branch=")
        if start < 0:
            return ""
        start += 8
        end = raw.find(";", start)
        return raw[start:end] if end >= 0 else raw[start:]

    def __repr__(self) -> str:
        return f"TopVia({self.transport!r}, {self.host!r}, {self.port!r}, {self.params!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TopVia):
            return NotImplemented
        return (self.transport, self.host, self.port, self.params) == (
            other.transport,
            other.host,
            other.port,
            other.params,
        )

    __hash__ = None  # type: ignore[assignment]


def parse_top_via(values: list[str]) -> TopVia:
    """Top Via from the raw Via values. Raises ValueError on bad syntax. (Not memoised:
    a transaction's 100/180/200 share their Via, but a memo saved no measurable time.)"""
    m = _VIA.match(values[0])
    if m is not None:
        transport, host, port, raw = m.groups()
        return TopVia(transport, host, int(port) if port else None, None, raw)
    vias = sipmessage_parse(Via.parse_many, _LIST_COMMA.sub(", ", values[0]))
    top = vias[0]
    return TopVia(top.transport, top.host, top.port, dict(top.parameters))


MEMO_SIZE = 8192
"""Entries per memo below; a full memo is emptied (values repeat within a call,
so recent ones are what matters, and the bound holds under a flood)."""
_MISS = object()
_TAGS: dict[str, str | None] = {}
_CSEQS: dict[str, tuple[int, str]] = {}
_RURIS: dict[str, tuple[str, str | None]] = {}


def parse_tag(value: str) -> str | None:
    """The tag of a From/To value (validated). Raises ValueError on bad syntax.

    Memoised: a call's From and To values come back in every message of it."""
    tag = _TAGS.get(value, _MISS)
    if tag is not _MISS:
        return tag  # type: ignore[return-value]
    return remember(_TAGS, value, _parse_tag(value), MEMO_SIZE)


def _parse_tag(value: str) -> str | None:
    m = _ADDR.match(value)
    if m is not None:
        tag = _TAG.search(m.group(2))
        return tag.group(1) if tag else None
    return sipmessage_parse(Address.parse, value).parameters.get("tag")


def parse_cseq(value: str) -> tuple[int, str]:
    """(number, method). Raises ValueError on bad syntax. Memoised."""
    parsed = _CSEQS.get(value)
    if parsed is None:
        parsed = remember(_CSEQS, value, _parse_cseq(value), MEMO_SIZE)
    return parsed


def _parse_cseq(value: str) -> tuple[int, str]:
    m = _CSEQ.match(value)
    if m is not None:
        return int(m.group(1)), m.group(2)
    cseq = sipmessage_parse(CSeq.parse, value)
    return cseq.sequence, cseq.method


def parse_ruri(uri: str) -> tuple[str, str | None]:
    """(scheme, user) of a sip/sips/tel Request-URI. Raises ValueError on bad syntax.
    Memoised: a dialog's requests share their Request-URI."""
    parsed = _RURIS.get(uri)
    if parsed is None:
        parsed = remember(_RURIS, uri, _parse_ruri(uri), MEMO_SIZE)
    return parsed


def _parse_ruri(uri: str) -> tuple[str, str | None]:
    m = _SIP_URI.fullmatch(uri)
    if m is not None:
        user = m.group(2)
        return m.group(1), unquote(user) if user and "%" in user else user
    parsed = sipmessage_parse(URI.parse, uri)
    return parsed.scheme, parsed.user


def first_uri(value: str) -> str | None:
    """URI text of the first address in a Contact/Route value. Raises ValueError."""
    m = _ADDR.match(value)
    if m is not None:
        return m.group(1)
    addresses = sipmessage_parse(Address.parse_many, _LIST_COMMA.sub(", ", value))
    return str(addresses[0].uri) if addresses else None


def route_set(values: list[str]) -> list[str]:
    """The entries of Record-Route header values, in order, each as ``<uri>`` (RFC 3261
    12.1.1). Each entry is ``<sip:...>`` as proxies send it (Kamailio: ``<sip:h:p;lr>``);
    any other form falls back to sipmessage for all of them. Raises ValueError on bad syntax.
    """
    out: list[str] = []
    for value in values:
        for entry in value.split(","):
            m = _ROUTE.fullmatch(entry)
            if m is None:
                return _route_set(values)
            out.append(m.group(1))
    return out


def _route_set(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        if value.strip() != "*":
            parsed = sipmessage_parse(Address.parse_many, _LIST_COMMA.sub(", ", value))
            out.extend(str(a) for a in parsed)
    return out


_HOST_PORTS: dict[str, tuple[str, str, int | None, dict[str, str]]] = {}


def parse_host_port(uri: str) -> tuple[str, str, int | None, dict[str, str]]:
    """(scheme, host, port, params) of a sip/sips URI. Raises ValueError.

    Memoised: every call of an endpoint goes to the same target and route; the
    ``params`` dict returned is shared, read it only."""
    parsed = _HOST_PORTS.get(uri)
    if parsed is None:
        parsed = remember(_HOST_PORTS, uri, _parse_host_port(uri), MEMO_SIZE)
    return parsed


def _parse_host_port(uri: str) -> tuple[str, str, int | None, dict[str, str]]:
    m = _HOST_PORT.match(uri)
    if m is not None:
        params: dict[str, str] = {}
        for item in m.group(4).split(";")[1:]:
            key, _, val = item.partition("=")
            params[key.lower()] = val
        port = m.group(3)
        return m.group(1), m.group(2), int(port) if port else None, params
    parsed = sipmessage_parse(URI.parse, uri)
    extra = {k.lower(): v or "" for k, v in parsed.parameters.items()}
    return parsed.scheme, parsed.host, parsed.port, extra


def strip_tag(value: str) -> str:
    """A From/To value without its tag, for a dialog's local/remote URI. Raises ValueError."""
    if _ADDR.match(value) is not None:
        return _TAG.sub("", value).strip()
    address = sipmessage_parse(Address.parse, value)
    params = {k: v for k, v in address.parameters.items() if k != "tag"}
    return str(Address(address.uri, address.name, Parameters(**params)))
