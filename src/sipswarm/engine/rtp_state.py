"""What an :class:`~sipswarm.engine.rtp_session.RtpSession` needs and the states it goes through.

Kept apart from the session so that the hot path module holds only the
session; :mod:`sipswarm.engine.rtp_session` re-exports every name here.
"""

from __future__ import annotations

import enum
from typing import Final, Protocol

__all__ = ["TRANSITIONS", "FrameSource", "MediaCodec", "SessionState"]


class MediaCodec(Protocol):
    """What the session needs of a negotiated codec (``media.codecs.Codec`` satisfies it)."""

    @property
    def name(self) -> str: ...

    @property
    def payload_type(self) -> int: ...

    @property
    def rtp_clock_rate(self) -> int: ...


class FrameSource(Protocol):
    """Encoded frames, one per ptime (``media.sources.EncodedSource`` satisfies it)."""

    def frame(self, index: int) -> bytes: ...


class SessionState(enum.Enum):
    """Life of a session: ports bound (OPEN), media flowing (STARTED), ports returned."""

    OPEN = "open"
    STARTED = "started"
    STOPPED = "stopped"


#: (state, action) -> next state; anything missing raises InvalidState (STYLE.md rule 8).
TRANSITIONS: Final = {
    (SessionState.OPEN, "start"): SessionState.STARTED,
    (SessionState.STARTED, "start"): SessionState.STARTED,  # re-INVITE: new remote or codec
    (SessionState.OPEN, "stop"): SessionState.STOPPED,
    (SessionState.STARTED, "stop"): SessionState.STOPPED,
    (SessionState.STOPPED, "stop"): SessionState.STOPPED,
}
