"""What the engine gives each endpoint: clock, scheduler, resolver, sockets, media, the sink.

:class:`EndpointHost` is implemented by :class:`~sipswarm.engine.engine.EndpointEngine`;
endpoints only see this protocol, so the engine's bookkeeping stays out of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from sipswarm.engine.resolver import SipResolver
from sipswarm.engine.rtp_session import RtpSession
from sipswarm.engine.scheduler import Scheduler
from sipswarm.engine.sip_runtime import SipRuntime
from sipswarm.engine.switchable import SwitchableCodec, SwitchableSource
from sipswarm.media.codecs import Codec
from sipswarm.sip.events import IncomingCall

if TYPE_CHECKING:
    from sipswarm.engine.endpoint import Endpoint

__all__ = ["EndpointHost"]


class EndpointHost(Protocol):
    """What the engine gives its endpoints (see :class:`~.engine.EndpointEngine`)."""

    loop: asyncio.AbstractEventLoop
    scheduler: Scheduler
    resolver: SipResolver
    sdp_address: str

    def emit(self, item: dict[str, Any]) -> None: ...

    def epoch_ms(self, t: float | None) -> int | None: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...

    def runtime_now(self, endpoint: Endpoint, transport: str) -> SipRuntime | None: ...

    async def runtime_for(self, endpoint: Endpoint, transport: str) -> SipRuntime: ...

    def release_runtime(self, endpoint: Endpoint, runtime: SipRuntime) -> None: ...

    async def open_media(
        self, endpoint: Endpoint, codec: SwitchableCodec, source: SwitchableSource
    ) -> RtpSession: ...

    def source_for(self, endpoint: Endpoint, codec: Codec) -> Any: ...

    def close_media(self, session: RtpSession) -> None: ...

    def adopt_call(self, service: Endpoint, event: IncomingCall) -> None: ...

    def endpoint_closed(self, endpoint: Endpoint) -> None: ...

    def generator_overload(self, start: float, end: float) -> str | None: ...
