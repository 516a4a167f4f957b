"""One call leg's media: an RTP socket (plus RTCP unless muxed) fed by the media clock.

Theory of operation
-------------------
:class:`RtpSession` is created by :meth:`MediaEngine.open_session
<sipswarm.engine.media_engine.MediaEngine.open_session>` with its ports
already bound, so the SDP offer can name them. :meth:`RtpSession.start`
(after the answer) sets the remote addresses and joins the process's single
:class:`~sipswarm.engine.media_clock.MediaClock`, which calls
``_send_frame`` once per ptime in the session's slot: the next encoded frame
of the source goes out behind a header from
:class:`~sipswarm.media.rtp.RtpPacketWriter`. Received datagrams go straight
into :class:`~sipswarm.media.stats.RtpReceiveStats` with a monotonic arrival
time. While the session is plain and connected both run in C
(:mod:`sipswarm.engine.rtp_fastpath`); this module is the general path.

RTCP (RFC 3550 §6) is the session's
:class:`~sipswarm.engine.rtcp_session.RtcpReporter`: SR or RR at the
randomised A.7 interval, RTT from LSR/DLSR, the peer's view of our stream as
the ``remote`` figures. With rtcp-mux (RFC 5761) RTCP shares the RTP socket
and is told apart by :func:`~sipswarm.media.rtcp.is_rtcp`.
:meth:`RtpSession.stop` sends a BYE (§6.6) and returns the ports.

Once per second (a chore on the media clock, spread over the second) the
session closes its metrics interval and rates the call with the E-model. The
one-way delay fed to it is ``RTT/2 + ptime + jitter buffer``, where the jitter
buffer is estimated as ``max(ptime, 2 * jitter)``, an adaptive buffer sized to
absorb twice the measured interarrival jitter; the loss is that of the last
second.

Symmetric RTP: by default we send to the address in the peer's SDP and do not
latch. ``start(..., latch=True)`` switches the destination once to the source
address of the first valid RTP packet from elsewhere (RFC 4961 symmetric RTP,
for peers behind NAT); it is off by default because a load generator must
not be steered by whoever can reach its ports.

Connected sockets: once the first valid RTP packet arrives *from* the address
we send to (the peer is symmetric, RFC 4961), or from the address we latch
on, the RTP socket is ``connect()``-ed to it: ``send``/``recv`` from then on
(no per-packet address conversion or route lookup), and the kernel drops
datagrams from any other source before we count them. An asymmetric peer
(media from another port than its SDP names) keeps the socket unconnected
and every source is read and counted. A re-``start`` to a new remote
dissolves the association (:func:`~sipswarm.engine.ports.disconnect_udp`).

SRTP (RFC 3711): ``start(..., srtp=ctx)`` with an
:class:`~sipswarm.engine.srtp.SrtpContext` puts libsrtp on both paths: the
socket-level sender (``_send_raw``) is wrapped once in ``_send_protected``
and received datagrams take the general path, unprotected before anything
else looks at them; RTCP is protected as SRTCP. Without a context nothing
on the hot path changes (no per-packet test). Byte counts are of RTP
packets, SRTP auth tags excluded, so the SR octet count stays right.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from sipswarm._native import core
from sipswarm.engine.media_clock import MediaClock
from sipswarm.engine.ports import PortAllocation, disconnect_udp, set_dscp
from sipswarm.engine.rtcp_session import IP_UDP_OVERHEAD, RTCP_BW_FRACTION, RtcpReporter
from sipswarm.engine.rtp_dtmf import DtmfPlayback
from sipswarm.engine.rtp_fastpath import FastPath, hot_path_classes
from sipswarm.engine.rtp_state import TRANSITIONS, FrameSource, MediaCodec, SessionState
from sipswarm.engine.srtp import LibSrtpError, SrtpContext
from sipswarm.errors import ConfigError, InvalidState
from sipswarm.media.dtmf import DtmfEvent, DtmfReceiver, DtmfSender
from sipswarm.media.emodel import impairment_for, mos_from_r, r_factor
from sipswarm.media.rtcp import build_bye, is_rtcp
from sipswarm.media.rtp import parse_rtp_header
from sipswarm.media.stats import Quality, RemoteReport, metrics_snapshot

if TYPE_CHECKING:
    from sipswarm._rtpcore import Poller

Address = tuple[str, int]
_monotonic = time.monotonic

__all__ = [
    "IP_UDP_OVERHEAD",
    "RECV_SIZE",
    "RTCP_BW_FRACTION",
    "TRANSITIONS",
    "FrameSource",
    "MediaCodec",
    "RtpSession",
    "SessionState",
]


def _discard(data: bytes) -> int:
    """Where packets go before the socket is read or after the session stopped."""
    return 0


#: Largest datagram read; anything longer is truncated and then rejected by the parsers.
RECV_SIZE: Final = 2048


class RtpSession:
    """The media of one call leg. Build through ``MediaEngine.open_session``.

    Then: read :attr:`local_port` for the SDP, :meth:`start` when the answer
    is known, :meth:`snapshot` once per metrics interval, :meth:`stop` when
    the call ends. :attr:`first_rtp_ts` is the wall-clock time (epoch ms) of
    the first RTP packet received, for the ``call`` item's ``ttfm_ms``.
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        clock: MediaClock,
        alloc: PortAllocation,
        codec: MediaCodec,
        ptime_ms: int,
        source: FrameSource,
        ssrc: int,
        cname: str,
        rand: random.Random,
        poller: Poller | None = None,
    ) -> None:
        """``poller``: the engine's C poller; given, the session uses the C hot path."""
        self.loop = loop
        self._clock = clock
        self._alloc = alloc
        self.codec = codec
        self.ptime_ms = ptime_ms
        self._frame = source.frame
        self.ssrc = ssrc
        self.cname = cname
        self.rand = rand
        self.state = SessionState.OPEN
        rate = codec.rtp_clock_rate
        self._step = ptime_ms * rate // 1000
        self.native = poller is not None and core is not None
        writer_cls, send_cls, recv_cls = hot_path_classes(self.native)
        self._writer = writer_cls(
            ssrc=ssrc,
            payload_type=codec.payload_type,
            sequence=rand.getrandbits(16),  # RFC 3550 §5.1: random initial values
            timestamp=rand.getrandbits(32),
            timestamp_step=self._step,
        )
        self.send_stats = send_cls()
        self.recv_stats = recv_cls(rate)
        self.quality = Quality()
        self.remote = RemoteReport()
        self.socket_errors = 0
        self._fast = FastPath(loop, poller, self._writer, self.send_stats, self._send_frame, source)
        self._tx = self._fast.tx
        self._clock_cb = self._fast.clock_cb
        self._sending = False
        self._paused_at: float | None = None
        self._rtp_sock: socket.socket | None = None
        self._rtcp_sock: socket.socket | None = None
        self._write = self._writer.write
        self._send: Callable[[bytes], int] = _discard
        self._send_raw: Callable[[bytes], int] = _discard
        self.srtp: SrtpContext | None = None
        self._connected = False
        self._plain = True
        self._dtmf_pt = -1
        self._dtmf_playback: DtmfPlayback | None = None
        self._dtmf_receiver = DtmfReceiver()
        self.dtmf_packets_sent = 0
        self._remote_rtp: Address | None = None
        self._remote_rtcp: Address | None = None
        self._mux = False
        self._latch = False
        self.rtcp = RtcpReporter(self, self._step, ptime_ms)
        self.wall_offset = time.time() - time.monotonic()
        try:
            impairment_for(codec.name)
            self._rated = True
        except ConfigError:
            self._rated = False  # no E-model values for this codec: r_factor/mos stay null

    # -- set-up ----------------------------------------------------------------------------

    def open_sockets(self, dscp: int | None) -> None:
        """Start reading the bound sockets on the event loop (called by the engine).

        The sockets are used directly (``loop.add_reader``, ``sock.sendto`` and,
        once connected, ``sock.send``; see the module docstring),
        not through asyncio transports: measured on this machine, a transport's
        ``sendto`` costs ~1 µs more per packet, and its reader drains each
        socket until EAGAIN, one extra ``recvmsg`` per packet at 50 packets/s
        per socket. The loop's poller is level-triggered, so one read per
        readiness event loses nothing.
        """
        rtp_sock = self._alloc.rtp_sock
        rtcp_sock = self._alloc.rtcp_sock
        if dscp is not None:
            set_dscp(rtp_sock, dscp)
            if rtcp_sock is not None:
                set_dscp(rtcp_sock, dscp)
        self.loop.add_reader(rtp_sock.fileno(), self._on_rtp_readable)
        self._rtp_sock = rtp_sock
        if rtcp_sock is not None:
            self.loop.add_reader(rtcp_sock.fileno(), self._on_rtcp_readable)
            self._rtcp_sock = rtcp_sock

    @property
    def allocation(self) -> PortAllocation:
        """The port pair and sockets (the engine returns them to the pool after ``stop``)."""
        return self._alloc

    @property
    def local_port(self) -> int:
        """The RTP port for the SDP m= line."""
        return self._alloc.port

    @property
    def local_rtcp_port(self) -> int:
        """The RTCP port (RTP port + 1; the RTP port itself once rtcp-mux is on)."""
        return self._alloc.port if self._mux else self._alloc.rtcp_port

    @property
    def first_rtp_ts(self) -> int | None:
        """Epoch milliseconds of the first RTP packet received, None before it."""
        first = self.recv_stats.first_arrival
        return None if first is None else round((first + self.wall_offset) * 1000)

    def _transition(self, action: str) -> None:
        nxt = TRANSITIONS.get((self.state, action))
        if nxt is None:
            raise InvalidState(f"RtpSession cannot {action} in state {self.state.value}")
        self.state = nxt

    def start(
        self,
        remote_addr: Address,
        remote_rtcp_addr: Address | None,
        payload_type: int | None = None,
        *,
        rtcp_mux: bool = False,
        send: bool = True,
        latch: bool = False,
        dtmf_payload_type: int | None = None,
        srtp: SrtpContext | None = None,
    ) -> None:
        """Send to ``remote_addr`` (RTCP to ``remote_rtcp_addr``, default port + 1) and receive.

        ``payload_type`` is the one the answer chose (defaults to the codec's);
        ``rtcp_mux`` when both sides agreed on a=rtcp-mux; ``send=False`` for
        recvonly/inactive (hold); ``dtmf_payload_type`` the negotiated
        telephone-event type (RFC 4733), enabling :meth:`send_dtmf` and
        :meth:`dtmf_events_received`; ``srtp`` the SDES-keyed context when SRTP
        was negotiated (module docstring). Calling it again (re-INVITE) updates all of it.
        """
        self._transition("start")
        if payload_type is not None:
            self._writer.set_payload_type(payload_type)
        if remote_addr != self._remote_rtp or latch:
            self._disconnect()  # a new peer (or one to latch on) must prove its source again
        self._remote_rtp = remote_addr
        self._mux = rtcp_mux
        if rtcp_mux:
            self._remote_rtcp = remote_addr
            self._close_rtcp_socket()  # the port pair stays reserved in the pool
        else:
            self._remote_rtcp = remote_rtcp_addr or (remote_addr[0], remote_addr[1] + 1)
        self._latch = latch
        self.srtp = srtp
        self._plain = not rtcp_mux and srtp is None
        if self._connected:
            self._set_sender(self._send_raw)
        else:
            self._set_sender(self._send_unconnected if self._rtp_sock is not None else _discard)
        self._dtmf_pt = -1 if dtmf_payload_type is None else dtmf_payload_type
        self._fast.resolve_source()  # a switchable source now points at the answer's codec
        self.set_sending(send)
        self._refresh_fast_paths()
        if not self.rtcp.scheduled:
            self.rtcp.schedule(initial=True)

    def set_sending(self, send: bool) -> None:
        """Start or pause sending RTP (hold) without touching reception or RTCP."""
        if send == self._sending:
            return
        self._sending = send
        if send:
            if self._paused_at is not None:
                # the timestamp keeps counting sampling time through the pause (§5.1)
                frames = int((time.monotonic() - self._paused_at) * 1000 / self.ptime_ms)
                self._writer.advance_timestamp(frames)
                self._writer.mark_next()
                self._paused_at = None
            self._clock.add(self._clock_cb, self.ptime_ms)
        else:
            self._clock.remove(self._clock_cb)
            self._paused_at = time.monotonic()

    # -- hot path --------------------------------------------------------------------------

    def _send_frame(self, due: float) -> None:
        """Media clock callback: send the next frame, scheduled for ``due``.

        On the C path the clock calls the session's ``Sender``, which does the
        same for a plain session and calls this method otherwise.
        """
        tx = self._tx
        index = tx.frame_index
        tx.frame_index = index + 1
        if self._dtmf_playback is not None and self._send_dtmf_slot(index):
            tx.last_due = due
            return
        packet = self._write(self._frame(index))
        try:
            self._send(packet)
        except OSError:  # socket buffer full (a real NIC drops too), ICMP error: count it
            self.send_stats.send_errors += 1
            return
        stats = self.send_stats
        stats.packets_sent += 1
        stats.bytes_sent += len(packet)
        tx.last_due = due

    def _send_unconnected(self, packet: bytes) -> int:
        """Before the socket is connected: address every packet."""
        sock = self._rtp_sock
        if sock is None or self._remote_rtp is None:
            return 0
        return sock.sendto(packet, self._remote_rtp)

    def _set_sender(self, send: Callable[[bytes], int]) -> None:
        """Where packets go; wrapped once in SRTP protection when a context is set."""
        self._send_raw = send
        self._send = send if self.srtp is None else self._send_protected

    def _send_protected(self, packet: bytes) -> int:
        srtp = self.srtp
        assert srtp is not None
        try:
            wire = srtp.protect_rtp(packet)
        except LibSrtpError:  # libsrtp refuses only malformed packets; ours are not
            srtp.errors += 1
            return 0
        self._send_raw(wire)
        return len(packet)

    def _on_rtp_readable(self) -> None:
        """One datagram per readiness event (the poller is level-triggered)."""
        sock = self._rtp_sock
        if sock is None:
            return
        try:
            if self._connected:
                data = sock.recv(RECV_SIZE)
                if self._plain:
                    if len(data) > 1 and data[1] & 0x7F == self._dtmf_pt:
                        self._on_dtmf(data)
                    else:
                        self.recv_stats.receive_rtp(data, _monotonic())
                    return
                addr = self._remote_rtp
            else:
                data, addr = sock.recvfrom(RECV_SIZE)
        except OSError:  # EAGAIN after a spurious wake-up, or an ICMP error report
            self.socket_errors += 1
            return
        self._on_rtp(data, addr)  # type: ignore[arg-type]

    def _on_rtcp_readable(self) -> None:
        sock = self._rtcp_sock
        if sock is None:
            return
        try:
            data = sock.recv(RECV_SIZE)
        except OSError:
            self.socket_errors += 1
            return
        self._on_rtcp(data)

    def _close_rtcp_socket(self) -> None:
        if self._rtcp_sock is not None:
            self.loop.remove_reader(self._rtcp_sock.fileno())
            self._rtcp_sock = None
            self._alloc.close_rtcp()

    def _on_rtp(self, data: bytes, addr: Address) -> None:
        if self._mux and is_rtcp(data):
            self._on_rtcp(data)
            return
        if self.srtp is not None:
            plain = self.srtp.unprotect_rtp(data)
            if plain is None:
                return  # counted by the context: auth failure, replay or garbage
            data = plain
        if len(data) > 1 and data[1] & 0x7F == self._dtmf_pt:
            self._on_dtmf(data)
            return
        pt = self.recv_stats.receive_rtp(data, _monotonic())
        if pt < 0 or self._connected:
            return
        if addr == self._remote_rtp:
            self._connect(addr)  # the peer sends from where we send to: symmetric (RFC 4961)
        elif self._latch:
            self._remote_rtp = addr  # RFC 4961 symmetric RTP, once
            self._latch = False
            self._connect(addr)

    def _connect(self, addr: Address) -> None:
        """Connect the RTP socket to ``addr``: ``send``/``recv`` from now on (module docstring)."""
        sock = self._rtp_sock
        if sock is None or self.state is not SessionState.STARTED:
            return
        try:
            sock.connect(addr)
        except OSError:
            self.socket_errors += 1
            return
        self._connected = True
        self._set_sender(sock.send)
        self._refresh_fast_paths()

    def _disconnect(self) -> None:
        """Dissolve the socket's association (back to ``sendto``/``recvfrom``, every source)."""
        if not self._connected:
            return
        self._connected = False
        sock = self._rtp_sock
        if sock is not None:
            try:
                disconnect_udp(sock)
            except OSError:
                self.socket_errors += 1
            self._set_sender(self._send_unconnected)
        self._refresh_fast_paths()

    def _refresh_fast_paths(self) -> None:
        """The socket to C while plain (rtcp-mux: RTCP must reach Python), back otherwise."""
        live = self._connected and self.state is SessionState.STARTED
        self._fast.update(
            self._rtp_sock,
            send_plain=live and self.srtp is None and self._dtmf_playback is None,
            recv_plain=live and self._plain,
            stats=self.recv_stats,
            dtmf_pt=self._dtmf_pt,
            on_dtmf=self._on_dtmf,
            on_error=self._on_poll_error,
            on_readable=self._on_rtp_readable,
        )

    def _on_poll_error(self) -> None:
        """The C poller's recv failed (EAGAIN after a spurious wake-up, an ICMP error)."""
        self.socket_errors += 1

    # -- DTMF (RFC 4733) --------------------------------------------------------------------

    def send_dtmf(self, digits: str, duration_ms: int = 100, gap_ms: int = 100) -> None:
        """Send ``digits`` as RFC 4733 events from the next frame slot, in place of audio.

        Needs ``dtmf_payload_type`` in :meth:`start`; raises InvalidState
        without it and ConfigError for digits outside 0-9 * # A-D.
        """
        if self._dtmf_pt < 0:
            raise InvalidState(
                "send_dtmf needs a negotiated telephone-event payload type: "
                "pass dtmf_payload_type to RtpSession.start"
            )
        sender = DtmfSender(self.codec.rtp_clock_rate, self.ptime_ms, duration_ms, gap_ms)
        plan = sender.packets(digits)
        self._dtmf_playback = DtmfPlayback(
            plan, self._tx.frame_index, self._writer.timestamp, self.ptime_ms, self._dtmf_pt
        )
        self._refresh_fast_paths()

    def dtmf_events_received(self) -> list[DtmfEvent]:
        """Key presses received since the last call, each once (retransmissions dropped)."""
        return self._dtmf_receiver.events_received()

    def _send_dtmf_slot(self, index: int) -> bool:
        """Send the event packets due in slot ``index``; False when the slot carries audio."""
        playback = self._dtmf_playback
        assert playback is not None
        due = playback.due(index)
        if playback.finished:
            self._dtmf_playback = None
            self._refresh_fast_paths()
        if not due:
            return False
        self.dtmf_packets_sent += playback.send(due, self._writer, self._send, self.send_stats)
        return True

    def _on_dtmf(self, data: bytes) -> None:
        """A telephone-event packet: counted in the stream, no jitter sample, to the receiver."""
        hdr = parse_rtp_header(data)
        if hdr is None:
            self.recv_stats.invalid_packets += 1
            return
        self.recv_stats.receive_header(hdr, len(data), _monotonic(), False)
        end = hdr.payload_offset + hdr.payload_length
        self._dtmf_receiver.receive(data[hdr.payload_offset : end], hdr.timestamp)

    # -- RTCP (the reports themselves are in sipswarm.engine.rtcp_session) --------------

    @property
    def started(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self.state is SessionState.STARTED

    @property
    def sending(self) -> bool:
        """True while RTP is sent (started and not on hold)."""
        return self._sending

    @property
    def rtcp_received(self) -> int:
        """Valid RTCP compound packets received."""
        return self.rtcp.received

    @property
    def rtcp_invalid(self) -> int:
        """RTCP datagrams that did not parse (counted, dropped)."""
        return self.rtcp.invalid

    @property
    def remote_bye(self) -> bool:
        """True once the peer sent an RTCP BYE."""
        return self.rtcp.remote_bye

    def rtp_timestamp_at(self, now: float) -> int:
        """RTP timestamp of monotonic ``now``: the last frame's plus the time since it was due."""
        last_ts = self._writer.timestamp - self._step
        return last_ts + int((now - self._tx.last_due) * self.codec.rtp_clock_rate)

    def _on_rtcp(self, data: bytes) -> None:
        if self.srtp is not None:
            plain = self.srtp.unprotect_rtcp(data)
            if plain is None:
                return
            data = plain
        self.rtcp.receive(data)

    def send_rtcp(self, data: bytes) -> None:
        """Send one RTCP compound packet to the peer's RTCP address (muxed: the RTP socket)."""
        sock = self._rtp_sock if self._mux else self._rtcp_sock
        if sock is None or self._remote_rtcp is None:
            return
        wire = data
        if self.srtp is not None:
            try:
                wire = self.srtp.protect_rtcp(data)
            except LibSrtpError:
                self.srtp.errors += 1
                return
        try:
            sock.sendto(wire, self._remote_rtcp)
        except OSError:
            self.socket_errors += 1
            return
        # RFC 3550 6.3.3/A.7: our own reports count in the average compound size too
        self.rtcp.avg_rtcp_size += (len(data) + IP_UDP_OVERHEAD - self.rtcp.avg_rtcp_size) / 16

    # -- per second and teardown -----------------------------------------------------------

    def tick_second(self, now: float) -> None:
        """Close the one-second interval and rate the call (E-model, G.107)."""
        self.send_stats.close_interval(now)
        recv = self.recv_stats
        recv.close_interval(now)
        loss = recv.interval_fraction_lost
        if not self._rated or loss is None:
            return
        rtt = self.quality.rtt_ms
        jitter_buffer = max(float(self.ptime_ms), 2 * recv.jitter_ms)
        delay = (rtt / 2 if rtt is not None else 0.0) + self.ptime_ms + jitter_buffer
        r = r_factor(self.codec.name, loss * 100, delay)
        self.quality.r_factor = r
        self.quality.mos = mos_from_r(r)

    def snapshot(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """PROTOCOL.md ``send``/``recv`` metric objects plus ``remote`` (the peer's RR view).

        ``now`` is accepted for symmetry with the cores; the figures are those
        of the last closed one-second interval.
        """
        snap = metrics_snapshot(self.send_stats, self.recv_stats, self.quality, self.remote)
        if self.srtp is not None:
            snap["recv"].update(self.srtp.metrics())  # worker extension (docs/protocol.md)
        return snap

    def stop(self, reason: str | None = None) -> None:
        """Stop sending, send an RTCP BYE (§6.6) if media was started, close the sockets.

        Idempotent. The engine then closes the sockets and returns the pair to the pool.
        """
        was = self.state
        self._transition("stop")
        if was is SessionState.STOPPED:
            return
        self._clock.remove(self._clock_cb)
        self._sending = False
        self.rtcp.cancel()
        if was is SessionState.STARTED:
            bye = build_bye(self.ssrc, reason, cname=self.cname, blocks=self.rtcp.report_blocks())
            self.send_rtcp(bye)
        self._close_rtcp_socket()
        if self._rtp_sock is not None:
            self._fast.release(self._rtp_sock)
            self._rtp_sock = None
        self._connected = False
        self._set_sender(_discard)
        # nothing bound to this session stays on it (no cycle: refcounting frees it)
        self._send = self._send_raw = _discard
        self._fast.detach()
        self._tx, self._clock_cb = self._fast.tx, self._fast.clock_cb
