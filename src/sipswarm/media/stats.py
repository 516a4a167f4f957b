"""RTP receive and send statistics: the per-packet hot path and the per-interval figures.

Theory of operation
-------------------
:class:`RtpReceiveStats` follows RFC 3550 Appendix A.1 (sequence number
validation with probation, 16-bit wrap counted in ``cycles``), A.3 (expected,
lost, fraction lost per interval) and §6.4.1/A.8 (interarrival jitter). The
engine calls :meth:`RtpReceiveStats.receive_rtp` for every datagram with the
arrival time on a monotonic clock in seconds; garbage is counted in
``invalid_packets`` and dropped, nothing raises.

Two interval cursors run over the same counters: one closed every second by
:meth:`RtpReceiveStats.close_interval` (rates, the metrics' ``fraction_lost``)
and one closed by :meth:`RtpReceiveStats.report_block` each time an RTCP report
is built (the report block's fraction lost, §6.4.1).

Deviations from Appendix A, on purpose:

* Duplicates are detected with a 128-packet window behind the highest
  sequence number and are *not* counted as received for loss, so that a
  duplicate cannot hide a lost packet (A.3 counts them and lets ``lost`` go
  negative). ``packets_received`` (the metric) still counts every packet.
* Packets received during probation are kept: once the source is validated
  the base sequence number is the first probation packet, so the first
  packet of a call counts (tshark counts it too).
* An SSRC change (the peer restarted its stream, or a PBX switched media
  under us) restarts the sequence state with probation and is counted in
  ``ssrc_switches``; the old stream's loss is kept in the cumulative totals.

:class:`RtpSendStats` counts what the engine sent. :func:`metrics_snapshot`
turns both, plus the far end's report (:class:`RemoteReport`), into the
PROTOCOL.md metric keys.

Two implementations of the per-packet part: the fields ``receive_rtp``
touches and its fast path live in a base class, ``sipswarm._rtpcore.RecvBase``
(C, pure computation, no I/O) when the extension is active and
:class:`PyRecvBase` otherwise; the same holds for the send counters
(``SendBase``/:class:`PySendBase`). Everything else is this module's Python,
shared by both. :class:`PyRtpReceiveStats` and :class:`PyRtpSendStats` are
always the pure-Python classes (tests and ``SIPSWARM_NATIVE=0``; see
:mod:`sipswarm._native`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sipswarm._native import core, rebase
from sipswarm.media.rtp import MAX_RTP_PACKET, RTP_HEADER_SIZE, RtpHeader, parse_rtp_header

# RFC 3550 A.1
MAX_DROPOUT: Final = 3000
MAX_MISORDER: Final = 100
MIN_SEQUENTIAL: Final = 2
SEQ_MOD: Final = 1 << 16
#: Sequence numbers remembered behind the highest one, for duplicate detection.
DUP_WINDOW: Final = 128
_DUP_MASK: Final = (1 << DUP_WINDOW) - 1
_unpack_from = struct.Struct("!BBHII").unpack_from


class PyRecvBase:
    """The fields :meth:`RtpReceiveStats.receive_rtp` touches per packet, and its fast path.

    The pure-Python fallback of ``sipswarm._rtpcore.RecvBase``, which has the same names as
    C members and the same fast path in C (module docstring of :mod:`sipswarm._native`).
    """

    __slots__ = (
        "_cycles",
        "_jitter_valid",
        "_last_arrival_ts",
        "_last_ts",
        "_max_seq",
        "_probation",
        "_unique",
        "_window",
        "bytes_received",
        "clock_rate",
        "invalid_packets",
        "jitter",
        "jitter_max",
        "last_arrival",
        "packets_received",
        "ssrc",
    )

    ssrc: int | None
    last_arrival: float | None
    _window: int
    _max_seq: int
    _probation: int
    _cycles: int
    _unique: int
    packets_received: int
    bytes_received: int
    _jitter_valid: bool
    jitter: float
    jitter_max: float
    _last_ts: int
    _last_arrival_ts: float
    clock_rate: int
    invalid_packets: int

    def _receive_slow(self, data: bytes | bytearray | memoryview, now: float) -> int:
        raise NotImplementedError  # RtpReceiveStats defines it

    def receive_rtp(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Account one datagram that arrived at ``now``; return its payload type, -1 if invalid.

        The common case (a plain 12-byte header, the current SSRC, the next
        sequence number) is handled inline: this runs for every packet.
        Everything else goes to ``_receive_slow`` (:func:`parse_rtp_header` and
        ``receive_header``).
        """
        size = len(data)
        if size < 12 or size > MAX_RTP_PACKET:
            self.invalid_packets += 1
            return -1
        b0, b1, seq, ts, ssrc = _unpack_from(data)
        pt: int = b1 & 0x7F
        if (
            b0 != 0x80  # CSRCs, extension or padding: validate them in the slow path
            or ssrc != self.ssrc
            or (seq - self._max_seq) & 0xFFFF != 1
            or self._probation
            or 72 <= pt <= 76
        ):
            return self._receive_slow(data, now)
        # in-order next packet: RFC 3550 A.1 update_seq with udelta == 1
        self._max_seq = seq
        if seq == 0:
            self._cycles += SEQ_MOD
        self._window = ((self._window << 1) | 1) & _DUP_MASK
        self._unique += 1
        self.packets_received += 1
        self.bytes_received += size
        self.last_arrival = now
        # RFC 3550 §6.4.1 jitter, inline (see _update_jitter)
        if self._jitter_valid:
            d = (now - self._last_arrival_ts) * self.clock_rate - (
                ((ts - self._last_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            )
            j = self.jitter
            j += ((d if d >= 0 else -d) - j) * 0.0625
            self.jitter = j
            if j > self.jitter_max:
                self.jitter_max = j
        else:
            self._jitter_valid = True
        self._last_ts = ts
        self._last_arrival_ts = now
        return pt


if TYPE_CHECKING:
    _RecvBase = PyRecvBase
else:
    _RecvBase = PyRecvBase if core is None else core.RecvBase

_RECV_SLOTS: Final = (
    "_bad_seq",
    "_base_seq",
    "_expected_before",
    "_int_bytes",
    "_int_expected",
    "_int_packets",
    "_int_start",
    "_int_unique",
    "_lost_before",
    "_probation_packets",
    "_rr_expected",
    "_rr_unique",
    "duplicate_packets",
    "first_arrival",
    "interval_bytes_rate",
    "interval_fraction_lost",
    "interval_packets_rate",
    "out_of_order_packets",
    "probation_dropped",
    "sequence_number_gaps",
    "ssrc_switches",
)


class RtpReceiveStats(_RecvBase):
    """Receive statistics of one incoming RTP stream (one call leg, any number of SSRCs).

    Per packet: :meth:`receive_rtp` (or :meth:`receive_header` when the caller
    already parsed, e.g. for RFC 4733 events that must not feed the jitter).
    Every second: :meth:`close_interval`. For each RTCP report:
    :meth:`report_block`. Read the public attributes at any time.

    The per-packet fields and ``receive_rtp`` live in the base class: the C
    ``RecvBase`` when the extension is active, :class:`PyRecvBase` otherwise
    (:class:`PyRtpReceiveStats` is always the pure-Python one).
    """

    __slots__ = _RECV_SLOTS

    def __init__(self, clock_rate: int) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be positive, got {clock_rate}")
        self.clock_rate = clock_rate
        self.ssrc = None
        self.packets_received = 0
        self.bytes_received = 0
        self.invalid_packets = 0
        self.duplicate_packets = 0
        self.out_of_order_packets = 0
        self.sequence_number_gaps = 0
        self.ssrc_switches = 0
        self.probation_dropped = 0
        self.first_arrival: float | None = None
        self.last_arrival = None
        self.jitter = 0.0  # RFC 3550 §6.4.1 J, in timestamp units
        self.jitter_max = 0.0
        self._lost_before = 0
        self._expected_before = 0
        self._int_start: float | None = None
        self._int_packets = 0  # packets_received/bytes_received at the interval's start
        self._int_bytes = 0
        self.interval_fraction_lost: float | None = None
        self.interval_packets_rate: float | None = None
        self.interval_bytes_rate: float | None = None
        self._restart(0)

    def _restart(self, seq: int) -> None:
        """Forget the sequence state: a new SSRC is on probation (A.1 ``probation``)."""
        self._probation = MIN_SEQUENTIAL
        self._probation_packets = 0
        self._max_seq = (seq - 1) & 0xFFFF
        self._base_seq = seq
        self._bad_seq = SEQ_MOD + 1
        self._cycles = 0
        self._unique = 0
        self._window = 0
        self._jitter_valid = False
        self._last_ts = 0
        self._last_arrival_ts = 0.0
        self._int_expected = 0
        self._int_unique = 0
        self._rr_expected = 0
        self._rr_unique = 0

    # -- per packet ------------------------------------------------------------------------

    def _receive_slow(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Everything the fast path of ``receive_rtp`` does not take: parse, then account."""
        hdr = parse_rtp_header(data)
        if hdr is None:
            self.invalid_packets += 1
            return -1
        self.receive_header(hdr, len(data), now, True)
        return hdr.payload_type

    def receive_header(self, hdr: RtpHeader, size: int, now: float, jitter: bool) -> None:
        """Account one parsed packet of ``size`` bytes; ``jitter=False`` for RFC 4733 events.

        Telephone-event packets repeat their timestamp, so they would inflate
        the jitter of the audio stream they share an SSRC with.
        """
        ssrc = hdr.ssrc
        if ssrc != self.ssrc:
            if self.ssrc is not None:
                self._switch_ssrc()
            self.ssrc = ssrc
            self._restart(hdr.sequence)
        if self.first_arrival is None:
            self.first_arrival = now  # any valid RTP, probation or not: time to first media
        if self._probation:
            if not self._probe(hdr.sequence, size):
                return
        elif not self._update_seq(hdr.sequence):
            return
        self.packets_received += 1
        self.bytes_received += size
        self.last_arrival = now
        if jitter:
            self._update_jitter(hdr.timestamp, now)

    def _probe(self, seq: int, size: int) -> bool:
        """A.1 probation: accept the source after MIN_SEQUENTIAL packets in sequence."""
        if seq == (self._max_seq + 1) & 0xFFFF:
            self._probation -= 1
            self._probation_packets += 1
            self._max_seq = seq
            if self._probation == 0:
                first = (seq - self._probation_packets + 1) & 0xFFFF
                self._base_seq = first
                self._unique = self._probation_packets
                self._window = (1 << self._probation_packets) - 1
                # the earlier probation packets are counted now, with their bytes
                # approximated by this one's size (they are the same codec frame)
                early = self._probation_packets - 1
                self.packets_received += early
                self.bytes_received += early * size
                return True
            return False
        self.probation_dropped += self._probation_packets
        self._probation = MIN_SEQUENTIAL - 1
        self._probation_packets = 1
        self._max_seq = seq
        return False

    def _update_seq(self, seq: int) -> bool:
        """A.1 ``update_seq`` plus duplicate, reorder and gap counting; False drops the packet."""
        max_seq = self._max_seq
        udelta = (seq - max_seq) & 0xFFFF
        if 0 < udelta < MAX_DROPOUT:
            if seq < max_seq:
                self._cycles += SEQ_MOD  # wrapped
            if udelta > 1:
                self.sequence_number_gaps += 1
            self._max_seq = seq
            self._window = ((self._window << udelta) | 1) & _DUP_MASK
            self._unique += 1
            return True
        if udelta == 0:
            self.duplicate_packets += 1
            return True
        if udelta <= SEQ_MOD - MAX_MISORDER:
            # a very large jump: restart if the next packet follows it (A.1), else drop
            if seq == self._bad_seq:
                self._resync(seq)
                return True
            self._bad_seq = (seq + 1) & 0xFFFF
            return False
        back = SEQ_MOD - udelta  # 1..MAX_MISORDER behind the highest
        bit = 1 << back
        if back < DUP_WINDOW and self._window & bit:
            self.duplicate_packets += 1
            return True
        self._window |= bit
        self.out_of_order_packets += 1
        self._unique += 1
        return True

    def _resync(self, seq: int) -> None:
        """The peer jumped its sequence number (A.1: two sequential packets after a jump)."""
        self._fold_totals()
        self._base_seq = seq  # A.1 init_seq(seq): the first packet of the jump is not counted
        self._max_seq = seq
        self._cycles = 0
        self._unique = 1
        self._window = 1
        self._int_expected = self._rr_expected = 0
        self._int_unique = self._rr_unique = 0
        self._jitter_valid = False

    def _update_jitter(self, ts: int, now: float) -> None:
        """RFC 3550 §6.4.1: J += (|D(i-1,i)| - J) / 16, D in timestamp units."""
        if self._jitter_valid:
            ts_delta = ((ts - self._last_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            d = (now - self._last_arrival_ts) * self.clock_rate - ts_delta
            if d < 0:
                d = -d
            j = self.jitter + (d - self.jitter) * 0.0625
            self.jitter = j
            if j > self.jitter_max:
                self.jitter_max = j
        else:
            self._jitter_valid = True
        self._last_ts = ts
        self._last_arrival_ts = now

    def _switch_ssrc(self) -> None:
        self.ssrc_switches += 1
        self._fold_totals()

    def _fold_totals(self) -> None:
        """Keep the current sequence run's expected/lost in the cumulative totals."""
        if not self._probation:
            self._expected_before += self._expected()
            self._lost_before += max(0, self._expected() - self._unique)

    # -- figures ---------------------------------------------------------------------------

    def _expected(self) -> int:
        """A.3 expected packets of the current sequence run."""
        if self._probation:
            return 0
        return self._cycles + self._max_seq - self._base_seq + 1

    @property
    def extended_highest_seq(self) -> int:
        """A.1 extended highest sequence number received (cycles + max_seq)."""
        return self._cycles + self._max_seq

    @property
    def packets_expected(self) -> int:
        """Packets expected over the whole stream, every SSRC included."""
        return self._expected_before + self._expected()

    @property
    def packets_lost(self) -> int:
        """Cumulative packets lost (never negative: duplicates are not counted as received)."""
        current = self._expected() - self._unique if not self._probation else 0
        return self._lost_before + max(0, current)

    @property
    def jitter_ms(self) -> float:
        """Interarrival jitter in milliseconds."""
        return self.jitter * 1000.0 / self.clock_rate

    def close_interval(self, now: float) -> None:
        """Close the one-second metrics interval: rates and fraction lost (A.3) since the last."""
        start = self._int_start
        self._int_start = now
        expected = self._expected()
        exp_int = expected - self._int_expected
        rec_int = self._unique - self._int_unique
        self._int_expected = expected
        self._int_unique = self._unique
        if exp_int > 0:
            self.interval_fraction_lost = max(0, exp_int - rec_int) / exp_int
        elif self.ssrc is not None:
            self.interval_fraction_lost = 0.0
        if start is not None and now > start:
            span = now - start
            self.interval_packets_rate = (self.packets_received - self._int_packets) / span
            self.interval_bytes_rate = (self.bytes_received - self._int_bytes) * 8 / span
        self._int_packets = self.packets_received
        self._int_bytes = self.bytes_received

    def report_block(self) -> tuple[int, int, int, int] | None:
        """Figures of an RTCP report block (§6.4.1) since the previous call, or None.

        Returns ``(fraction_lost 0-255, cumulative_lost, extended_highest_seq,
        jitter in timestamp units)``; ``None`` before the source is validated.
        """
        if self.ssrc is None or self._probation:
            return None
        expected = self._expected()
        exp_int = expected - self._rr_expected
        lost_int = exp_int - (self._unique - self._rr_unique)
        self._rr_expected = expected
        self._rr_unique = self._unique
        fraction = 0 if exp_int <= 0 or lost_int <= 0 else min(255, (lost_int << 8) // exp_int)
        return fraction, self.packets_lost, self.extended_highest_seq, int(self.jitter)


class PySendBase:
    """The send counters the C sender increments (``sipswarm._rtpcore.SendBase`` in Python)."""

    __slots__ = ("bytes_sent", "packets_sent", "send_errors")

    packets_sent: int
    bytes_sent: int
    send_errors: int


if TYPE_CHECKING:
    _SendBase = PySendBase
else:
    _SendBase = PySendBase if core is None else core.SendBase


class RtpSendStats(_SendBase):
    """Counts of one outgoing RTP stream; the engine increments the attributes directly."""

    __slots__ = (
        "_int_bytes",
        "_int_packets",
        "_int_start",
        "interval_bytes_rate",
        "interval_packets_rate",
        "rtcp_rr_sent",
        "rtcp_sr_sent",
    )

    def __init__(self) -> None:
        self.packets_sent = 0
        self.bytes_sent = 0  # whole RTP packets, header included
        self.rtcp_sr_sent = 0
        self.rtcp_rr_sent = 0
        self.send_errors = 0
        self._int_start: float | None = None
        self._int_packets = 0
        self._int_bytes = 0
        self.interval_packets_rate: float | None = None
        self.interval_bytes_rate: float | None = None

    @property
    def octets_sent(self) -> int:
        """Payload octets (the SR sender's octet count, §6.4.1): we send 12-byte headers only."""
        return self.bytes_sent - RTP_HEADER_SIZE * self.packets_sent

    def close_interval(self, now: float) -> None:
        """Close the one-second interval and compute the send rates over it."""
        start = self._int_start
        self._int_start = now
        if start is not None and now > start:
            span = now - start
            self.interval_packets_rate = (self.packets_sent - self._int_packets) / span
            self.interval_bytes_rate = (self.bytes_sent - self._int_bytes) * 8 / span
        self._int_packets = self.packets_sent
        self._int_bytes = self.bytes_sent


if core is None:
    PyRtpReceiveStats: type[RtpReceiveStats] = RtpReceiveStats
    PyRtpSendStats: type[RtpSendStats] = RtpSendStats
else:
    PyRtpReceiveStats = rebase(RtpReceiveStats, PyRecvBase, "PyRtpReceiveStats")
    PyRtpSendStats = rebase(RtpSendStats, PySendBase, "PyRtpSendStats")
PyRtpReceiveStats.__doc__ = "RtpReceiveStats on the pure-Python base, whatever is active."
PyRtpSendStats.__doc__ = "RtpSendStats on the pure-Python base, whatever is active."


@dataclass(slots=True)
class RemoteReport:
    """What the far end said about our stream in its last RTCP report block (§6.4.1)."""

    fraction_lost: float | None = None  # 0.0-1.0, over the peer's last report interval
    packets_lost: int | None = None
    jitter_ms: float | None = None
    rtt_ms: float | None = None
    reports_received: int = 0


@dataclass(slots=True)
class Quality:
    """Local call quality figures (E-model), refreshed every second by the engine."""

    rtt_ms: float | None = None
    r_factor: float | None = None
    mos: float | None = None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def metrics_snapshot(
    send: RtpSendStats, recv: RtpReceiveStats, quality: Quality, remote: RemoteReport
) -> dict[str, dict[str, Any]]:
    """The PROTOCOL.md ``send`` and ``recv`` metric objects plus a ``remote`` object.

    ``fraction_lost`` is a ratio 0.0-1.0 over the last one-second interval;
    ``bytes_*_rate_bps`` are bits per second of whole RTP packets. Keys with no
    value yet are ``None`` (JSON null). ``remote`` holds the far end's view of
    our stream from its RTCP receiver reports.
    """
    has_media = recv.ssrc is not None
    return {
        "send": {
            "packets_sent": send.packets_sent,
            "bytes_sent": send.bytes_sent,
            "packets_sent_rate_ps": _round(send.interval_packets_rate, 2),
            "bytes_sent_rate_bps": _round(send.interval_bytes_rate, 1),
            "rtcp_sr_sent": send.rtcp_sr_sent,
        },
        "recv": {
            "packets_received": recv.packets_received,
            "bytes_received": recv.bytes_received,
            "packets_recv_rate_ps": _round(recv.interval_packets_rate, 2),
            "bytes_recv_rate_bps": _round(recv.interval_bytes_rate, 1),
            "packets_lost": recv.packets_lost if has_media else None,
            "fraction_lost": _round(recv.interval_fraction_lost, 4),
            "jitter_ms": round(recv.jitter_ms, 3) if has_media else None,
            "rtt_ms": _round(quality.rtt_ms, 3),
            "duplicate_packets": recv.duplicate_packets,
            "out_of_order_packets": recv.out_of_order_packets,
            "sequence_number_gaps": recv.sequence_number_gaps,
            "ssrc_switches": recv.ssrc_switches,
            "r_factor": _round(quality.r_factor, 2),
            "mos": _round(quality.mos, 2),
        },
        "remote": {
            "packets_lost": remote.packets_lost,
            "fraction_lost": _round(remote.fraction_lost, 4),
            "jitter_ms": _round(remote.jitter_ms, 3),
            "rtt_ms": _round(remote.rtt_ms, 3),
        },
    }
