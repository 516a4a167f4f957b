"""Bounded, validating parse of one SIP message, and response building.

Theory of operation
-------------------
:func:`parse_message` turns the bytes of one datagram (or one message cut out
of a stream by :mod:`sipswarm.sip.framing`) into a :class:`SipMessage`, or
into a :class:`ParseFailure` that says why and whether a ``400`` can still be
answered. It never raises on network input.

The header block is split here (folding undone, compact forms expanded, names
lower-cased) into a dict of raw values, so that any header is found in O(1)
and a ``400`` can copy ``Via``/``From``/``To``/``Call-ID``/``CSeq`` verbatim
even when one of them does not parse. The grammar-heavy values (Via, From/To
addresses, CSeq, the Request-URI) are parsed with ``sipmessage``'s typed
parsers; everything else stays a string until someone asks for it.

Checks (RFC 3261 §8.1.1, §18.3, §20.22 and the RFC 4475 torture cases):
size bound, start line, version (``505``), mandatory headers, CSeq number
below 2**31 and method equal to the request method, Max-Forwards 0-255,
Content-Length a non-negative integer that the body can satisfy (a shorter
body is dropped, RFC 3261 §18.3; a longer one is truncated to it).

Next: the stack feeds :class:`SipMessage` to transactions and dialogs, and
answers requests with :func:`build_response`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sipmessage import Address

from sipswarm.sip.fastparse import (
    TopVia,
    parse_cseq,
    parse_ruri,
    parse_tag,
    parse_top_via,
    sipmessage_parse,
)
from sipswarm.sip.framing import MAX_MESSAGE_SIZE

__all__ = [
    "MAX_HEADERS",
    "MAX_MESSAGE_SIZE",
    "ParseFailure",
    "SipMessage",
    "build_response",
    "parse_message",
    "stamp_via",
]

MAX_HEADERS = 256
"""More header lines than this in one message is an attack or a bug: dropped."""

MAX_CSEQ = 2**31 - 1  # RFC 3261 8.1.1.5: "MUST be expressible as a 32-bit unsigned integer
# ... less than 2**31"

# RFC 3261 7.3.3 compact forms, plus the ones from later RFCs that peers send.
COMPACT_FORMS = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "u": "allow-events",
    "x": "session-expires",
}

MANDATORY = ("via", "from", "to", "call-id", "cseq")

_FOLD = re.compile(rb"\r\n[ \t]+")  # RFC 3261 7.3.1: folding is equivalent to one SP
_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
MAX_CACHED_NAMES = 512  # distinct raw header names remembered (bounded against floods)
_NAMES: dict[str, str] = {}  # raw header name -> lower-case full name, valid tokens only
_RPORT_EMPTY = re.compile(r";\s*rport(?=\s*(?:;|$))")
# sipmessage's list parsers reject LWS before a separating comma (legal per RFC 3261
# 7.3.1, RFC 4475 3.1.1.1); normalise it first.
_LIST_COMMA = re.compile(r"\s*,\s*")


@dataclass(slots=True)
class ParseFailure:
    """Why a message was refused.

    ``answerable`` is true when the message is a request whose Via, From, To,
    Call-ID and CSeq exist, so a ``status`` response (400 or 505) can reach the
    sender; otherwise the message is only dropped and counted.
    """

    reason: str
    status: int = 400
    answerable: bool = False
    is_request: bool = False
    method: str = ""
    headers: dict[str, list[str]] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class SipMessage:
    """One parsed SIP request or response.

    ``method`` is the request method, or for a response the CSeq method (so
    that a transaction key reads the same either way). ``headers`` maps the
    lower-case full header name to its raw values, in order.
    """

    is_request: bool
    method: str
    uri: str
    status: int
    reason: str
    headers: dict[str, list[str]]
    body: bytes
    top_via: TopVia
    call_id: str
    cseq: int
    from_tag: str | None
    to_tag: str | None
    ruri_scheme: str = ""
    ruri_user: str | None = None

    @property
    def branch(self) -> str:
        """Top Via branch, '' when absent."""
        return self.top_via.branch

    def from_address(self) -> Address:
        """From, fully parsed. Raises ValueError on bad syntax."""
        return sipmessage_parse(Address.parse, self.headers["from"][0])

    def to_address(self) -> Address:
        """To, fully parsed. Raises ValueError on bad syntax."""
        return sipmessage_parse(Address.parse, self.headers["to"][0])

    def header(self, name: str) -> str | None:
        """First raw value of header ``name`` (lower-case full name), or None."""
        values = self.headers.get(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """All raw values of header ``name`` (lower-case full name)."""
        return self.headers.get(name, [])

    def addresses(self, name: str) -> list[Address]:
        """Parse a comma-separated address header (Contact, Record-Route, Route).

        Raises ValueError on bad syntax: callers that act on peer input catch it.
        """
        result: list[Address] = []
        for value in self.headers.get(name, ()):
            if value.strip() == "*":
                continue
            result.extend(sipmessage_parse(Address.parse_many, _LIST_COMMA.sub(", ", value)))
        return result


def parse_message(data: bytes) -> SipMessage | ParseFailure:
    """Parse ``data`` (one whole message); never raises."""
    if len(data) > MAX_MESSAGE_SIZE:
        return ParseFailure(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    if data[:1] in b"\r\n":
        data = data.lstrip(b"\r\n")  # RFC 3261 7.5: CRLFs before the start line are ignored
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return ParseFailure("no empty line after the header block")
    head = data[:end]
    body = data[end + 4 :]
    if b"\r\n " in head or b"\r\n\t" in head:
        head = _FOLD.sub(b" ", head)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ParseFailure("header block is not UTF-8")
    lines = text.split("\r\n")
    if len(lines) > MAX_HEADERS:
        return ParseFailure(f"more than {MAX_HEADERS} header lines")
    start = lines[0]
    headers = None if text.count("\n") != len(lines) - 1 else _split_headers(lines)
    if headers is None:
        return ParseFailure("header line without a valid name and colon")
    try:
        return _parse_typed(start, headers, body)
    except _Reject as exc:
        return _failure(start, headers, exc.reason, exc.status)
    except (ValueError, KeyError, IndexError) as exc:
        return _failure(start, headers, f"unparseable message ({exc})", 400)


class _Reject(Exception):
    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _split_headers(lines: list[str]) -> dict[str, list[str]] | None:
    # str.partition per line and a cache of header names already validated: a few
    # hundred ns per header, against several us for a regex over the whole block.
    # (A memo of whole header lines was tried: fewer instructions, no less time.)
    headers: dict[str, list[str]] = {}
    names = _NAMES
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        key = names.get(name) if colon else None
        if key is None:
            key = _canonical_name(name) if colon else None
            if key is None:
                return None
        if key in headers:
            headers[key].append(value.strip(" \t"))
        else:
            headers[key] = [value.strip(" \t")]
    return headers


def _canonical_name(name: str) -> str | None:
    """Lower-case full header name of a raw name (RFC 3261 7.3.1: token, then optional
    LWS before the colon), or None if it is not a token. Remembered in ``_NAMES``."""
    stripped = name.rstrip(" \t")
    if not _TOKEN.match(stripped):
        return None
    key = stripped.lower()
    if len(key) == 1:
        key = COMPACT_FORMS.get(key, key)
    if len(_NAMES) < MAX_CACHED_NAMES:
        _NAMES[name] = key
    return key


def _failure(start: str, headers: dict[str, list[str]], reason: str, status: int) -> ParseFailure:
    parts = start.split(" ", 2)
    is_request = len(parts) == 3 and not start.startswith("SIP/")
    answerable = is_request and all(headers.get(h) for h in MANDATORY)
    method = parts[0] if is_request else ""
    return ParseFailure(reason, status, answerable and method != "ACK", is_request, method, headers)


def _parse_typed(start: str, headers: dict[str, list[str]], body: bytes) -> SipMessage:
    parts = start.split(" ", 2)
    if len(parts) != 3:
        raise _Reject("start line is neither a request line nor a status line")
    is_request = not parts[0].startswith("SIP/")
    via = headers.get("via")
    from_ = headers.get("from")
    to = headers.get("to")
    call_id = headers.get("call-id")
    cseq = headers.get("cseq")
    if not (via and from_ and to and call_id and cseq):
        missing = next(name for name in MANDATORY if not headers.get(name))
        raise _Reject(f"mandatory header {missing} missing")
    number, method = parse_cseq(cseq[0])
    if number > MAX_CSEQ:
        raise _Reject(f"CSeq number {number} is not below 2**31")
    if len(cseq) > 1 or len(call_id) > 1:
        raise _Reject("more than one CSeq or Call-ID header")
    lengths = headers.get("content-length")
    msg = SipMessage(
        is_request,
        method,
        "",
        0,
        "",
        headers,
        _check_body(lengths, body) if lengths else body,
        parse_top_via(via),
        call_id[0],
        number,
        parse_tag(from_[0]),
        parse_tag(to[0]),
    )
    if is_request:
        _fill_request(msg, parts)
    else:
        _fill_response(msg, parts)
    return msg


def _check_body(values: list[str], body: bytes) -> bytes:
    # RFC 3261 18.3: Content-Length is optional on UDP (the datagram ends the body),
    # so this only runs when it is present.
    text = values[0]
    if len(values) > 1 and values.count(text) != len(values):
        raise _Reject("conflicting Content-Length headers")
    if not text.isdigit():
        raise _Reject(f"Content-Length {text!r} is not a non-negative integer")
    length = int(text)
    if length > len(body):
        # RFC 3261 18.3: a datagram shorter than Content-Length is discarded.
        raise _Reject(f"Content-Length {length} exceeds the {len(body)} body bytes", status=0)
    return body if length == len(body) else body[:length]


_METHODS: set[str] = {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "UPDATE", "INFO"}
"""Request methods already known to be tokens (skips the regex)."""


def _fill_request(msg: SipMessage, parts: list[str]) -> None:
    method, uri, version = parts
    if method not in _METHODS and not _TOKEN.match(method):
        raise _Reject(f"request method {method!r} is not a token")
    if version != "SIP/2.0":
        raise _Reject(f"SIP version {version!r} not supported", status=505)
    if method != msg.method:
        raise _Reject(f"CSeq method {msg.method} differs from request method {method}")
    max_forwards = msg.header("max-forwards")
    if max_forwards is not None and not (max_forwards.isdigit() and int(max_forwards) <= 255):
        raise _Reject(f"Max-Forwards {max_forwards!r} is not 0-255")
    msg.method = method
    msg.uri = uri
    if uri.startswith(("sip:", "sips:", "tel:")):
        msg.ruri_scheme, msg.ruri_user = parse_ruri(uri)
    elif ":" not in uri:
        raise _Reject(f"Request-URI {uri!r} has no scheme")


def _fill_response(msg: SipMessage, parts: list[str]) -> None:
    version, code, reason = parts
    if version != "SIP/2.0":
        raise _Reject(f"SIP version {version!r} not supported", status=0)
    if not (code.isdigit() and len(code) == 3 and 100 <= int(code) <= 699):
        raise _Reject(f"status code {code!r} is not 100-699", status=0)
    msg.status = int(code)
    msg.reason = reason


def stamp_via(top: str, source_ip: str, source_port: int) -> str:
    """Add ``received`` (RFC 3261 18.2.1) and fill ``rport`` (RFC 3581 §4) on a raw top Via."""
    stamped = _RPORT_EMPTY.sub(f";rport={source_port}", top, count=1)
    # RFC 3581 4: with rport, received is added always; RFC 3261 18.2.1: else when sent-by differs
    if stamped != top or not _sent_by_is(top, source_ip):
        stamped += f";received={source_ip}"
    return stamped


def _sent_by_is(top: str, ip: str) -> bool:
    _, _, rest = top.partition(" ")
    host = rest.split(";", 1)[0].strip()
    if host.startswith("["):
        return host[1 : host.find("]")] == ip
    return host.split(":", 1)[0] == ip


def split_top_via(values: list[str]) -> tuple[str, list[str]]:
    """Return (top Via text, the remaining Via header values) from raw Via values."""
    first = values[0]
    top, comma, rest = first.partition(",")
    others = [rest.strip(), *values[1:]] if comma else values[1:]
    return top.strip(), others


def build_response(
    req: SipMessage,
    status: int,
    reason: str,
    source: tuple[str, int],
    *,
    to_tag: str | None = None,
    extra: str = "",
    body: bytes = b"",
    user_agent: str = "",
) -> bytes:
    """Render a response to ``req`` (RFC 3261 8.2.6.2): Via (top stamped with the
    source address), From, Call-ID and CSeq copied, To copied with ``to_tag``
    added when it has none. ``extra`` is preformatted header lines, each ending
    in CRLF.
    """
    return build_response_from_headers(
        req.headers,
        status,
        reason,
        source,
        to_tag=to_tag,
        extra=extra,
        body=body,
        user_agent=user_agent,
    )


def build_response_from_headers(
    headers: dict[str, list[str]],
    status: int,
    reason: str,
    source: tuple[str, int],
    *,
    to_tag: str | None = None,
    extra: str = "",
    body: bytes = b"",
    user_agent: str = "",
) -> bytes:
    """:func:`build_response` from raw header values; used for 400s to messages
    that did not parse, so only the raw values are known."""
    top, others = split_top_via(headers["via"])
    lines = [f"SIP/2.0 {status} {reason}\r\nVia: {stamp_via(top, source[0], source[1])}\r\n"]
    lines.extend(f"Via: {v}\r\n" for v in others)
    to = headers["to"][0]
    if to_tag and ";tag=" not in to.replace(" ", "").lower():
        to = f"{to};tag={to_tag}"
    lines.append(
        f"From: {headers['from'][0]}\r\nTo: {to}\r\nCall-ID: {headers['call-id'][0]}\r\n"
        f"CSeq: {headers['cseq'][0]}\r\n"
    )
    if user_agent:
        lines.append(f"Server: {user_agent}\r\n")
    lines.append(extra)
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    return "".join(lines).encode() + body
