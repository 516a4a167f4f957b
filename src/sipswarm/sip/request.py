"""Outgoing requests as plain data, rendered with string templates.

A :class:`RequestSpec` holds everything of a request except its Via branch and
credentials, so the same request can be rendered again for a digest retry
(new branch, next CSeq) or turned into the ACK of a non-2xx final response
(RFC 3261 17.1.1.3). Rendering is one f-string join: no object graph per
message, which matters at thousands of requests per second.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache

from sipswarm.errors import ConfigError
from sipswarm.sip.config import StackConfig
from sipswarm.sip.fastparse import parse_host_port

__all__ = ["ALLOW", "RequestSpec", "is_ip_literal", "uri_destination"]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"
ACCEPT = "application/sdp"

Address = tuple[str, int]


@dataclass(slots=True)
class RequestSpec:
    """One request minus branch and credentials. ``extra`` is preformatted
    header lines, each ending in CRLF."""

    method: str
    ruri: str
    from_hdr: str
    to_hdr: str
    call_id: str
    cseq: int
    destination: Address
    contact: str | None = None
    routes: list[str] = field(default_factory=list)
    extra: str = ""
    body: bytes = b""
    content_type: str = "application/sdp"

    def render(self, config: StackConfig, branch: str, auth: str = "") -> bytes:
        """Bytes of this request with Via ``branch`` and ``auth`` (a header line or '')."""
        via, max_forwards = config.request_lines  # per-stack constants, built once
        routes = "".join([f"Route: {r}\r\n" for r in self.routes]) if self.routes else ""
        contact = f"Contact: {self.contact}\r\n" if self.contact else ""
        body = self.body
        ctype = f"Content-Type: {self.content_type}\r\n" if body else ""
        text = (
            f"{self.method} {self.ruri} SIP/2.0\r\nVia: {via}{branch}{max_forwards}{routes}"
            f"From: {self.from_hdr}\r\nTo: {self.to_hdr}\r\nCall-ID: {self.call_id}\r\n"
            f"CSeq: {self.cseq} {self.method}\r\n{contact}{auth}{self.extra}"
            f"User-Agent: {config.user_agent}\r\n{ctype}Content-Length: {len(body)}\r\n\r\n"
        )
        return text.encode() + body if body else text.encode()

    def render_ack(self, config: StackConfig, branch: str, to_hdr: str) -> bytes:
        """ACK for a non-2xx final response (RFC 3261 17.1.1.3): same Request-URI,
        Call-ID, From, Route and branch; To from the response; CSeq method ACK."""
        ack = RequestSpec(
            "ACK",
            self.ruri,
            self.from_hdr,
            to_hdr,
            self.call_id,
            self.cseq,
            self.destination,
            routes=self.routes,
        )
        return ack.render(config, branch)

    def next(self) -> RequestSpec:
        """The same request with the next CSeq (RFC 3261 22.2 / 10.2.4)."""
        # Positional, not dataclasses.replace (a fields() walk): one per digest retry.
        return RequestSpec(
            self.method,
            self.ruri,
            self.from_hdr,
            self.to_hdr,
            self.call_id,
            self.cseq + 1,
            self.destination,
            self.contact,
            self.routes,
            self.extra,
            self.body,
            self.content_type,
        )


@lru_cache(maxsize=4096)
def is_ip_literal(host: str) -> bool:
    """True for an IPv4 address or a bracketed IPv6 reference (cached: hosts repeat)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def uri_destination(uri: str, transport: str, fallback: Address | None = None) -> Address:
    """Where a request to ``uri`` goes when it has an IP literal host (port default
    5060, 5061 for TLS or sips). A host name needs DNS, which the sans-I/O core
    cannot do: then ``fallback`` is used, or ConfigError tells the caller to
    resolve it and pass ``destination``."""
    text = uri.strip()
    if text.startswith("<"):
        text = text[1 : text.find(">")]
    try:
        scheme, host, port, params = parse_host_port(text)
    except ValueError as exc:
        if fallback is not None:
            return fallback
        raise ConfigError(f"URI {uri!r} is not a valid SIP URI") from exc
    host = params.get("maddr") or host
    if not is_ip_literal(host):
        if fallback is not None:
            return fallback
        raise ConfigError(
            f"host {host!r} of {uri!r} is not an IP address: resolve it (RFC 3263) and "
            "pass destination=(ip, port)"
        )
    secure = scheme == "sips" or transport == "tls"
    return host.strip("[]"), port or (5061 if secure else 5060)
