"""SDP offer/answer (RFC 3264) for one audio stream, on top of the RFC 4566 syntax.

Theory of operation
-------------------
The syntax lives in :mod:`sipswarm.media.sdp_syntax` (re-exported here); this module decides
what to offer, what to answer and what was agreed::

    caller:  offer = build_offer(local, session_id=n)             -> INVITE body (serialise())
             media = apply_answer(offer, parse_sdp(body_of_2xx))   -> NegotiatedMedia
    callee:  offer = parse_sdp(invite_body)
             answer = build_answer(offer, local, session_id=m)     -> 2xx body (or 488)
             media = answered_media(offer, answer)
    re-INVITE (hold/resume): offer = reoffer(previous_offer, local)   # same id, version + 1

Per-call shortcuts for call-rate load, same bytes and results as the functions above:
``apply_answer_body(offer, offer_body, answer_body)`` and ``answer_body(offer_body, local,
session_id)`` remember their outcome by the SDP bodies with the ``o=`` line cut out (the
only line that changes from one call to the next when a peer answers alike); SDES bodies
(``a=crypto``, new keys per call) always take the full path.

Rules applied: the answer has one m= line per offered one, in order, rejected ones with port 0
(RFC 3264 §6); the first acceptable audio stream is taken, with the offerer's payload type
numbers and preference order (§6.1); directions are mirrored (§6.1) and intersected with
local policy; ``c=0.0.0.0`` is the RFC 2543 hold and stops our sending; rtcp-mux only when both
sides say so (RFC 5761 §5.1.1); RTCP goes to ``a=rtcp`` (RFC 3605), else port + 1.

A negotiation that finds nothing raises :class:`~sipswarm.errors.NegotiationError` whose
message lists what was offered and what is supported; the UAS answers 488.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from sipswarm.errors import NegotiationError
from sipswarm.media.codecs import CODECS, TELEPHONE_EVENT, Codec
from sipswarm.media.sdes import SdesError, answer_crypto
from sipswarm.media.sdp_syntax import (
    DIRECTIONS,
    MAX_SDP_SIZE,
    Connection,
    MediaDescription,
    Origin,
    RtpMap,
    SdpError,
    SessionDescription,
    parse_sdp,
)
from sipswarm.memo import remember

__all__ = [
    "DIRECTIONS",
    "MAX_SDP_SIZE",
    "Connection",
    "LocalMedia",
    "MediaDescription",
    "NegotiatedMedia",
    "Origin",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "answer_body",
    "answered_media",
    "apply_answer",
    "apply_answer_body",
    "build_answer",
    "build_offer",
    "parse_sdp",
    "reoffer",
]

# (we may send, we may receive) <-> direction attribute (RFC 3264 §5.1)
_DIR_FLAGS = {
    "sendrecv": (True, True),
    "sendonly": (True, False),
    "recvonly": (False, True),
    "inactive": (False, False),
}
_FLAGS_DIR = {flags: name for name, flags in _DIR_FLAGS.items()}
_HOLD_ADDRESSES = ("0.0.0.0", "::")
FIRST_DYNAMIC_PT = 96


@dataclass(frozen=True)
class LocalMedia:
    """What this endpoint offers or accepts for its one audio stream.

    ``codecs`` are audio codecs in preference order; telephone-event (RFC 4733) is added when
    ``telephone_event``. ``rtcp_port`` defaults to ``port + 1``. ``crypto`` holds ``a=crypto``
    values to send (SDES-SRTP, with ``proto="RTP/SAVP"``); ``direction`` is local policy
    (``sendonly`` to put the peer on hold).
    """

    address: str
    port: int
    codecs: Sequence[Codec]
    ptime_ms: int = 20
    direction: str = "sendrecv"
    telephone_event: bool = True
    rtcp_port: int | None = None
    rtcp_mux: bool = False
    crypto: Sequence[str] = ()
    proto: str = "RTP/AVP"
    username: str = "sipswarm"

    @property
    def addrtype(self) -> str:
        return "IP6" if ":" in self.address else "IP4"


@dataclass(frozen=True)
class NegotiatedMedia:
    """What offer/answer agreed, from this endpoint's side: start or update RTP with it.

    ``direction`` is ours (``sendonly``: we send, the peer does not). ``remote_rtcp`` is where
    our RTCP goes (the RTP address under rtcp-mux). ``remote_crypto`` holds the peer's
    ``a=crypto`` values for SDES-SRTP keying and ``local_crypto`` ours on the same m= line
    (pair them with :func:`sipswarm.media.sdes.negotiated_keys`); ``media_index`` the m= line
    used.
    """

    codec: Codec
    payload_type: int
    ptime_ms: int
    remote_rtp: tuple[str, int]
    remote_rtcp: tuple[str, int]
    rtcp_mux: bool
    telephone_event_pt: int | None
    direction: str
    remote_fmtp: str = ""
    remote_crypto: tuple[str, ...] = ()
    media_index: int = 0
    local_crypto: tuple[str, ...] = ()

    @property
    def sending(self) -> bool:
        return _DIR_FLAGS[self.direction][0]

    @property
    def receiving(self) -> bool:
        return _DIR_FLAGS[self.direction][1]


# -- building -------------------------------------------------------------------------------


def _check_local(local: LocalMedia) -> None:
    if local.direction not in _DIR_FLAGS:
        raise NegotiationError(
            f"local media direction must be one of {', '.join(DIRECTIONS)}, got {local.direction!r}"
        )
    if not [c for c in local.codecs if c.name != TELEPHONE_EVENT.name]:
        raise NegotiationError("local media lists no audio codec; add PCMU, PCMA, G722 or opus")


def _assign_payload_types(codecs: Sequence[Codec]) -> list[Codec]:
    """Static codecs keep their type; dynamic ones keep theirs unless taken (RFC 3551 §3)."""
    used = {c.payload_type for c in codecs if c.static}
    out = []
    for c in codecs:
        pt = c.payload_type
        if not c.static and pt in used:
            pt = next(p for p in range(FIRST_DYNAMIC_PT, 128) if p not in used)
        used.add(pt)
        out.append(c if pt == c.payload_type else c.with_payload_type(pt))
    return out


def _media_section(
    local: LocalMedia, codecs: Sequence[Codec], proto: str, direction: str, mux: bool
) -> MediaDescription:
    m = MediaDescription("audio", local.port, proto, [str(c.payload_type) for c in codecs])
    for c in codecs:
        m.attributes.append(("rtpmap", f"{c.payload_type} {c.rtpmap}"))
        if c.fmtp:
            m.attributes.append(("fmtp", f"{c.payload_type} {c.fmtp}"))
    m.attributes.append(("ptime", str(local.ptime_ms)))
    if local.rtcp_port is not None and local.rtcp_port != local.port + 1:
        m.attributes.append(("rtcp", str(local.rtcp_port)))
    if mux:
        m.attributes.append(("rtcp-mux", None))
    m.attributes += [("crypto", value) for value in local.crypto]
    m.attributes.append((direction, None))
    return m


def _session(local: LocalMedia, session_id: int, version: int) -> SessionDescription:
    return SessionDescription(
        origin=Origin(local.username, session_id, version, "IN", local.addrtype, local.address),
        session_name="sipswarm",
        connection=Connection("IN", local.addrtype, local.address),
        lines=[("t", "0 0")],
    )


def build_offer(
    local: LocalMedia, *, session_id: int, session_version: int = 0
) -> SessionDescription:
    """An initial offer (RFC 3264 §5) with one audio stream; ``serialise()`` it into the INVITE.

    ``session_id`` comes from the caller's id factory (RFC 4566 §5.2: NTP-ish, unique).
    """
    _check_local(local)
    codecs = [c for c in local.codecs if c.name != TELEPHONE_EVENT.name]
    if local.telephone_event:
        codecs.append(TELEPHONE_EVENT)
    sdp = _session(local, session_id, session_version)
    section = _media_section(
        local, _assign_payload_types(codecs), local.proto, local.direction, local.rtcp_mux
    )
    sdp.media.append(section)
    return sdp


def reoffer(previous: SessionDescription, local: LocalMedia) -> SessionDescription:
    """A re-offer (RFC 3264 §8): same session id, version + 1, the new local media."""
    return build_offer(
        local, session_id=previous.origin.session_id, session_version=previous.origin.version + 1
    )


# -- matching -------------------------------------------------------------------------------


def _codec_for(pt: int, *rtpmaps: dict[int, RtpMap]) -> Codec | None:
    """The known codec a payload type stands for, by rtpmap (``rtpmaps`` of the sections to
    look in, in order) or else by static number."""
    for maps in rtpmaps:
        rm = maps.get(pt)
        if rm is not None:
            codec = CODECS.get(rm.name.upper())
            if codec is None or codec.clock_rate != rm.clock_rate:
                return None
            return codec if codec.payload_type == pt else codec.with_payload_type(pt)
    if pt < FIRST_DYNAMIC_PT:
        return next((c for c in CODECS.values() if c.static and c.payload_type == pt), None)
    return None


def _payload_types(m: MediaDescription) -> list[int]:
    return [int(f) for f in m.formats if f.isdigit() and int(f) < 128]


def _pick(m: MediaDescription, supported: Sequence[Codec]) -> Codec | None:
    """RFC 3264 §6.1: the first offered format that we support, in the offerer's order."""
    names = {c.name.upper() for c in supported if c.name != TELEPHONE_EVENT.name}
    maps = m.rtpmaps()  # parsed once, not once per payload type
    for pt in _payload_types(m):
        codec = _codec_for(pt, maps)
        if codec is not None and codec.name.upper() in names:
            return codec
    return None


def _telephone_event(m: MediaDescription, clock_rate: int, *more: MediaDescription) -> int | None:
    """RFC 4733 §7.1: the telephone-event type at the audio codec's clock rate."""
    maps = [s.rtpmaps() for s in (m, *more)]  # parsed once, not twice per payload type
    for pt in _payload_types(m):
        rm = next((rtpmaps[pt] for rtpmaps in maps if pt in rtpmaps), None)
        if rm and rm.name.lower() == TELEPHONE_EVENT.name and rm.clock_rate == clock_rate:
            return pt
    return None


def _our_direction(ours: str, theirs: str) -> str:
    our_send, our_recv = _DIR_FLAGS.get(ours, (True, True))
    their_send, their_recv = _DIR_FLAGS.get(theirs, (True, True))
    return _FLAGS_DIR[(our_send and their_recv, our_recv and their_send)]


def _describe(m: MediaDescription) -> str:
    maps = m.rtpmaps()
    fmts = [
        f"{maps[pt].name}/{maps[pt].clock_rate}" if pt in maps else str(pt)
        for pt in _payload_types(m)
    ]
    return f"{m.media} {m.proto} [{', '.join(fmts)}]" + (" (port 0)" if m.port == 0 else "")


def _acceptable_protos(local: LocalMedia) -> tuple[str, ...]:
    return (local.proto, local.proto + "F")  # AVPF: we answer AVPF and send regular RTCP


# -- answering ------------------------------------------------------------------------------


def _answer_section(
    offer: SessionDescription,
    m: MediaDescription,
    local: LocalMedia,
    codec: Codec,
    crypto: tuple[str, ...],
) -> MediaDescription:
    codecs = [codec]
    te = _telephone_event(m, codec.clock_rate) if local.telephone_event else None
    if te is not None:
        te_fmtp = m.fmtps().get(te) or TELEPHONE_EVENT.fmtp
        codecs.append(_telephone_event_codec(te, codec.clock_rate, te_fmtp))
    ptime = local.ptime_ms if local.ptime_ms in codec.ptimes else 20
    direction = _our_direction(local.direction, offer.direction_of(m))
    here = local
    if ptime != local.ptime_ms or crypto != tuple(local.crypto):
        here = dataclasses.replace(local, ptime_ms=ptime, crypto=crypto)
    return _media_section(here, codecs, m.proto, direction, m.rtcp_mux and local.rtcp_mux)


_TE_CODECS: dict[tuple[int, int, str], Codec] = {}


def _telephone_event_codec(pt: int, clock_rate: int, fmtp: str) -> Codec:
    """telephone-event at ``pt``/``clock_rate`` with ``fmtp`` (frozen: made once, reused)."""
    key = (pt, clock_rate, fmtp)
    codec = _TE_CODECS.get(key)
    if codec is None:
        codec = dataclasses.replace(
            TELEPHONE_EVENT, payload_type=pt, clock_rate=clock_rate, fmtp=fmtp
        )
        if len(_TE_CODECS) < 1024:  # peer input picks the key: bounded
            _TE_CODECS[key] = codec
    return codec


def _answer_crypto(
    m: MediaDescription, local: LocalMedia, notes: list[str]
) -> tuple[str, ...] | None:
    """The answer's a=crypto for ``m`` (RFC 4568 §7.1.2): () for RTP/AVP, None to reject."""
    if not m.proto.startswith("RTP/SAVP"):
        return ()
    if not local.crypto:
        return None
    try:
        return (answer_crypto(m.attribute_values("crypto"), local.crypto),)
    except SdesError as exc:
        notes.append(str(exc))
        return None


def _srtp_hint(offer: SessionDescription, local: LocalMedia, notes: list[str]) -> str:
    """Why SRTP settings stood in the way, in words, for the 488's reason."""
    secure = local.proto.startswith("RTP/SAVP")
    if notes:
        return "; " + "; ".join(notes)
    if secure and any(m.proto.startswith("RTP/AVP") for m in offer.media):
        return "; SRTP (media.srtp sdes) is required here and the offer is plain RTP/AVP"
    if not secure and any("SAVP" in m.proto for m in offer.media):
        return "; the offer requires SRTP and media.srtp is off here"
    return ""


def _rejected(m: MediaDescription) -> MediaDescription:
    return MediaDescription(m.media, 0, m.proto, m.formats[:1] or ["0"])


def build_answer(
    offer: SessionDescription,
    local: LocalMedia,
    *,
    session_id: int,
    previous_answer: SessionDescription | None = None,
) -> SessionDescription:
    """The answer (RFC 3264 §6) to ``offer``, or :class:`NegotiationError` (send 488).

    Accepts the first audio stream with a codec of ``local.codecs`` and a transport of
    ``local.proto`` (or its AVPF variant); every other m= line is rejected with port 0. For an
    answer to a re-offer pass ``previous_answer``: the o= line keeps its id and bumps its
    version only if the description changed (RFC 3264 §8).
    """
    _check_local(local)
    if not offer.media:
        raise NegotiationError("SDP offer has no m= line; nothing to answer")
    protos = _acceptable_protos(local)
    sdp = _session(local, session_id, 0)
    accepted = False
    srtp_notes: list[str] = []
    for m in offer.media:
        codec = None
        if not accepted and m.media == "audio" and m.port != 0 and m.proto in protos:
            codec = _pick(m, local.codecs)
        crypto = _answer_crypto(m, local, srtp_notes) if codec is not None else None
        if codec is None or crypto is None:
            sdp.media.append(_rejected(m))
            continue
        sdp.media.append(_answer_section(offer, m, local, codec, crypto))
        accepted = True
    if not accepted:
        offered = "; ".join(_describe(m) for m in offer.media)
        supported = ", ".join(c.rtpmap for c in local.codecs)
        raise NegotiationError(
            f"no acceptable audio stream in the offer: offered {offered}; "
            f"supported {supported} over {' or '.join(protos)}"
            + _srtp_hint(offer, local, srtp_notes)
        )
    if previous_answer is not None:
        old = previous_answer.origin
        sdp.origin = dataclasses.replace(sdp.origin, session_id=old.session_id, version=old.version)
        if sdp.serialise() != previous_answer.serialise():
            sdp.origin = dataclasses.replace(sdp.origin, version=old.version + 1)
    return sdp


# -- the outcome ----------------------------------------------------------------------------


def _first_accepted(offer: SessionDescription, answer: SessionDescription) -> int:
    if len(answer.media) != len(offer.media):
        raise NegotiationError(
            f"SDP answer has {len(answer.media)} m= lines, the offer had {len(offer.media)} "
            "(RFC 3264 §6 requires one per offered stream)"
        )
    for i, (o, a) in enumerate(zip(offer.media, answer.media, strict=True)):
        if o.media == "audio" and a.media == "audio" and a.port != 0 and o.port != 0:
            return i
    raise NegotiationError(
        "SDP answer rejected every audio stream: " + "; ".join(_describe(m) for m in answer.media)
    )


def _remote_rtcp(m: MediaDescription, rtp: tuple[str, int], mux: bool) -> tuple[str, int]:
    if mux:
        return rtp
    explicit = m.rtcp_address()
    if explicit is not None:
        return (explicit[1] or rtp[0], explicit[0])
    return (rtp[0], rtp[1] + 1)


def _negotiated(
    offer: SessionDescription, answer: SessionDescription, we_offered: bool
) -> NegotiatedMedia:
    index = _first_accepted(offer, answer)
    om, am = offer.media[index], answer.media[index]
    offered = set(_payload_types(om))
    codec = None
    maps = (am.rtpmaps(), om.rtpmaps())
    for pt in _payload_types(am):
        candidate = _codec_for(pt, *maps) if pt in offered else None
        if candidate is not None and candidate.name != TELEPHONE_EVENT.name:
            codec = candidate
            break
    if codec is None:
        raise NegotiationError(
            f"SDP answer chose no offered audio codec: offered {_describe(om)}, "
            f"answered {_describe(am)}"
        )
    ours, theirs = (offer, answer) if we_offered else (answer, offer)
    our_m, their_m = (om, am) if we_offered else (am, om)
    conn = theirs.connection_for(their_m)
    if conn is None:
        raise SdpError(f"SDP has no c= line for the audio stream (m= line {index + 1})")
    rtp = (conn.address, their_m.port)
    mux = om.rtcp_mux and am.rtcp_mux
    direction = _our_direction(ours.direction_of(our_m), theirs.direction_of(their_m))
    if conn.address in _HOLD_ADDRESSES:  # RFC 2543 hold: do not send to 0.0.0.0
        direction = _FLAGS_DIR[(False, _DIR_FLAGS[direction][1])]
    ptime = next(
        (p for p in (their_m.ptime, our_m.ptime) if p is not None and p in codec.ptimes), 20
    )
    return NegotiatedMedia(
        codec=codec,
        payload_type=codec.payload_type,
        ptime_ms=ptime,
        remote_rtp=rtp,
        remote_rtcp=_remote_rtcp(their_m, rtp, mux),
        rtcp_mux=mux,
        telephone_event_pt=_telephone_event(am, codec.clock_rate, om),
        direction=direction,
        remote_fmtp=their_m.fmtps().get(codec.payload_type, ""),
        remote_crypto=tuple(their_m.attribute_values("crypto")),
        media_index=index,
        local_crypto=tuple(our_m.attribute_values("crypto")),
    )


def apply_answer(offer: SessionDescription, answer: SessionDescription) -> NegotiatedMedia:
    """The offerer's view of the agreement: the codec the answer chose, where to send RTP/RTCP.

    Raises :class:`NegotiationError` when the answer breaks RFC 3264 (other m= count, a codec
    that was not offered, every stream rejected): the UAC then hangs up the call.
    """
    return _negotiated(offer, answer, we_offered=True)


def answered_media(offer: SessionDescription, answer: SessionDescription) -> NegotiatedMedia:
    """The answerer's view of what :func:`build_answer` agreed: start RTP with it after ACK."""
    return _negotiated(offer, answer, we_offered=False)


# -- per-call shortcuts ---------------------------------------------------------------------

#: Remembered outcomes; peer input picks the keys, so the caches are bounded (cleared when full).
CACHE_SIZE = 256
_APPLIED: dict[tuple[bytes, bytes], NegotiatedMedia] = {}
_ANSWERS: dict[tuple[object, ...], tuple[bytes, list[str], bytes, NegotiatedMedia]] = {}


def _origin_split(body: bytes) -> tuple[bytes, bytes, bytes]:
    """``body`` as (before the o= line, the o= line, from the line break after it)."""
    start = body.find(b"\no=")
    if start < 0:
        return body, b"", b""
    end = body.find(b"\n", start + 1)
    end = len(body) if end < 0 else end
    line_end = end - 1 if body[end - 1 : end] == b"\r" else end
    return body[: start + 1], body[start + 1 : line_end], body[line_end:]


def apply_answer_body(
    offer: SessionDescription, offer_body: bytes, answer_body: bytes
) -> NegotiatedMedia:
    """:func:`apply_answer` of ``offer`` (serialised as ``offer_body``) and the answer's
    raw body; remembered for bodies that differ from an earlier call's only in ``o=``."""
    if b"a=crypto" in answer_body:
        return apply_answer(offer, parse_sdp(answer_body))
    o_head, _, o_tail = _origin_split(offer_body)
    a_head, _, a_tail = _origin_split(answer_body)
    key = (o_head + o_tail, a_head + a_tail)
    media = _APPLIED.get(key)
    if media is None:
        media = apply_answer(offer, parse_sdp(answer_body))
        remember(_APPLIED, key, media, CACHE_SIZE)
    return media


def answer_body(
    offer_body: bytes, local: LocalMedia, session_id: int
) -> tuple[bytes, NegotiatedMedia]:
    """The serialised :func:`build_answer` to the raw offer and :func:`answered_media`;
    remembered per offer (its ``o=`` line cut out) and local media, with the answer's own
    ``o=`` session id filled in per call. Raises as they do (answer 488)."""
    if local.crypto or b"a=crypto" in offer_body:
        return _full_answer(offer_body, local, session_id)
    head, _, tail = _origin_split(offer_body)
    key = (head + tail, local.address, local.port, tuple(local.codecs), local.ptime_ms,
           local.direction, local.telephone_event, local.rtcp_port, local.rtcp_mux,
           local.proto, local.username)  # fmt: skip
    hit = _ANSWERS.get(key)
    if hit is None:
        body, media = _full_answer(offer_body, local, session_id)
        before, origin, after = _origin_split(body)
        remember(_ANSWERS, key, (before, origin.decode().split(" "), after, media), CACHE_SIZE)
        return body, media
    before, fields, after, media = hit
    origin = " ".join([fields[0], str(session_id), *fields[2:]]).encode()
    return before + origin + after, media


def _full_answer(
    offer_body: bytes, local: LocalMedia, session_id: int
) -> tuple[bytes, NegotiatedMedia]:
    offer = parse_sdp(offer_body)
    answer = build_answer(offer, local, session_id=session_id)
    return answer.serialise(), answered_media(offer, answer)
