"""RTCP packets (RFC 3550 §6): build and parse compound SR/RR/SDES/BYE, NTP time, RTT, interval.

Theory of operation
-------------------
An RTCP *compound* packet is several RTCP packets back to back in one datagram. RFC 3550 §6.1
requires it to start with an SR (we sent RTP since the last report) or an RR, and to carry an
SDES packet with our CNAME. The builders here return whole compounds, ready for the socket::

    data = build_sender_report(ssrc, SenderInfo(ntp, rtp_ts, packets, octets), blocks, cname)

The receive side hands any datagram to :func:`parse_rtcp`, which never raises: it returns an
:class:`RtcpReport` (sender SSRC, sender info, report blocks, CNAME, BYE) or ``None`` on garbage,
and the caller counts the drop. With rtcp-mux (RFC 5761) call :func:`is_rtcp` first.

Round-trip time (RFC 3550 §6.4.1): when an SR arrives, remember ``ntp_middle32(sr.ntp_ts)`` as
LSR and the arrival time; our next report block carries LSR and DLSR (the delay since then, in
1/65536 s). When the peer's report block about *our* stream comes back, :func:`rtt_seconds`
with the arrival time's middle 32 bits gives the RTT.

When to send: :func:`rtcp_interval` is the RFC 3550 A.7 computation with the random factor
injected by the caller (this module imports no ``random``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from sipswarm.errors import ConfigError

__all__ = [
    "MAX_RTCP_SIZE",
    "PT_APP",
    "PT_BYE",
    "PT_RR",
    "PT_SDES",
    "PT_SR",
    "ReportBlock",
    "RtcpReport",
    "SenderInfo",
    "build_bye",
    "build_receiver_report",
    "build_sender_report",
    "is_rtcp",
    "ntp_from_unix",
    "ntp_middle32",
    "parse_rtcp",
    "rtcp_interval",
    "rtt_seconds",
]

PT_SR = 200
PT_RR = 201
PT_SDES = 202
PT_BYE = 203
PT_APP = 204

SDES_CNAME = 1
MAX_RTCP_SIZE = 65535
MAX_REPORT_BLOCKS = 31  # RC is 5 bits; RFC 3550 §6.4: more blocks go into extra RR packets
NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01 (RFC 5905)

_HEADER = struct.Struct("!BBH")
_SSRC = struct.Struct("!I")
_SENDER_INFO = struct.Struct("!QIII")
_BLOCK = struct.Struct("!IIIIII")
_U32 = 0xFFFFFFFF

# RFC 3550 A.7 constants.
RTCP_MIN_TIME = 5.0
RTCP_SENDER_BW_FRACTION = 0.25
RTCP_RCVR_BW_FRACTION = 1.0 - RTCP_SENDER_BW_FRACTION
COMPENSATION = 2.71828 - 1.5  # e - 3/2: the timer reconsideration bias (RFC 3550 A.7)


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 §6.4.1) about the source ``ssrc``.

    ``fraction_lost`` is 0-255 (lost/expected * 256 since the last report), ``cumulative_lost``
    a signed 24-bit count, ``highest_seq`` the extended highest sequence number, ``jitter`` in
    RTP timestamp units, ``lsr`` the middle 32 bits of the last SR's NTP time, ``dlsr`` the delay
    since that SR in 1/65536 s.
    """

    ssrc: int
    fraction_lost: int
    cumulative_lost: int
    highest_seq: int
    jitter: int
    lsr: int
    dlsr: int


@dataclass(frozen=True, slots=True)
class SenderInfo:
    """Sender information of an SR (RFC 3550 §6.4.1): 64-bit NTP time and the matching RTP time."""

    ntp_ts: int
    rtp_ts: int
    packet_count: int
    octet_count: int


@dataclass
class RtcpReport:
    """What :func:`parse_rtcp` found in one compound packet.

    ``ssrc`` is the reporter (the SR/RR sender, else the first SDES chunk or BYE source);
    ``sender_info`` is set for an SR; ``blocks`` holds the report blocks of every SR/RR of the
    reporter; ``bye`` is true when a BYE was present (``bye_reason`` its text, if any).
    """

    ssrc: int
    sender_info: SenderInfo | None = None
    blocks: list[ReportBlock] = field(default_factory=list)
    cname: str | None = None
    bye: bool = False
    bye_reason: str | None = None


# -- building -------------------------------------------------------------------------------


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= _U32:
        raise ConfigError(f"RTCP {name} must be an unsigned 32-bit integer, got {value}")


def _header(count: int, pt: int, body_len: int) -> bytes:
    # RFC 3550 §6.4.1: length is in 32-bit words minus one, header included.
    return _HEADER.pack(0x80 | count, pt, (body_len + 4) // 4 - 1)


def _pack_block(block: ReportBlock) -> bytes:
    _check_u32("report block ssrc", block.ssrc)
    fraction = min(max(block.fraction_lost, 0), 255)
    # RFC 3550 A.3: the cumulative count is clamped to the signed 24-bit range.
    lost = min(max(block.cumulative_lost, -0x800000), 0x7FFFFF) & 0xFFFFFF
    return _BLOCK.pack(
        block.ssrc,
        (fraction << 24) | lost,
        block.highest_seq & _U32,
        min(max(block.jitter, 0), _U32),
        block.lsr & _U32,
        min(max(block.dlsr, 0), _U32),
    )


def _receiver_reports(ssrc: int, blocks: Sequence[ReportBlock]) -> bytes:
    """RR packets carrying ``blocks``, 31 per packet; one empty RR when there are none."""
    if not blocks:
        return _header(0, PT_RR, 4) + _SSRC.pack(ssrc)
    out = bytearray()
    for start in range(0, len(blocks), MAX_REPORT_BLOCKS):
        chunk = blocks[start : start + MAX_REPORT_BLOCKS]
        body = _SSRC.pack(ssrc) + b"".join(_pack_block(b) for b in chunk)
        out += _header(len(chunk), PT_RR, len(body)) + body
    return bytes(out)


def _sdes_cname(ssrc: int, cname: str) -> bytes:
    text = cname.encode("utf-8")
    if not 1 <= len(text) <= 255:
        raise ConfigError(f"RTCP cname must be 1-255 bytes of UTF-8, got {len(text)} bytes")
    chunk = _SSRC.pack(ssrc) + bytes((SDES_CNAME, len(text))) + text
    # RFC 3550 §6.5: the item list ends with at least one null octet, padded to 32 bits.
    chunk += b"\x00" * (4 - len(chunk) % 4)
    return _header(1, PT_SDES, len(chunk)) + chunk


def build_sender_report(
    ssrc: int, info: SenderInfo, blocks: Sequence[ReportBlock], cname: str
) -> bytes:
    """Compound SR + SDES CNAME (RFC 3550 §6.4.1, §6.1); send it on the RTCP socket.

    More than 31 blocks continue in RR packets inside the same compound (RFC 3550 §6.4).
    """
    _check_u32("ssrc", ssrc)
    first = blocks[:MAX_REPORT_BLOCKS]
    body = (
        _SSRC.pack(ssrc)
        + _SENDER_INFO.pack(
            info.ntp_ts & 0xFFFFFFFFFFFFFFFF,
            info.rtp_ts & _U32,
            info.packet_count & _U32,
            info.octet_count & _U32,
        )
        + b"".join(_pack_block(b) for b in first)
    )
    sr = _header(len(first), PT_SR, len(body)) + body
    rest = blocks[MAX_REPORT_BLOCKS:]
    extra = _receiver_reports(ssrc, rest) if rest else b""
    return sr + extra + _sdes_cname(ssrc, cname)


def build_receiver_report(ssrc: int, blocks: Sequence[ReportBlock], cname: str) -> bytes:
    """Compound RR + SDES CNAME (RFC 3550 §6.4.2); with no blocks it is the empty RR of §6.1."""
    _check_u32("ssrc", ssrc)
    return _receiver_reports(ssrc, blocks) + _sdes_cname(ssrc, cname)


def build_bye(
    ssrc: int,
    reason: str | None = None,
    *,
    cname: str | None = None,
    blocks: Sequence[ReportBlock] = (),
) -> bytes:
    """Compound RR [+ SDES CNAME] + BYE (RFC 3550 §6.6); send it once when the stream ends.

    A compound must start with an SR or RR (§6.1), hence the (possibly empty) RR in front.
    Pass ``cname`` to include the SDES packet that §6.1 also asks for.
    """
    _check_u32("ssrc", ssrc)
    out = _receiver_reports(ssrc, blocks)
    if cname is not None:
        out += _sdes_cname(ssrc, cname)
    body = _SSRC.pack(ssrc)
    if reason:
        text = reason.encode("utf-8")[:255]
        body += bytes((len(text),)) + text
        body += b"\x00" * (-len(body) % 4)
    return out + _header(1, PT_BYE, len(body)) + body


# -- parsing --------------------------------------------------------------------------------


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 §4 demultiplexing for rtcp-mux: RTCP when the second octet is 192-223.

    RTP payload types 64-95 (which would collide) are not used when muxing. STUN and DTLS
    (RFC 7983) fail the version check.
    """
    return len(data) >= 8 and data[0] >> 6 == 2 and 192 <= data[1] <= 223


def _parse_sr(rep: RtcpReport, count: int, body: bytes) -> None:
    if len(body) < 24 + 24 * count:
        raise ValueError("SR shorter than its report count")
    ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(body, 4)
    rep.sender_info = SenderInfo(ntp, rtp_ts, packets, octets)
    _parse_blocks(rep, count, body, 24)


def _parse_rr(rep: RtcpReport, count: int, body: bytes) -> None:
    if len(body) < 4 + 24 * count:
        raise ValueError("RR shorter than its report count")
    _parse_blocks(rep, count, body, 4)


def _parse_blocks(rep: RtcpReport, count: int, body: bytes, offset: int) -> None:
    for i in range(count):
        ssrc, lost_word, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(body, offset + 24 * i)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        rep.blocks.append(ReportBlock(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr))


def _parse_sdes(rep: RtcpReport, count: int, body: bytes) -> None:
    pos = 0
    for _ in range(count):
        if pos + 4 > len(body):
            raise ValueError("SDES chunk truncated")
        (chunk_ssrc,) = _SSRC.unpack_from(body, pos)
        pos += 4
        while pos < len(body) and body[pos] != 0:
            if pos + 2 > len(body) or pos + 2 + body[pos + 1] > len(body):
                raise ValueError("SDES item truncated")
            kind, length = body[pos], body[pos + 1]
            if kind == SDES_CNAME and (rep.cname is None or chunk_ssrc == rep.ssrc):
                rep.cname = body[pos + 2 : pos + 2 + length].decode("utf-8", "replace")
            pos += 2 + length
        pos = (pos + 4) & ~3  # skip the null item and the padding to the next 32-bit word


def _parse_bye(rep: RtcpReport, count: int, body: bytes) -> None:
    end = 4 * count
    if end > len(body):
        raise ValueError("BYE shorter than its source count")
    rep.bye = True
    if end < len(body):
        length = body[end]
        rep.bye_reason = body[end + 1 : end + 1 + length].decode("utf-8", "replace")


def _parse_other(rep: RtcpReport, count: int, body: bytes) -> None:
    """APP, feedback (RFC 4585), XR (RFC 3611) and unknown types are skipped."""


_PARSERS = {PT_SR: _parse_sr, PT_RR: _parse_rr, PT_SDES: _parse_sdes, PT_BYE: _parse_bye}


def _split(data: bytes) -> list[tuple[int, int, bytes]] | None:
    """Split a compound into (count, pt, body-with-ssrc) per RFC 3550 A.2 checks, or None."""
    packets: list[tuple[int, int, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            return None
        first, pt, words = _HEADER.unpack_from(data, pos)
        end = pos + 4 * (words + 1)
        if first >> 6 != 2 or not 192 <= pt <= 223 or end > len(data):
            return None
        body = data[pos + 4 : end]
        if first & 0x20:  # P bit: the last octet counts the padding (RFC 3550 §6.4.1)
            pad = body[-1] if body else 0
            if pad == 0 or pad > len(body):
                return None
            body = body[:-pad]
        packets.append((first & 0x1F, pt, body))
        pos = end
    return packets or None


def parse_rtcp(data: bytes) -> RtcpReport | None:
    """Parse one compound RTCP datagram; ``None`` on garbage. Never raises.

    Feed it every datagram of the RTCP socket (or those :func:`is_rtcp` picks under rtcp-mux);
    use ``sender_info`` for LSR/RTT bookkeeping and ``blocks`` for the peer's view of our stream.
    """
    if len(data) > MAX_RTCP_SIZE:
        return None
    packets = _split(data)
    if packets is None:
        return None
    reporter = next((b for _, pt, b in packets if pt in (PT_SR, PT_RR) and len(b) >= 4), None)
    if reporter is None:
        reporter = next((b for _, _, b in packets if len(b) >= 4), None)
    if reporter is None:
        return None
    rep = RtcpReport(ssrc=_SSRC.unpack_from(reporter)[0])
    try:
        for count, pt, body in packets:
            if pt in (PT_SR, PT_RR) and (len(body) < 4 or _SSRC.unpack_from(body)[0] != rep.ssrc):
                continue  # a report from another source in the same compound (translator)
            _PARSERS.get(pt, _parse_other)(rep, count, body)
    except (ValueError, IndexError, struct.error):
        return None
    return rep


# -- time and scheduling --------------------------------------------------------------------


def ntp_from_unix(t: float) -> int:
    """64-bit NTP timestamp (RFC 5905 era 0) for a Unix time in seconds, for ``SenderInfo``."""
    seconds = int(t // 1)
    fraction = int((t - seconds) * 4294967296.0)
    return (((seconds + NTP_UNIX_OFFSET) & _U32) << 32) | (fraction & _U32)


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp: the LSR of RFC 3550 §6.4.1."""
    return (ntp >> 16) & _U32


def rtt_seconds(arrival_ntp_middle32: int, lsr: int, dlsr: int) -> float | None:
    """Round-trip time from a report block about our stream (RFC 3550 §6.4.1): A - LSR - DLSR.

    ``arrival_ntp_middle32`` is ``ntp_middle32(ntp_from_unix(arrival))``. Returns ``None`` when
    the peer has not received an SR yet (``lsr == 0``) or the result is negative (clock trouble).
    The subtraction is modulo 2**32 so that the 18-hour wrap of the middle 32 bits is harmless.
    """
    if lsr == 0:
        return None
    delta = (arrival_ntp_middle32 - lsr - dlsr) & _U32
    if delta >= 0x80000000:
        return None
    return delta / 65536.0


def rtcp_interval(
    members: int,
    senders: int,
    rtcp_bw_bps: float,
    we_sent: bool,
    avg_rtcp_size: float,
    initial: bool,
    rand_factor: float,
) -> float:
    """Seconds until the next RTCP report (RFC 3550 A.7 ``rtcp_interval``).

    ``rtcp_bw_bps`` is the session's RTCP bandwidth in bits/s (5 % of the session bandwidth by
    default, RFC 3550 §6.2), ``avg_rtcp_size`` the average compound size in octets including
    UDP/IP overhead, ``rand_factor`` uniform in [0.5, 1.5] from the caller's random source.
    The result is divided by e - 3/2 to compensate for timer reconsideration; the deterministic
    floor is 5 s (2.5 s before the first report).
    """
    if not 0.5 <= rand_factor <= 1.5:
        raise ConfigError(f"rtcp_interval rand_factor must be in [0.5, 1.5], got {rand_factor}")
    if rtcp_bw_bps <= 0:
        raise ConfigError(f"rtcp_interval rtcp_bw_bps must be > 0, got {rtcp_bw_bps}")
    rtcp_min_time = RTCP_MIN_TIME / 2 if initial else RTCP_MIN_TIME
    bw = rtcp_bw_bps / 8.0  # A.7 works in octets per second
    n = max(members, 1)
    # RFC 3550 §6.3.1: senders share 1/4 of the RTCP bandwidth when they are few.
    if senders <= members * RTCP_SENDER_BW_FRACTION:
        if we_sent:
            bw *= RTCP_SENDER_BW_FRACTION
            n = max(senders, 1)
        else:
            bw *= RTCP_RCVR_BW_FRACTION
            n = max(members - senders, 1)
    t = max(avg_rtcp_size * n / bw, rtcp_min_time)
    return t * rand_factor / COMPENSATION
