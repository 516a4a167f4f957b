"""SDP syntax (RFC 4566): the data model, parser and serialiser. Offer/answer is in ``sdp.py``.

:func:`parse_sdp` turns a body into a :class:`SessionDescription` and keeps *everything*:
lines it does not interpret (``i=``, ``b=``, ``k=``...), unknown attributes, ``a=crypto``
(SDES-SRTP) and ``a=fingerprint`` are carried through ``serialise()`` unchanged, in RFC 4566
§5 order. Bad input raises :class:`SdpError` (the UAS answers 400 or 488), never anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sipswarm.errors import ProtocolError

__all__ = [
    "DIRECTIONS",
    "MAX_SDP_SIZE",
    "Connection",
    "MediaDescription",
    "Origin",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "parse_sdp",
]

MAX_SDP_SIZE = 32 * 1024
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
# RFC 4566 §5: order of the session-level and media-level lines that we keep verbatim.
_SESSION_RANK = {"i": 1, "u": 2, "e": 3, "p": 4, "b": 6, "t": 7, "r": 7, "z": 8, "k": 9}
_MEDIA_RANK = {"i": 1, "b": 3, "k": 4}


class SdpError(ProtocolError):
    """A session description is malformed; the message names the line. Answer 400 or 488."""


@dataclass(frozen=True, slots=True)
class Origin:
    """The ``o=`` line (RFC 4566 §5.2); ``version`` increments with every change (RFC 3264 §8)."""

    username: str
    session_id: int
    version: int
    nettype: str
    addrtype: str
    address: str

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True, slots=True)
class Connection:
    """A ``c=`` line (RFC 4566 §5.7); ``address`` without any multicast ``/ttl`` suffix."""

    nettype: str
    addrtype: str
    address: str
    suffix: str = ""

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}{self.suffix}"


@dataclass(frozen=True, slots=True)
class RtpMap:
    """One ``a=rtpmap`` (RFC 4566 §6): encoding name, clock rate, channel count."""

    name: str
    clock_rate: int
    channels: int = 1


Attribute = tuple[str, str | None]


def _find(attributes: Sequence[Attribute], name: str) -> list[str | None]:
    return [v for n, v in attributes if n == name]


@dataclass
class MediaDescription:
    """An ``m=`` section: the line's fields, its ``c=``, attributes in order, other lines."""

    media: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    connection: Connection | None = None
    attributes: list[Attribute] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)  # i= b= k= kept verbatim

    def attribute(self, name: str) -> str | None:
        """The value of the first ``a=<name>``, ``""`` for a flag, ``None`` when absent."""
        found = _find(self.attributes, name)
        return (found[0] or "") if found else None

    def attribute_values(self, name: str) -> list[str]:
        """Every value of ``a=<name>`` in order (``a=crypto``, ``a=fmtp``...)."""
        return [v or "" for v in _find(self.attributes, name)]

    def rtpmaps(self) -> dict[int, RtpMap]:
        """``a=rtpmap`` by payload type; malformed lines are skipped."""
        out: dict[int, RtpMap] = {}
        for value in self.attribute_values("rtpmap"):
            pt, _, spec = value.partition(" ")
            parts = spec.strip().split("/")
            try:
                channels = int(parts[2]) if len(parts) > 2 else 1
                out[int(pt)] = RtpMap(parts[0], int(parts[1]), channels)
            except (ValueError, IndexError):
                continue
        return out

    def fmtps(self) -> dict[int, str]:
        """``a=fmtp`` parameters by payload type."""
        out: dict[int, str] = {}
        for value in self.attribute_values("fmtp"):
            pt, _, params = value.partition(" ")
            if pt.isdigit():
                out[int(pt)] = params.strip()
        return out

    def _int_attribute(self, name: str) -> int | None:
        value = self.attribute(name)
        try:
            return round(float(value)) if value else None
        except ValueError:
            return None

    @property
    def ptime(self) -> int | None:
        """``a=ptime`` in ms (RFC 4566 §6), ``None`` when absent or malformed."""
        return self._int_attribute("ptime")

    @property
    def maxptime(self) -> int | None:
        """``a=maxptime`` in ms."""
        return self._int_attribute("maxptime")

    @property
    def rtcp_mux(self) -> bool:
        """``a=rtcp-mux`` present (RFC 5761 §5.1.1)."""
        return self.attribute("rtcp-mux") is not None

    def rtcp_address(self) -> tuple[int, str | None] | None:
        """``a=rtcp:<port> [IN IP4 <addr>]`` (RFC 3605), ``None`` when absent or malformed."""
        value = self.attribute("rtcp")
        if not value:
            return None
        parts = value.split()
        if not parts[0].isdigit() or not 0 < int(parts[0]) < 65536:
            return None
        return int(parts[0]), (parts[3] if len(parts) >= 4 else None)

    def serialise_lines(self) -> list[str]:
        """The section's lines (no line ends), in RFC 4566 §5 order."""
        ports = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        out = [f"m={self.media} {ports} {self.proto} {' '.join(self.formats)}".rstrip()]
        ranked = sorted(self.lines, key=lambda kv: _MEDIA_RANK.get(kv[0], 9))
        out += [f"{k}={v}" for k, v in ranked if _MEDIA_RANK.get(k, 9) < 2]
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out += [f"{k}={v}" for k, v in ranked if _MEDIA_RANK.get(k, 9) >= 2]
        out += [f"a={n}" if v is None else f"a={n}:{v}" for n, v in self.attributes]
        return out


@dataclass
class SessionDescription:
    """A whole SDP body. ``serialise()`` gives bytes for a SIP message body."""

    origin: Origin
    session_name: str = "-"
    connection: Connection | None = None
    attributes: list[Attribute] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)  # i u e p b t r z k, verbatim

    def attribute(self, name: str) -> str | None:
        """Session-level ``a=<name>``: value, ``""`` for a flag, ``None`` when absent."""
        found = _find(self.attributes, name)
        return (found[0] or "") if found else None

    def connection_for(self, media: MediaDescription) -> Connection | None:
        """RFC 4566 §5.7: the media-level ``c=`` overrides the session-level one."""
        return media.connection or self.connection

    def direction_of(self, media: MediaDescription) -> str:
        """RFC 3264 §5.1: media-level direction, else session-level, else sendrecv."""
        for attrs in (media.attributes, self.attributes):
            found = [n for n, _ in attrs if n in DIRECTIONS]
            if found:
                return found[-1]
        return "sendrecv"

    def serialise(self) -> bytes:
        """The body with CRLF line ends (RFC 4566 §5), lines in the RFC's order."""
        ranked = sorted(self.lines, key=lambda kv: _SESSION_RANK.get(kv[0], 9))
        if not any(k == "t" for k, _ in ranked):
            ranked.append(("t", "0 0"))
            ranked.sort(key=lambda kv: _SESSION_RANK.get(kv[0], 9))
        out = ["v=0", f"o={self.origin}", f"s={self.session_name or '-'}"]
        out += [f"{k}={v}" for k, v in ranked if _SESSION_RANK.get(k, 9) < 5]
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out += [f"{k}={v}" for k, v in ranked if _SESSION_RANK.get(k, 9) >= 5]
        out += [f"a={n}" if v is None else f"a={n}:{v}" for n, v in self.attributes]
        for m in self.media:
            out += m.serialise_lines()
        return ("\r\n".join(out) + "\r\n").encode("utf-8")


# -- parsing --------------------------------------------------------------------------------


def _parse_origin(value: str) -> Origin:
    parts = value.split()
    if len(parts) != 6:
        raise SdpError(f"SDP o= needs 6 fields, got {value!r}")
    try:
        return Origin(parts[0], int(parts[1]), int(parts[2]), *parts[3:])
    except ValueError:
        raise SdpError(f"SDP o= session id and version must be numbers, got {value!r}") from None


def _parse_connection(value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3:
        raise SdpError(f"SDP c= needs 'IN IP4 <address>', got {value!r}")
    address, slash, rest = parts[2].partition("/")
    return Connection(parts[0], parts[1], address, slash + rest)


def _parse_media(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"SDP m= needs '<media> <port> <proto> <formats>', got {value!r}")
    port_text, _, count_text = parts[1].partition("/")
    try:
        port = int(port_text)
        count = int(count_text) if count_text else None
    except ValueError:
        raise SdpError(f"SDP m= port must be a number, got {parts[1]!r}") from None
    if not 0 <= port <= 65535:
        raise SdpError(f"SDP m= port must be 0-65535, got {port}")
    return MediaDescription(parts[0], port, parts[2], parts[3:], port_count=count)


def _parse_attribute(value: str) -> Attribute:
    name, colon, rest = value.partition(":")
    return (name.strip(), rest if colon else None)


def _lines(data: bytes | str) -> list[tuple[str, str]]:
    if len(data) > MAX_SDP_SIZE:
        raise SdpError(f"SDP body of {len(data)} bytes exceeds {MAX_SDP_SIZE}")
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    out = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise SdpError(f"SDP line is not '<type>=<value>': {line[:60]!r}")
        out.append((line[0], line[2:]))
    return out


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse an SDP body (CRLF or LF) or raise :class:`SdpError` naming the bad line.

    Lenient where real UAs are sloppy (missing ``s=``/``t=``, trailing spaces) and strict
    where the meaning would be lost (no ``v=0``, no ``o=``, bad ``m=``/``c=``).
    """
    lines = _lines(data)
    if not lines or lines[0] != ("v", "0"):
        raise SdpError("SDP must start with v=0")
    origin: Origin | None = None
    session = SessionDescription(origin=Origin("-", 0, 0, "IN", "IP4", "0.0.0.0"))
    current: MediaDescription | None = None
    for kind, value in lines[1:]:
        if kind == "m":
            current = _parse_media(value)
            session.media.append(current)
        elif kind == "a":
            (current.attributes if current else session.attributes).append(_parse_attribute(value))
        elif kind == "c":
            conn = _parse_connection(value)
            if current:
                current.connection = conn
            else:
                session.connection = conn
        elif current is not None:
            current.lines.append((kind, value))
        elif kind == "o":
            origin = _parse_origin(value)
        elif kind == "s":
            session.session_name = value
        elif kind != "v":
            session.lines.append((kind, value))
    if origin is None:
        raise SdpError("SDP has no o= line")
    session.origin = origin
    return session
