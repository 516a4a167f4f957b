"""Which of an RTP session's per-packet paths run in C, and moving its socket between them.

Theory of operation
-------------------
With the extension active (:data:`sipswarm._native.NATIVE`) every
:class:`~sipswarm.engine.rtp_session.RtpSession` has a :class:`FastPath`:

* Send: the clock calls a ``sipswarm._rtpcore.Sender`` instead of the
  session's ``_send_frame``. While ``Sender.fd`` is a socket (connected, no
  SRTP, no DTMF playing, frames in one buffer) it builds the header and sends
  in C; otherwise it calls ``_send_frame``. The frame index and the last
  schedule live in the sender and both paths use them (``tx``).
* Receive: while the socket is connected and plain (no SRTP, no rtcp-mux) it
  is read by the engine's one ``Poller`` (an epoll the loop watches) and fed
  to the C receive statistics; otherwise it is the loop's own reader again.

The session calls :meth:`FastPath.update` whenever one of those conditions
may have changed (connect, disconnect, start, DTMF playback start and end)
and :meth:`FastPath.release` before its socket closes. On the Python path
(no poller) ``tx`` is a :class:`PySendState` and nothing moves.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from sipswarm._native import core
from sipswarm.engine.rtp_state import FrameSource
from sipswarm.media.rtp import PyRtpPacketWriter, RtpPacketWriter
from sipswarm.media.stats import PyRtpReceiveStats, PyRtpSendStats, RtpReceiveStats, RtpSendStats

if TYPE_CHECKING:
    from sipswarm._rtpcore import Poller, RecvBase

__all__ = ["FastPath", "PySendState", "contiguous_frames", "hot_path_classes"]


def hot_path_classes(
    native: bool,
) -> tuple[type[RtpPacketWriter], type[RtpSendStats], type[RtpReceiveStats]]:
    """Writer, send and receive statistics classes: C bases when ``native``, else Python."""
    if native:
        return RtpPacketWriter, RtpSendStats, RtpReceiveStats
    return PyRtpPacketWriter, PyRtpSendStats, PyRtpReceiveStats


class PySendState:
    """The frame index and last schedule on the pure-Python path (``Sender``'s fields)."""

    __slots__ = ("fd", "frame_index", "last_due")

    def __init__(self) -> None:
        self.fd = -1  # unused on this path
        self.frame_index = 0
        self.last_due = 0.0


def contiguous_frames(source: FrameSource) -> tuple[bytes, int, int] | None:
    """``(buffer, frame_bytes, frames)`` when every frame is a fixed slice of one buffer.

    What the C sender needs to slice frames itself: a source that keeps its
    frames in one buffer says so through ``contiguous()``
    (``media.sources.EncodedSource``, and ``engine.switchable.SwitchableSource``
    for the source it points at now). Anything else (Opus, a test's own
    source) returns None and is sent through ``source.frame()``. The layout is
    checked against the source's ``frame()`` on the first and last frame, so a
    source cannot be misread.
    """
    contiguous = getattr(source, "contiguous", None)
    layout = contiguous() if contiguous is not None else None
    if layout is None:
        return None
    buffer, size, frames = layout
    if size <= 0 or frames <= 0 or len(buffer) != size * frames:
        return None
    last = (frames - 1) * size
    if source.frame(0) != buffer[:size] or source.frame(frames - 1) != buffer[last:]:
        return None
    return buffer, size, frames


def _stopped(due: float) -> None:
    """A stopped session's clock callback (it is off the clock already)."""


class FastPath:
    """One session's C sender and poller registration; see the module docstring."""

    __slots__ = ("_contiguous", "_loop", "_poller", "_source", "clock_cb", "polled", "tx")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        poller: Poller | None,
        writer: RtpPacketWriter,
        send_stats: RtpSendStats,
        send_frame: Callable[[float], None],
        source: FrameSource,
    ) -> None:
        self._loop = loop
        self._poller = poller
        self._source = source
        self._contiguous = False
        self.polled = False
        #: Frame index and last schedule (``Sender`` or :class:`PySendState`).
        self.tx: Any = PySendState()
        #: What the media clock calls once per ptime.
        self.clock_cb: Callable[[float], None] = send_frame
        if poller is not None and core is not None:
            self.tx = self.clock_cb = core.Sender(writer, send_stats, send_frame)
            self.resolve_source()

    def resolve_source(self) -> None:
        """Give the C sender the source's buffer as it is now (call at every session start).

        A switchable source is pointed at the negotiated codec just before
        ``start``; until this runs again the C sender keeps the buffer it has.
        """
        if self._poller is None:
            return
        frames = contiguous_frames(self._source)
        self._contiguous = frames is not None and bool(self.tx.set_source(*frames))
        if not self._contiguous:
            self.tx.set_source(None, 0, 0)
            self.tx.fd = -1

    @property
    def native(self) -> bool:
        """True when this session runs the C path."""
        return self._poller is not None

    def update(
        self,
        sock: socket.socket | None,
        *,
        send_plain: bool,
        recv_plain: bool,
        stats: RtpReceiveStats,
        dtmf_pt: int,
        on_dtmf: Callable[[bytes], None],
        on_error: Callable[[], None],
        on_readable: Callable[[], None],
    ) -> None:
        """Give ``sock`` to the C sender/poller where the session is plain, take it back else."""
        poller = self._poller
        if poller is None or sock is None:
            return
        fd = sock.fileno()
        self.tx.fd = fd if send_plain and self._contiguous else -1
        if recv_plain:
            if not self.polled:
                self._loop.remove_reader(fd)
                self.polled = True
            # (re-)register: a re-INVITE may have changed the telephone-event type
            poller.register(fd, cast("RecvBase", stats), dtmf_pt, on_dtmf, on_error)
        elif self.polled:
            poller.unregister(fd)
            self.polled = False
            self._loop.add_reader(fd, on_readable)

    def detach(self) -> None:
        """The session stopped for good: forget the C sender and the clock callback.

        Both lead back to the session (the sender's fallback and the Python
        path's callback are its bound ``_send_frame``), a reference cycle
        that only the cyclic collector would free. ``tx`` becomes a
        :class:`PySendState` with the same frame index and last schedule.
        """
        tx = PySendState()
        tx.frame_index, tx.last_due = self.tx.frame_index, self.tx.last_due
        self.tx = tx
        self.clock_cb = _stopped

    def release(self, sock: socket.socket) -> None:
        """Stop sending in C and stop reading ``sock`` (poller or loop) before it closes."""
        self.tx.fd = -1
        fd = sock.fileno()
        if self.polled and self._poller is not None:
            self._poller.unregister(fd)
            self.polled = False
        else:
            self._loop.remove_reader(fd)
