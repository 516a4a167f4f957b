"""The receiver side of an :class:`~sipswarm.engine.endpoint.Endpoint`: take, ring, answer.

Theory of operation
-------------------
Kept apart from :mod:`sipswarm.engine.endpoint` (phases, registration,
caller, teardown) so that the incoming-call flow reads on its own. These are
functions of the endpoint they act on; the endpoint's handler table points
INVITE, ACK and idle-timer events here::

    on_incoming(ep, IncomingCall)     busy (486), adopted by a child, or take_call
    take_call(ep, ev, now)            CALLING; pick the codec from the offer (488 if none)
    _answer_incoming (task)           bind RTP (media.rtp true), then _ring
    _ring(ep, sdp, media, now)        180 -> RINGING, 2xx after answer_delay_ms (signalling
                                      only: straight from take_call, no task, one answer)
    _answer(ep, sdp, now)             2xx -> NEGOTIATING
    on_confirmed(ep, CallConfirmed)   ACK: start media -> INCALL
    call_over(ep, now)                a call ended: wait for the next one, or close
    idle_timeout(ep, now)             nobody called within call.idle_timeout_s -> close

A receiver takes calls one after another (PROTOCOL.md: it "answers incoming
calls"): an INVITE while it is in a call gets 486 Busy Here. It closes when
``call.expected_calls`` calls ended (the ones refused busy count: each is a
caller that came), or when nobody called for ``call.idle_timeout_s``
(counted from REGISTERED, then from the end of each call): TIMEOUT if it was
never called, else the worst outcome of its calls (SUCCESS if they all went
well). Phases only move forward, so they are the furthest any call reached:
a second call sends no phase items of its own; its ``call`` item tells it.

RFC 3261 13.3.1: the UAS sends 180 at once and the 2xx when the "user"
answers (``answer_delay_ms``); 13.3.1.3 the answer's SDP is the session's.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from sipswarm.errors import NegotiationError, ResourceError
from sipswarm.media.codecs import Codec
from sipswarm.media.sdp import (
    NegotiatedMedia,
    SdpError,
    SessionDescription,
    answer_body,
    answered_media,
    build_answer,
    parse_sdp,
)
from sipswarm.protocol import Outcome, Phase, Role
from sipswarm.sip.events import CallConfirmed, IncomingCall

if TYPE_CHECKING:
    from sipswarm.engine.endpoint import Endpoint

__all__ = ["DEFAULT_IDLE_TIMEOUT_S", "idle_timeout", "on_confirmed", "on_incoming", "take_call"]

#: How long a receiver waits to be called when ``call.idle_timeout_s`` is absent.
DEFAULT_IDLE_TIMEOUT_S = 300.0


def idle_limit(ep: Endpoint) -> float:
    """The receiver's idle timeout in seconds (``call.idle_timeout_s`` or the default)."""
    return ep.call_spec.idle_timeout_s or DEFAULT_IDLE_TIMEOUT_S


def idle_timeout(ep: Endpoint, now: float) -> None:
    """Timer: nobody called within the idle timeout -> close (TIMEOUT if never called)."""
    if ep.call is None and not ep.closed:
        if ep.calls_taken == 0 and ep.calls_ended == 0:
            ep.fail(Outcome.TIMEOUT, f"receiver was not called within {idle_limit(ep):g} s")
        ep._teardown(now)


def call_over(ep: Endpoint, now: float) -> bool:
    """The endpoint's call ended (its ``call`` item is out). True when the receiver goes on
    waiting for its next call; False when the endpoint should close now."""
    if ep.spec.role is not Role.RECEIVER or ep.service or ep.adopted:
        return False
    ep.calls_ended += 1
    if ep.cancelled or ep.closed or _expected_reached(ep):
        return False
    if ep.spec.registrar.register and not ep.registered:
        return False  # lost its registration: nobody can reach it any more
    ep._cancel_timers()
    ep.call = None
    ep.negotiated = None
    ep._final_ts = None
    ep._call_reported = False
    ep._timer("idle", idle_limit(ep), partial(idle_timeout, ep))
    return True


def _expected_reached(ep: Endpoint) -> bool:
    expected = ep.call_spec.expected_calls
    return expected is not None and ep.calls_ended >= expected


def on_incoming(ep: Endpoint, ev: IncomingCall) -> None:
    """An INVITE for this endpoint: adopt (service), refuse busy (486), or take it."""
    now = ep.host.loop.time()
    if ep.service and not ep.cancelled:
        ep.host.adopt_call(ep, ev)
        return
    if ep.call is not None or ep.spec.role is not Role.RECEIVER or ep.cancelled:
        ep._stack().reject(ev.call, 486, now)  # one call at a time: busy
        ep._flush()
        if ep.call is not None and ep.spec.role is Role.RECEIVER:
            ep.calls_ended += 1  # a caller that came: counts towards expected_calls
        return
    take_call(ep, ev, now)


def take_call(ep: Endpoint, ev: IncomingCall, now: float) -> None:
    """Handle ``ev`` as the endpoint's incoming call (also for adopted calls)."""
    ep.call = ev.call
    ep.calls_taken += 1
    old = ep._timers.pop("idle", None)
    if old is not None:
        old.cancel()
    ep._advance(Phase.CALLING, now)
    port = ep.media.open_port()  # signalling only: nothing to bind, the answer is final
    offer: SessionDescription | None = None
    try:
        if port is None:  # with RTP: pick the codec first; the real port comes once bound
            offer = parse_sdp(ev.sdp_offer)
            probe = build_answer(offer, ep._local_media(9, offer=False), session_id=0)
            media = answered_media(offer, probe)
        else:  # the final answer at once (remembered per offer shape: media/sdp.py)
            local = ep._local_media(port, offer=False)
            body, media = answer_body(ev.sdp_offer, local, now_id(now))
    except (NegotiationError, SdpError) as exc:
        ep.fail(Outcome.NEGOTIATION_FAILED, f"offer not acceptable: {exc}", 488)
        ep._stack().reject(ev.call, 488, now, reason="Not Acceptable Here")
        ep._flush()
        return
    if offer is not None:
        ep._task = ep.host.spawn(ep._guard(_answer_incoming(ep, offer, media.codec)))
    else:
        _ring(ep, body, media, now)


async def _answer_incoming(ep: Endpoint, offer: SessionDescription, codec: Codec) -> None:
    """Bind the RTP pair (the receiver's one await), then :func:`_ring`."""
    call = ep.call
    try:
        port = await ep.media.open(codec)
    except (ResourceError, OSError) as exc:
        ep.fail(Outcome.OSERROR, f"cannot open RTP ports: {exc}", 503)
        if call is not None and not call.terminated:
            ep._stack().reject(call, 503, ep.host.loop.time())
            ep._flush()
        return
    if call is None or call.terminated or ep.closed:
        ep._stop_media()  # cancelled while we bound the ports
        return
    now = ep.host.loop.time()
    answer = build_answer(offer, ep._local_media(port, offer=False), session_id=now_id(now))
    _ring(ep, answer.serialise(), answered_media(offer, answer), now)


def _ring(ep: Endpoint, sdp: bytes, media: NegotiatedMedia, now: float) -> None:
    """180 now (RINGING), the answer ``sdp`` in the 2xx after answer_delay_ms."""
    call = ep.call
    if call is None:
        return
    ep.negotiated = media  # started once the ACK arrives
    ep._stack().ring(call, now)
    ep._advance(Phase.RINGING, now)
    ep._flush()
    delay = ep.call_spec.answer_delay_ms / 1000
    ep._timer("answer", delay, lambda t: _answer(ep, sdp, t))


def _answer(ep: Endpoint, sdp: bytes, now: float) -> None:
    call = ep.call
    if call is None or call.terminated or ep.closed:
        return
    ep._stack().answer(call, sdp, now)
    ep._final_ts = now
    ep._advance(Phase.NEGOTIATING, now)
    ep._flush()


def on_confirmed(ep: Endpoint, ev: CallConfirmed) -> None:
    """ACK for our 2xx: start the negotiated media, INCALL."""
    now = ep.host.loop.time()
    if ep.negotiated is not None:
        try:
            ep.media.start(ep.negotiated)
        except NegotiationError as exc:
            ep.fail(Outcome.NEGOTIATION_FAILED, str(exc), 200)
            ep._hang_up(now)
            return
    ep._in_call(now)


def now_id(now: float) -> int:
    """An SDP session id from the clock (RFC 4566 5.2 suggests an NTP timestamp)."""
    return int(now * 1000) & 0x7FFFFFFF
