"""A codec and a frame source whose target can change once the SDP answer is known.

The caller must bind its RTP ports, and so create its
:class:`~sipswarm.engine.rtp_session.RtpSession`, before it can write the
offer, but the codec is only known from the answer. The session holds these
two stand-ins (they satisfy its ``MediaCodec`` and ``FrameSource``
protocols) and the endpoint points them at the negotiated codec before
``start``. Only codecs of the same RTP clock rate can be swapped (the
session sized its timestamp step and jitter clock for it); the endpoint
refuses the others with a NegotiationError that says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sipswarm.media.codecs import Codec

__all__ = ["SwitchableCodec", "SwitchableSource"]


class FrameSource(Protocol):
    def frame(self, index: int) -> bytes: ...


#: ``source.contiguous()``: the frames as ``(buffer, frame_bytes, frames)``, or None.
Contiguous = Callable[[], "tuple[bytes, int, int] | None"]


def _none() -> tuple[bytes, int, int] | None:
    return None


class SwitchableCodec:
    """Reads through to the current :class:`Codec`; :meth:`switch` before media starts."""

    __slots__ = ("target",)

    def __init__(self, codec: Codec) -> None:
        self.target = codec

    def switch(self, codec: Codec) -> None:
        self.target = codec

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def payload_type(self) -> int:
        return self.target.payload_type

    @property
    def rtp_clock_rate(self) -> int:
        return self.target.rtp_clock_rate

    @property
    def rtpmap(self) -> str:
        return self.target.rtpmap


class SwitchableSource:
    """Encoded frames from the current source; :meth:`switch` with the codec."""

    __slots__ = ("_contiguous", "_frame")

    def __init__(self, source: FrameSource) -> None:
        self._frame = source.frame
        self._contiguous: Contiguous = getattr(source, "contiguous", _none)

    def switch(self, source: FrameSource) -> None:
        self._frame = source.frame
        self._contiguous = getattr(source, "contiguous", _none)

    def frame(self, index: int) -> bytes:
        return self._frame(index)

    def contiguous(self) -> tuple[bytes, int, int] | None:
        """The current source's frames as one buffer (``EncodedSource.contiguous``), or None."""
        return self._contiguous()
