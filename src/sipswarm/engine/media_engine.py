"""The media engine of one process: port pool, the one media clock, the RTP sessions.

Theory of operation
-------------------
One :class:`MediaEngine` per engine shard (one process, one event loop). It
owns the :class:`~sipswarm.engine.ports.PortPool`, the single
:class:`~sipswarm.engine.media_clock.MediaClock` on which every session sends
and does its per-second housekeeping, and the open sessions. The endpoint
engine calls::

    engine = MediaEngine(port_range=(16384, 32767))
    engine.start()
    session = await engine.open_session(codec, 20, source, dscp=46)   # ports bound
    ...build the SDP with session.local_port...
    session.start(remote_addr, remote_rtcp_addr, payload_type, rtcp_mux=...)
    session.snapshot()                        # every metrics interval
    engine.close_session(session)             # RTCP BYE, ports back to the pool
    await engine.close()

The per-packet path runs in C (``sipswarm._rtpcore``) when the extension
built and ``SIPSWARM_NATIVE=0`` is not set (:data:`NATIVE`): each session's
clock callback is a C ``Sender``, and every plain connected RTP socket is
read by the engine's one C ``Poller`` (an epoll registered once as a loop
reader). The pure-Python path is the fallback and computes the same
figures; ``MediaEngine(native=False)`` forces it for one engine.

Randomness (SSRCs, initial sequence numbers and timestamps, the RTCP
interval's random factor) comes from one ``random.Random`` that tests can
seed; SSRCs are unique within the engine (RFC 3550 §8.1).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from sipswarm._native import NATIVE, core
from sipswarm.engine.media_clock import MediaClock, TimerKind
from sipswarm.engine.ports import PortPool
from sipswarm.engine.rtp_session import FrameSource, MediaCodec, RtpSession
from sipswarm.errors import ConfigError

__all__ = ["NATIVE", "SECOND_MS", "ClockStats", "MediaEngine"]

#: Per-second housekeeping period of every session (metrics interval, E-model).
SECOND_MS = 1000


@dataclass(frozen=True, slots=True)
class ClockStats:
    """Media clock figures over one interval, in milliseconds; None when nothing was measured."""

    streams: int
    sends: int
    lateness_p50_ms: float | None
    lateness_p99_ms: float | None
    lateness_max_ms: float | None
    loop_lag_p50_ms: float | None
    loop_lag_p99_ms: float | None
    skipped_ticks: int


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


class MediaEngine:
    """Ports, clock and RTP sessions of one process; see the module docstring for the calls."""

    def __init__(
        self,
        port_range: tuple[int, int] = (16384, 32767),
        host: str = "127.0.0.1",
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        rand: random.Random | None = None,
        cname: str | None = None,
        tick: float = 0.001,
        timer: TimerKind = "auto",
        native: bool | None = None,
    ) -> None:
        """``native``: None follows :data:`NATIVE`; False forces the pure-Python path."""
        self._loop = loop or asyncio.get_running_loop()
        self.pool = PortPool(port_range[0], port_range[1], host)
        self.clock = MediaClock(self._loop, tick=tick, timer=timer)
        self._rand = rand or random.Random()
        self.cname = cname or f"sipswarm-{self._rand.getrandbits(32):08x}@{host}"
        self.sessions: set[RtpSession] = set()
        self._ssrcs: set[int] = set()
        use_c = NATIVE if native is None else native and NATIVE
        self._poller = core.Poller() if use_c and core is not None else None
        self._polling = False

    @property
    def native(self) -> bool:
        """True when this engine's sessions use the C hot path."""
        return self._poller is not None

    def start(self) -> None:
        """Start the media clock and the C poller's reader (idempotent)."""
        self._start_poller()
        self.clock.start()

    def _start_poller(self) -> None:
        if self._poller is not None and not self._polling:
            self._loop.add_reader(self._poller.fileno(), self._poller.poll)
            self._polling = True

    async def open_session(
        self,
        codec: MediaCodec,
        ptime_ms: int,
        source: FrameSource,
        dscp: int | None = None,
    ) -> RtpSession:
        """Bind a port pair and return a session ready for ``start`` (local port known now).

        Raises ResourceError when the port range or the descriptors are exhausted.
        """
        if not 1 <= ptime_ms <= 200:
            raise ConfigError(f"media.ptime_ms must be 1-200, got {ptime_ms}")
        self._start_poller()
        alloc = self.pool.allocate()
        session = RtpSession(
            loop=self._loop,
            clock=self.clock,
            alloc=alloc,
            codec=codec,
            ptime_ms=ptime_ms,
            source=source,
            ssrc=self._new_ssrc(),
            cname=self.cname,
            rand=self._rand,
            poller=self._poller,
        )
        try:
            session.open_sockets(dscp)
        except BaseException:
            session.stop()
            self.pool.release(alloc)
            self._ssrcs.discard(session.ssrc)
            raise
        self.sessions.add(session)
        self.clock.add_chore(session.tick_second, SECOND_MS)
        return session

    def close_session(self, session: RtpSession, reason: str | None = None) -> None:
        """Stop ``session`` (RTCP BYE) and return its ports; idempotent."""
        session.stop(reason)
        if session in self.sessions:
            self.sessions.discard(session)
            self.clock.remove_chore(session.tick_second)
            self._ssrcs.discard(session.ssrc)
            self.pool.release(session.allocation)

    def take_clock_stats(self) -> ClockStats:
        """Send lateness and loop lag since the last call (reset on read)."""
        sends_before = self.clock.sends
        lateness, lag, skipped = self.clock.take_stats()
        self.clock.sends = 0
        return ClockStats(
            streams=self.clock.streams,
            sends=sends_before,
            lateness_p50_ms=_ms(lateness.percentile(50)),
            lateness_p99_ms=_ms(lateness.percentile(99)),
            lateness_max_ms=_ms(lateness.max) if lateness.count else None,
            loop_lag_p50_ms=_ms(lag.percentile(50)),
            loop_lag_p99_ms=_ms(lag.percentile(99)),
            skipped_ticks=skipped,
        )

    async def close(self) -> None:
        """Stop every session (RTCP BYE, sockets closed) and the clock."""
        for session in list(self.sessions):
            self.close_session(session, "shutdown")
        self.clock.stop()
        if self._poller is not None:
            if self._polling:
                self._loop.remove_reader(self._poller.fileno())
                self._polling = False
            self._poller.close()
            self._poller = None
        await asyncio.sleep(0)

    def _new_ssrc(self) -> int:
        while True:
            ssrc = self._rand.getrandbits(32)
            if ssrc and ssrc not in self._ssrcs:
                self._ssrcs.add(ssrc)
                return ssrc
