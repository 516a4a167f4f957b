"""RFC 4733 DTMF on a running RTP session: plays a planned digit sequence in place of audio.

:class:`~sipswarm.media.dtmf.DtmfSender` plans the packets (payload, timestamp
offset, marker, send time relative to the start). :class:`DtmfPlayback` maps
that plan onto the session's media clock: the session asks, at every frame
slot, which event packets are due (:meth:`DtmfPlayback.due`); those go out
instead of the audio frame, with the stream's SSRC and next sequence numbers
and the event's own timestamp (RFC 4733 §2.1, §2.5.1). Between digits (the
gap) the slot carries audio again.
"""

from __future__ import annotations

from collections.abc import Callable

from sipswarm.media.dtmf import DtmfPacket
from sipswarm.media.rtp import RtpPacketWriter
from sipswarm.media.stats import RtpSendStats


class DtmfPlayback:
    """The packets of one ``send_dtmf`` call, released frame slot by frame slot.

    ``start_index`` is the frame index of the first slot, ``start_timestamp``
    the audio RTP timestamp of that slot (the events' timestamps are offsets
    from it), ``ptime_ms`` the slot length.
    """

    __slots__ = ("_plan", "_pos", "payload_type", "ptime_ms", "start_index", "start_timestamp")

    def __init__(
        self,
        plan: list[DtmfPacket],
        start_index: int,
        start_timestamp: int,
        ptime_ms: int,
        payload_type: int,
    ) -> None:
        self.payload_type = payload_type
        self._plan = plan
        self._pos = 0
        self.start_index = start_index
        self.start_timestamp = start_timestamp
        self.ptime_ms = ptime_ms

    @property
    def finished(self) -> bool:
        """True once every planned packet has been handed out."""
        return self._pos >= len(self._plan)

    def due(self, index: int) -> list[DtmfPacket]:
        """Packets whose send time has come by frame slot ``index`` (empty in a gap)."""
        elapsed_ms = (index - self.start_index) * self.ptime_ms
        plan, pos = self._plan, self._pos
        end = pos
        while end < len(plan) and plan[end].send_offset_ms <= elapsed_ms:
            end += 1
        self._pos = end
        return plan[pos:end]

    def send(
        self,
        due: list[DtmfPacket],
        writer: RtpPacketWriter,
        send: Callable[[bytes], int],
        stats: RtpSendStats,
    ) -> int:
        """Send ``due`` (from :meth:`due`) in place of one audio frame; return packets sent.

        Each takes the stream's next sequence number (RFC 4733 §2.1); the audio
        timestamp moves on by the one frame the slot replaced. A failed send
        (socket buffer full) is counted in ``send_errors``, as for audio.
        """
        sent = 0
        for pkt in due:
            packet = writer.write_event(
                pkt.payload,
                self.payload_type,
                self.start_timestamp + pkt.timestamp_offset,
                pkt.marker,
            )
            try:
                send(packet)
            except OSError:
                stats.send_errors += 1
                continue
            stats.packets_sent += 1
            stats.bytes_sent += len(packet)
            sent += 1
        writer.advance_timestamp(1)
        return sent
