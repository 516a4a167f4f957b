"""Dialog state, RFC 3261 §12.

A :class:`Dialog` is created from the INVITE/2xx pair (UAC: 12.1.2, UAS:
12.1.1) and builds the requests sent inside it (12.2.1.1): ``To`` = remote
URI + remote tag, ``From`` = local URI + local tag, the next local CSeq, the
Request-URI from the remote target and ``Route`` from the route set (loose
routing; a strict-routing first hop is handled by 12.2.1.1's rewrite).
Incoming in-dialog requests are checked against the remote CSeq (12.2.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sipmessage import Address

from sipswarm.sip.fastparse import first_uri, route_set, sipmessage_parse
from sipswarm.sip.message import SipMessage
from sipswarm.sip.request import RequestSpec, uri_destination

__all__ = ["Dialog", "remote_target_from", "route_set_from"]

Addr = tuple[str, int]


def route_set_from(msg: SipMessage, reverse: bool) -> list[str]:
    """Route set from Record-Route (RFC 3261 12.1.1 as is for the UAS, 12.1.2
    reversed for the UAC). Raises ValueError on bad syntax."""
    routes = route_set(msg.headers.get("record-route", []))
    if reverse:
        routes.reverse()
    return routes


def remote_target_from(msg: SipMessage) -> str | None:
    """URI of the first Contact, or None. Raises ValueError on bad syntax."""
    value = msg.header("contact")
    return first_uri(value) if value and value.strip() != "*" else None


@dataclass(slots=True, eq=False)
class Dialog:
    """The state both ends of a call share (RFC 3261 12)."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # From (UAC) / To (UAS) value without tag
    remote_uri: str
    remote_target: str
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 0
    remote_cseq: int | None = None
    fallback: Addr | None = None  # where the dialog's first request came from / went to
    transport: str = "udp"

    def request(
        self,
        method: str,
        *,
        contact: str | None = None,
        body: bytes = b"",
        extra: str = "",
        cseq: int | None = None,
    ) -> RequestSpec:
        """Spec of an in-dialog request. ``cseq`` is given for ACK (the INVITE's);
        otherwise the local CSeq is incremented (RFC 3261 12.2.1.1)."""
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        ruri = self.remote_target
        routes = self.route_set
        if routes and ";lr" not in routes[0]:
            # RFC 3261 12.2.1.1: strict router -> it becomes the Request-URI, the
            # remote target goes last in Route.
            first = sipmessage_parse(Address.parse, routes[0])
            ruri = str(first.uri)
            routes = [*routes[1:], f"<{self.remote_target}>"]
        first_hop = routes[0] if routes and ruri == self.remote_target else ruri
        destination = uri_destination(first_hop, self.transport, self.fallback)
        return RequestSpec(
            method,
            ruri,
            f"{self.local_uri};tag={self.local_tag}",
            f"{self.remote_uri};tag={self.remote_tag}",
            self.call_id,
            cseq,
            destination,
            contact=contact,
            routes=list(routes),
            extra=extra,
            body=body,
        )

    def accept_remote_cseq(self, cseq: int, method: str) -> bool:
        """RFC 3261 12.2.2: a lower CSeq than the last one is out of order (answer 500).
        ACK and CANCEL carry the CSeq of the request they refer to."""
        if method in ("ACK", "CANCEL"):
            return True
        if self.remote_cseq is not None and cseq < self.remote_cseq:
            return False
        self.remote_cseq = cseq
        return True
