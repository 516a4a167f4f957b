"""Media of one endpoint's call: the SDP side of an RtpSession, its start, its verdict.

Kept apart from :mod:`sipswarm.engine.endpoint` (signalling and phases) so
that each reads on its own. :class:`CallMedia` owns the session of one call
leg: :meth:`~CallMedia.open` binds the ports with a
:class:`~sipswarm.engine.switchable.SwitchableCodec` (the codec is only known
after the answer), :meth:`~CallMedia.local` describes it for the SDP,
:meth:`~CallMedia.start` applies the negotiated media (with ``srtp="sdes"`` the
offer/answer carries our ``a=crypto`` keys and the start keys SRTP from both
sides' lines, :mod:`sipswarm.media.sdes`), :meth:`~CallMedia.send_dtmf`
plays RFC 4733 events, :meth:`~CallMedia.stop` closes it and returns a
warning in words when the call's media was poor (no RTP at all, or loss
above :data:`~sipswarm.engine.outcomes.LOSS_WARNING_FRACTION`).

With ``rtp=False`` (``media.rtp: false``, docs/protocol.md "Signalling-only
calls") the leg is signalling only: :meth:`~CallMedia.open_port` binds
nothing and gives :data:`DISCARD_PORT`, :meth:`~CallMedia.local` describes an
``a=inactive`` stream on it (RFC 3264 §5.1: neither side sends; the offer
still lists the codecs, so negotiation and 488 happen as usual),
:meth:`~CallMedia.start` keeps the negotiated media without starting
anything, and :meth:`~CallMedia.metrics` stays None (no send/recv blocks,
rather than zeros that would read as loss). Such a leg's offer is the same SDP
every call but for the ``o=`` session id: :meth:`~CallMedia.offer` builds it
once per local-media shape and fills the id into the remembered bytes.

A receiver's successive calls each open a new session; :meth:`~CallMedia.metrics`
adds the counters of the closed ones, so that the endpoint's ``metrics``
counters stay cumulative since it started (PROTOCOL.md) and never go back.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sipswarm.engine.outcomes import LOSS_WARNING_FRACTION
from sipswarm.engine.rtp_session import RtpSession
from sipswarm.engine.srtp import SrtpContext
from sipswarm.engine.switchable import SwitchableCodec, SwitchableSource
from sipswarm.errors import ConfigError, InvalidState, NegotiationError
from sipswarm.media.codecs import Codec
from sipswarm.media.sdes import ANSWER_SUITES, OFFER_SUITES, negotiated_keys, offer_crypto
from sipswarm.media.sdp import LocalMedia, NegotiatedMedia, SessionDescription, build_offer
from sipswarm.memo import remember

#: ``media.srtp`` values this engine runs (``dtls`` needs a DTLS handshake and ICE).
SRTP_MODES = ("off", "sdes")

#: The port a signalling-only leg puts in its SDP (RFC 863 discard; RFC 8840 uses it the
#: same way for a stream with no usable address yet); RTCP is pointed there too (a=rtcp:9).
DISCARD_PORT = 9

__all__ = ["COUNTER_KEYS", "DISCARD_PORT", "OFFER_CACHE_SIZE", "CallMedia"]

#: Signalling-only offers remembered (per local media shape; cleared when full).
OFFER_CACHE_SIZE = 64
# local media shape -> (the offer as first built, its body up to the o= session id, after it)
_OFFERS: dict[tuple[Any, ...], tuple[SessionDescription, bytes, bytes]] = {}

#: The cumulative counters of a session snapshot (summed over an endpoint's calls);
#: every other key is a gauge of the current session.
COUNTER_KEYS: dict[str, tuple[str, ...]] = {
    "send": ("packets_sent", "bytes_sent", "rtcp_sr_sent"),
    "recv": (
        "packets_received",
        "bytes_received",
        "packets_lost",
        "duplicate_packets",
        "out_of_order_packets",
        "sequence_number_gaps",
        "ssrc_switches",
    ),
    "remote": ("packets_lost",),
}

Opener = Callable[[SwitchableCodec, SwitchableSource], Awaitable[RtpSession]]


def _detached(*args: Any) -> Any:
    """The callbacks of a :meth:`CallMedia.detach`-ed leg."""
    raise InvalidState("this call leg's endpoint is closed: its media cannot open again")


class CallMedia:
    """One call leg's RTP. Next: ``open_port(codec)`` (signalling only) or ``await
    open(codec)``, then ``local(...)``, ``start(media)``, ``stop(answered)``."""

    def __init__(
        self,
        opener: Opener,
        closer: Callable[[RtpSession], None],
        source_for: Callable[[Codec], Any],
        *,
        srtp: str = "off",
        rtp: bool = True,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if srtp not in SRTP_MODES:
            raise ConfigError(f"media.srtp must be one of {', '.join(SRTP_MODES)}, got {srtp!r}")
        self.srtp = srtp
        self.rtp = rtp
        self._random_bytes = random_bytes
        self._crypto: dict[bool, tuple[str, ...]] = {}
        self.srtp_context: SrtpContext | None = None
        self._opener = opener
        self._closer = closer
        self._source_for = source_for
        self.session: RtpSession | None = None
        self.codec: SwitchableCodec | None = None
        self.source: SwitchableSource | None = None
        self.negotiated: NegotiatedMedia | None = None
        self.first_rtp_ts: int | None = None
        self._closed_totals: dict[str, dict[str, Any]] | None = None

    def detach(self) -> None:
        """The owner closed for good: drop the opener and source callbacks.

        They are closures over the owning endpoint, which holds this object:
        dropping them leaves no reference cycle, so reference counting frees
        the endpoint without the cyclic collector. :meth:`open` and
        :meth:`start` then raise InvalidState; :meth:`stop` still closes a
        session that an open in flight returns (the closer is kept).
        """
        self._opener = self._source_for = _detached

    def open_port(self) -> int | None:
        """Signalling only (``rtp`` false): the SDP port, :data:`DISCARD_PORT`, with nothing
        bound, so the caller goes on without awaiting. None: call :meth:`open`."""
        if self.rtp:
            return None
        self.first_rtp_ts = None
        self.negotiated = None
        return DISCARD_PORT

    async def open(self, codec: Codec) -> int:
        """Bind the port pair (ResourceError/OSError when exhausted); the RTP port."""
        port = self.open_port()
        if port is not None:
            return port
        self.first_rtp_ts = None
        self.negotiated = None
        self.codec = SwitchableCodec(codec)
        self.source = SwitchableSource(self._source_for(codec))
        self.session = await self._opener(self.codec, self.source)
        return self.session.local_port

    def local(
        self, address: str, port: int, codecs: Sequence[Codec], ptime_ms: int, *, offer: bool = True
    ) -> LocalMedia:
        """What to put in the offer (``offer``) or answer for our stream.

        With SDES the keys are drawn once per call (first use) and kept until :meth:`stop`:
        the offer carries one line per suite of OFFER_SUITES, an answer's candidates are one
        per suite we accept, of which ``build_answer`` keeps the one matching the offer.
        """
        if not self.rtp:  # RFC 3264 5.1/6.1: inactive, on the discard port
            return self._signalling_only(address, codecs, ptime_ms, offer)
        if self.srtp != "sdes":
            return LocalMedia(address=address, port=port, codecs=codecs, ptime_ms=ptime_ms)
        return LocalMedia(
            address=address,
            port=port,
            codecs=codecs,
            ptime_ms=ptime_ms,
            crypto=self._crypto_lines(offer),
            proto="RTP/SAVP",
        )

    def offer(self, local: LocalMedia, session_id: int) -> tuple[SessionDescription, bytes]:
        """Our initial offer (RFC 3264 §5) of ``local`` and its body for the INVITE.

        A signalling-only leg without SDES keys offers the same SDP on every call
        but for the ``o=`` session id: the offer is built and serialised once per
        shape of ``local``, and each call gets those bytes with its own id. The
        description returned is then the first call's (its ``o=`` id differs):
        it serves the answer's negotiation, which reads the m= lines only; the
        body sent (``call.local_sdp``) is the call's own, and re-offers start from it.
        """
        if self.rtp or local.crypto:  # a real port per call, or keys per call
            sdp = build_offer(local, session_id=session_id)
            return sdp, sdp.serialise()
        key = (local.address, local.port, tuple(local.codecs), local.ptime_ms,
               local.direction, local.telephone_event, local.rtcp_port, local.rtcp_mux,
               local.proto, local.username)  # fmt: skip
        known = _OFFERS.get(key)
        if known is None:
            sdp = build_offer(local, session_id=session_id)
            body = sdp.serialise()
            # RFC 4566 5.2: o=<username> <sess-id> <sess-version> ...; no spaces in a name
            name_end = body.index(b" ", body.index(b"\r\no=") + 4)
            id_end = body.index(b" ", name_end + 1)
            parts = (sdp, body[: name_end + 1], body[id_end:])
            known = remember(_OFFERS, key, parts, OFFER_CACHE_SIZE)
        sdp, head, tail = known
        return sdp, b"%s%d%s" % (head, session_id, tail)

    def _crypto_lines(self, offer: bool) -> tuple[str, ...]:
        """This leg's SDES ``a=crypto`` values for an offer or an answer, drawn once."""
        crypto = self._crypto.get(offer)
        if crypto is None:
            attrs = offer_crypto(OFFER_SUITES if offer else ANSWER_SUITES, self._random_bytes)
            crypto = self._crypto[offer] = tuple(a.serialise() for a in attrs)
        return crypto

    def _signalling_only(
        self, address: str, codecs: Sequence[Codec], ptime_ms: int, offer: bool
    ) -> LocalMedia:
        """An ``a=inactive`` stream on :data:`DISCARD_PORT` (RTCP too), codecs as configured.

        With ``srtp="sdes"`` it stays RTP/SAVP with ``a=crypto`` keys drawn like a real
        leg's (so an SRTP-only peer still negotiates); nothing is ever keyed or sent.
        """
        crypto = self._crypto_lines(offer) if self.srtp == "sdes" else ()
        return LocalMedia(
            address=address,
            port=DISCARD_PORT,
            codecs=codecs,
            ptime_ms=ptime_ms,
            direction="inactive",
            rtcp_port=DISCARD_PORT,
            crypto=crypto,
            proto="RTP/SAVP" if crypto else "RTP/AVP",
        )

    @property
    def started(self) -> bool:
        return self.session is not None and self.session.state.value == "started"

    def start(self, media: NegotiatedMedia) -> None:
        """Send and receive as negotiated; NegotiationError if the codec cannot be swapped.
        Signalling only: the agreement is kept (``negotiated``), nothing starts."""
        if not self.rtp:
            self.negotiated = media
            return
        session, codec, source = self.session, self.codec, self.source
        if session is None or codec is None or source is None:
            return
        if media.codec.rtp_clock_rate != codec.rtp_clock_rate:
            raise NegotiationError(
                f"answer chose {media.codec.rtpmap} but media was prepared at "
                f"{codec.rtp_clock_rate} Hz for {codec.name}; list codecs of one clock rate"
            )
        if media.codec.name != codec.name:
            codec.switch(media.codec)
            source.switch(self._source_for(media.codec))
        self.negotiated = media
        srtp = self._srtp_for(media)
        session.start(
            media.remote_rtp,
            media.remote_rtcp,
            media.payload_type,
            rtcp_mux=media.rtcp_mux,
            send=media.sending,
            dtmf_payload_type=media.telephone_event_pt,
            srtp=srtp,
        )

    def _srtp_for(self, media: NegotiatedMedia) -> SrtpContext | None:
        """The SRTP context keyed by both sides' a=crypto (NegotiationError if they do not pair)."""
        if self.srtp != "sdes":
            return None
        keys = negotiated_keys(media.local_crypto, media.remote_crypto)
        ctx = self.srtp_context
        self.srtp_context = SrtpContext(keys) if ctx is None else ctx.rekeyed(keys)
        return self.srtp_context

    def metrics(self) -> dict[str, dict[str, Any]] | None:
        """``send``/``recv``/``remote`` for the ``metrics`` item: the running session's
        figures plus the counters of earlier calls; None before any media started."""
        current = self.session.snapshot() if self.session is not None and self.started else None
        if current is None and self._closed_totals is None:
            return None
        return self._with_totals(current)

    def _with_totals(self, current: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
        """``current`` (gauges null when None) with the closed sessions' counters added."""
        before = self._closed_totals or {}
        out: dict[str, dict[str, Any]] = {}
        for part, keys in COUNTER_KEYS.items():
            fields = dict((current or {}).get(part) or before.get(part) or {})
            if current is None:
                fields = {k: (v if k in keys else None) for k, v in fields.items()}
            else:
                for k in keys:
                    old, now = before.get(part, {}).get(k), fields.get(k)
                    fields[k] = now if old is None else old + (now or 0)
            out[part] = fields
        return out

    def send_dtmf(self, digits: str) -> str | None:
        """Play ``digits`` (RFC 4733); a warning in words when it cannot be done."""
        if not self.started or self.session is None:
            return f"DTMF {digits!r} not sent: media is not running"
        if self.negotiated is None or self.negotiated.telephone_event_pt is None:
            return f"DTMF {digits!r} not sent: the peer did not accept telephone-event"
        self.session.send_dtmf(digits)
        return None

    def stop(self, answered: bool) -> str | None:
        """Close the session (RTCP BYE, ports back); a warning when media was poor."""
        session = self.session
        if session is None:
            self._crypto.clear()  # signalling only: a next call draws new keys too
            return None
        warning = None
        if answered and self.started:
            recv = session.snapshot()["recv"]
            lost, got = recv.get("packets_lost") or 0, recv.get("packets_received") or 0
            if session.first_rtp_ts is None:
                warning = "call answered but no RTP was received"
            elif lost > LOSS_WARNING_FRACTION * (lost + got):
                warning = (
                    f"RTP loss {lost} of {lost + got} packets, above {LOSS_WARNING_FRACTION:.0%}"
                )
        self.first_rtp_ts = session.first_rtp_ts
        if self.started or self._closed_totals is not None:
            self._closed_totals = self._with_totals(session.snapshot() if self.started else None)
        self._closer(session)
        self.session = None
        self._crypto.clear()  # a next call gets new keys
        self.srtp_context = None
        return warning
