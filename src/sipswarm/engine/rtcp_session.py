"""The RTCP side of one :class:`~sipswarm.engine.rtp_session.RtpSession` (RFC 3550 §6).

Theory of operation
-------------------
An :class:`RtcpReporter` belongs to one session and holds everything RTCP
needs beyond the RTP streams: the last SR heard (LSR and when, for DLSR),
the average compound packet size, the session's RTCP bandwidth and the
timer of the next report. The session calls it at four points::

    reporter.receive(data)       every RTCP datagram (own socket, or muxed on RTP)
    reporter.schedule(initial)   after the first start: reports at the A.7 interval
    reporter.report_blocks()     our view of the peer's stream (also for the BYE)
    reporter.cancel()            on stop, before the BYE

Reports are an SR when we sent RTP since the last report (§6.4), else an RR,
each with one report block about the peer's stream and our CNAME. RTT comes
from the LSR/DLSR of the peer's report block about our stream (§6.4.1); the
peer's loss and jitter become the session's ``remote`` figures. Datagrams go
out through the session (``send_rtcp``), which knows the socket and, with
SRTP, protects them first.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import TYPE_CHECKING, Final

from sipswarm.media.rtcp import (
    ReportBlock,
    SenderInfo,
    build_receiver_report,
    build_sender_report,
    ntp_from_unix,
    ntp_middle32,
    parse_rtcp,
    rtcp_interval,
    rtt_seconds,
)

if TYPE_CHECKING:
    from sipswarm.engine.rtp_session import RtpSession

__all__ = ["IP_UDP_OVERHEAD", "RTCP_BW_FRACTION", "RtcpReporter"]

#: RTCP bandwidth share (RFC 3550 §6.2); the session bandwidth is estimated as one payload
#: octet per timestamp unit (exact for G.711) plus RTP/UDP/IP headers.
RTCP_BW_FRACTION: Final = 0.05
IP_UDP_OVERHEAD: Final = 28


class RtcpReporter:
    """RTCP reports of one session. Built by the session; see the module docstring."""

    def __init__(self, session: RtpSession, step: int, ptime_ms: int) -> None:
        # a weak proxy: the session owns this reporter, a strong reference back would be a
        # cycle that only the cyclic collector frees (a pause in a shard with calls up)
        self._session: RtpSession = weakref.proxy(session)
        self.received = 0
        self.invalid = 0
        self.remote_bye = False
        self._lsr = 0
        self._lsr_at = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._packets_at_report = 0
        self.avg_rtcp_size = 128.0
        # RFC 3550 §6.2: RTCP gets 5 % of the session bandwidth (RTP packets with IP/UDP)
        pkt_bits = (step + 12 + IP_UDP_OVERHEAD) * 8
        self._rtcp_bw = pkt_bits * (1000 / ptime_ms) * RTCP_BW_FRACTION

    @property
    def scheduled(self) -> bool:
        """True while a report is pending on the event loop."""
        return self._handle is not None

    def receive(self, data: bytes) -> None:
        """One (plain) RTCP compound packet from the peer; invalid ones are counted."""
        report = parse_rtcp(data)
        if report is None:
            self.invalid += 1
            return
        self.received += 1
        self.avg_rtcp_size += (len(data) + IP_UDP_OVERHEAD - self.avg_rtcp_size) / 16
        if report.sender_info is not None:
            self._lsr = ntp_middle32(report.sender_info.ntp_ts)
            self._lsr_at = time.monotonic()
        ssrc = self._session.ssrc
        for block in report.blocks:
            if block.ssrc == ssrc:
                self._apply_remote_block(block)
        if report.bye:
            self.remote_bye = True

    def _apply_remote_block(self, block: ReportBlock) -> None:
        """The peer's view of our stream (§6.4.1) and the RTT from its LSR/DLSR."""
        s = self._session
        rtt = rtt_seconds(ntp_middle32(ntp_from_unix(time.time())), block.lsr, block.dlsr)
        remote = s.remote
        remote.reports_received += 1
        remote.fraction_lost = block.fraction_lost / 256
        remote.packets_lost = block.cumulative_lost
        remote.jitter_ms = block.jitter * 1000 / s.codec.rtp_clock_rate
        if rtt is not None:
            remote.rtt_ms = rtt * 1000
            s.quality.rtt_ms = rtt * 1000

    def report_blocks(self) -> list[ReportBlock]:
        """Our report block about the peer's stream; empty before it was heard."""
        recv = self._session.recv_stats
        figures = recv.report_block()
        ssrc = recv.ssrc
        if figures is None or ssrc is None:
            return []
        fraction, lost, highest, jitter = figures
        dlsr = int((time.monotonic() - self._lsr_at) * 65536) if self._lsr else 0
        return [
            ReportBlock(
                ssrc=ssrc,
                fraction_lost=fraction,
                cumulative_lost=min(lost, 0x7FFFFF),
                highest_seq=highest & 0xFFFFFFFF,
                jitter=jitter & 0xFFFFFFFF,
                lsr=self._lsr,
                dlsr=dlsr & 0xFFFFFFFF,
            )
        ]

    def build_report(self) -> bytes:
        """An SR if we sent RTP since the last report (§6.4), else an RR."""
        s = self._session
        stats = s.send_stats
        blocks = self.report_blocks()
        if stats.packets_sent > self._packets_at_report:
            self._packets_at_report = stats.packets_sent
            now = time.monotonic()
            info = SenderInfo(
                ntp_ts=ntp_from_unix(now + s.wall_offset),
                rtp_ts=s.rtp_timestamp_at(now) & 0xFFFFFFFF,
                packet_count=stats.packets_sent,
                octet_count=stats.octets_sent,
            )
            stats.rtcp_sr_sent += 1
            return build_sender_report(s.ssrc, info, blocks, s.cname)
        stats.rtcp_rr_sent += 1
        return build_receiver_report(s.ssrc, blocks, s.cname)

    def _on_timer(self) -> None:
        self._handle = None
        if not self._session.started:
            return
        self._session.send_rtcp(self.build_report())
        self.schedule(initial=False)

    def schedule(self, initial: bool) -> None:
        """RFC 3550 A.7 interval, two members, with the random factor drawn here (engine)."""
        s = self._session
        sending = s.sending
        senders = int(sending) + int(s.recv_stats.ssrc is not None)
        interval = rtcp_interval(
            members=2,
            senders=max(senders, 1),
            rtcp_bw_bps=self._rtcp_bw,
            we_sent=sending,
            avg_rtcp_size=self.avg_rtcp_size,
            initial=initial,
            rand_factor=s.rand.uniform(0.5, 1.5),
        )
        self._handle = s.loop.call_later(interval, self._on_timer)

    def cancel(self) -> None:
        """Cancel the pending report (the session is stopping)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
