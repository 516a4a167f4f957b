"""Call actions of an :class:`~sipswarm.engine.endpoint.Endpoint`: timers, triggers, hold.

Theory of operation
-------------------
PROTOCOL.md ``actions`` run during a call, either ``at_s`` seconds after
INCALL or ``on`` an event of the call. :func:`start` (called by the endpoint
when a call goes INCALL) arms one scheduler timer per ``at_s`` action and,
when some action waits for ``dtmf_received``, a poll of the RTP session's
received key presses every :data:`DTMF_POLL_S`. Every action is then one
function from :data:`_RUNNERS`, picked by its ``do``::

    hold    re-INVITE offering a=sendonly (RFC 3264 8.4), o= version + 1
    resume  re-INVITE offering a=sendrecv
    dtmf    RFC 4733 events (``digits``)
    hangup  BYE (worker extension)

Hold, our side. We keep sending while the peer is on hold (music-on-hold
style: a=sendonly lets us) and the peer's answer decides what happens: its
a=recvonly leaves our stream running and the peer stops sending; an
a=inactive answer stops ours too. The session is updated only when the
re-INVITE is accepted (``ReInviteAccepted``), with the answer as for any
offer (:func:`~sipswarm.media.sdp.apply_answer`). A re-INVITE that fails
leaves the call as it was (RFC 3261 14.1) and is a warning on the outcome;
408 or 481 mean the dialog is gone (RFC 3261 12.2.1.2): we hang up. A
re-INVITE that cannot start (another INVITE transaction of the dialog is
open, e.g. the peer's) is retried every :data:`REINVITE_RETRY_S`, up to
:data:`MAX_REINVITE_TRIES` times, then a warning. Phases do not change.

Hold, the peer's side. The endpoint answers re-INVITEs itself
(``SipStack.take_reinvites``): the answer mirrors the offered direction
(RFC 3264 6.1: sendonly -> recvonly, inactive -> inactive, sendrecv ->
sendrecv, or sendonly while we hold the peer), and the session restarts with
it (a new c=/m= address, the send flag). The peer holds us when the agreed
media no longer lets us send (its a=sendonly/inactive or c=0.0.0.0): that
fires ``hold_received``; the way back fires ``resume_received``. Offers whose
codec cannot replace the running one (another RTP clock rate) get 488 and
the call goes on (RFC 3261 14.2).

Triggers fire every time their event happens. ``dtmf_received`` without
``match_digits`` fires on every key; with it, when the keys received since
the last match end with those digits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from sipswarm.agent.assignment import ActionSpec
from sipswarm.errors import InvalidState, NegotiationError
from sipswarm.media.sdp import (
    NegotiatedMedia,
    SdpError,
    SessionDescription,
    answered_media,
    apply_answer,
    build_answer,
    parse_sdp,
    reoffer,
)
from sipswarm.protocol import ActionKind, ActionTrigger, Outcome
from sipswarm.sip.events import IncomingReInvite, ReInviteAccepted, ReInviteFailed

if TYPE_CHECKING:
    from sipswarm.engine.endpoint import Endpoint

__all__ = [
    "DTMF_POLL_S",
    "MAX_REINVITE_TRIES",
    "REINVITE_RETRY_S",
    "CallActions",
    "on_incoming_reinvite",
    "on_reinvite_accepted",
    "on_reinvite_failed",
    "start",
]

#: How often received DTMF is looked at when an action waits for it (seconds).
DTMF_POLL_S = 0.05
#: A re-INVITE that cannot start now is tried again after this long ...
REINVITE_RETRY_S = 0.5
#: ... this many times in all, then the action is a warning.
MAX_REINVITE_TRIES = 8
#: Keys kept to match ``match_digits`` against (its longest value).
MAX_DIGITS = 64

# our offer's direction per action (RFC 3264 8.4: hold a sendrecv stream with sendonly)
_OFFER_DIRECTION = {ActionKind.HOLD: "sendonly", ActionKind.RESUME: "sendrecv"}
# RFC 3261 12.2.1.2: these answers to a mid-dialog request end the dialog
_DIALOG_GONE = (408, 481)


@dataclass(slots=True)
class CallActions:
    """Hold state of the current call (a new one per call)."""

    local_hold: bool = False
    """We hold the peer: our last accepted offer was a=sendonly."""
    remote_hold: bool = False
    """The peer holds us: the agreed media does not let us send."""
    pending: ActionKind | None = None
    """The hold or resume whose re-INVITE is in flight."""
    pending_offer: SessionDescription | None = None
    digits: str = ""
    """Keys received since the last ``match_digits`` match."""


def start(ep: Endpoint, now: float) -> None:
    """The call is up (INCALL): arm the ``at_s`` actions and the DTMF poll if needed."""
    ep.call_actions = CallActions()
    if not ep.spec.actions:  # most calls: nothing to arm
        return
    for i, action in enumerate(ep.spec.actions):
        if action.at_s is not None:
            ep._timer(f"action{i}", action.at_s, partial(run, ep, action))
    if any(a.on is ActionTrigger.DTMF_RECEIVED for a in ep.spec.actions):
        ep._timer("dtmf_poll", DTMF_POLL_S, partial(_poll_dtmf, ep))


def run(ep: Endpoint, action: ActionSpec, now: float) -> None:
    """Run ``action`` now (its ``do``), if the call is still up."""
    call = ep.call
    if call is None or call.terminated or ep.closed:
        return
    _RUNNERS[action.do](ep, action, now)


def fire(ep: Endpoint, trigger: ActionTrigger, now: float) -> None:
    """``trigger`` happened: run every action waiting for it (dtmf_received: see _on_digit)."""
    for action in ep.spec.actions:
        if action.on is trigger:
            run(ep, action, now)


# -- do ---------------------------------------------------------------------------------------


def _dtmf(ep: Endpoint, action: ActionSpec, now: float) -> None:
    warning = ep.media.send_dtmf(action.digits or "")
    if warning is None:
        ep.action_counts["dtmf_sent"] += 1
    else:
        ep.fail(Outcome.COMPLETED_WITH_WARNINGS, warning)


def _hangup(ep: Endpoint, action: ActionSpec, now: float) -> None:
    ep._hang_up(now)


def _hold_or_resume(ep: Endpoint, action: ActionSpec, now: float) -> None:
    _reinvite(ep, action.do, 1, now)


def _reinvite(ep: Endpoint, kind: ActionKind, tries: int, now: float) -> None:
    """Offer hold (a=sendonly) or resume (a=sendrecv) in a re-INVITE (RFC 3261 14.1)."""
    call = ep.call
    if call is None or call.terminated or ep.closed:
        return
    try:
        offer = _reoffer(ep, _OFFER_DIRECTION[kind])
        ep._stack().reinvite(call, offer.serialise(), now)
    except (InvalidState, NegotiationError) as exc:  # an INVITE transaction is open
        if tries >= MAX_REINVITE_TRIES:
            why = f"{kind.value} not sent after {tries} tries: {exc}"
            ep.fail(Outcome.COMPLETED_WITH_WARNINGS, why)
            return
        retry = partial(_reinvite, ep, kind, tries + 1)
        ep._timer(f"reinvite_{kind.value}", REINVITE_RETRY_S, retry)
        return
    state = ep.call_actions
    state.pending, state.pending_offer = kind, offer
    ep.action_counts[f"{kind.value}_sent"] += 1
    ep._flush()


def _reoffer(ep: Endpoint, direction: str) -> SessionDescription:
    """Our current media with ``direction``: the running codec (its payload type kept,
    RFC 3264 8.3.2), same o= session id, version + 1 (RFC 3264 8)."""
    session, negotiated, call = ep.media.session, ep.media.negotiated, ep.call
    if session is None or negotiated is None or call is None or not ep.media.started:
        raise InvalidState("the call's media is not running")
    local = ep._local_media(session.local_port)
    local = dataclasses.replace(local, codecs=[negotiated.codec], direction=direction)
    return reoffer(parse_sdp(call.local_sdp), local)


# -- our re-INVITE's outcome ------------------------------------------------------------------


def on_reinvite_accepted(ep: Endpoint, ev: ReInviteAccepted) -> None:
    """2xx to our re-INVITE (ACK sent): apply the answer to the running session."""
    state = ep.call_actions
    kind, offer = state.pending, state.pending_offer
    state.pending, state.pending_offer = None, None
    if kind is None or offer is None:
        return
    now = ep.host.loop.time()
    try:
        ep.media.start(apply_answer(offer, parse_sdp(ev.sdp_answer)))
    except (NegotiationError, SdpError) as exc:
        why = f"{kind.value} re-INVITE answer not usable: {exc}; call hung up"
        ep.fail(Outcome.COMPLETED_WITH_WARNINGS, why)
        ep._hang_up(now)
        return
    state.local_hold = kind is ActionKind.HOLD


def on_reinvite_failed(ep: Endpoint, ev: ReInviteFailed) -> None:
    """Our re-INVITE got no 2xx: a warning; the call goes on unless the dialog is gone."""
    state = ep.call_actions
    kind = state.pending
    state.pending, state.pending_offer = None, None
    what = f"{kind.value if kind else 'a'} re-INVITE failed: {ev.code} {ev.reason}".strip()
    if ev.code in _DIALOG_GONE:  # RFC 3261 12.2.1.2
        ep.fail(Outcome.COMPLETED_WITH_WARNINGS, f"{what}; dialog gone, call hung up")
        ep._hang_up(ep.host.loop.time())
        return
    ep.fail(Outcome.COMPLETED_WITH_WARNINGS, f"{what}; the call went on unchanged")


# -- the peer's re-INVITE ---------------------------------------------------------------------


def on_incoming_reinvite(ep: Endpoint, ev: IncomingReInvite) -> None:
    """Answer the peer's re-INVITE (RFC 3264 6.1 and 8), update the session, fire triggers."""
    call, now = ev.call, ep.host.loop.time()
    stack = ep._stack()
    if not ev.sdp_offer:
        # offer in our 2xx, answer in the ACK: our media again, unchanged (same o= version)
        stack.answer_reinvite(call, call.local_sdp, now)
        ep._flush()
        return
    try:
        offer = parse_sdp(ev.sdp_offer)
        answer, media = _answer(ep, offer)
    except (NegotiationError, SdpError) as exc:
        stack.reject_reinvite(call, 488, now, reason="Not Acceptable Here")
        ep._flush()
        ep.fail(Outcome.COMPLETED_WITH_WARNINGS, f"re-INVITE offer refused (488): {exc}")
        return
    stack.answer_reinvite(call, answer.serialise(), now)
    ep._flush()
    ep.media.start(media)
    _held_or_resumed(ep, not media.sending, now)


def _answer(ep: Endpoint, offer: SessionDescription) -> tuple[SessionDescription, NegotiatedMedia]:
    """Our answer and what it agrees, among codecs of the running clock rate."""
    session, current, call = ep.media.session, ep.media.negotiated, ep.call
    if session is None or current is None or call is None or not ep.media.started:
        raise NegotiationError("the call's media is not running")
    rate = current.codec.rtp_clock_rate
    codecs = [c for c in ep.codecs if c.rtp_clock_rate == rate]
    direction = "sendonly" if ep.call_actions.local_hold else "sendrecv"
    local = ep._local_media(session.local_port, offer=False)
    local = dataclasses.replace(local, codecs=codecs, direction=direction)
    previous = parse_sdp(call.local_sdp)
    answer = build_answer(
        offer, local, session_id=previous.origin.session_id, previous_answer=previous
    )
    return answer, answered_media(offer, answer)


def _held_or_resumed(ep: Endpoint, held: bool, now: float) -> None:
    state = ep.call_actions
    if held == state.remote_hold:
        return
    state.remote_hold = held
    ep.action_counts["hold_received" if held else "resume_received"] += 1
    fire(ep, ActionTrigger.HOLD_RECEIVED if held else ActionTrigger.RESUME_RECEIVED, now)


# -- received DTMF ----------------------------------------------------------------------------


def _poll_dtmf(ep: Endpoint, now: float) -> None:
    call, session = ep.call, ep.media.session
    if call is None or call.terminated or ep.closed:
        return
    if session is not None and ep.media.started:
        for event in session.dtmf_events_received():
            _on_digit(ep, event.digit.upper(), now)
    ep._timer("dtmf_poll", DTMF_POLL_S, partial(_poll_dtmf, ep))


def _on_digit(ep: Endpoint, digit: str, now: float) -> None:
    state = ep.call_actions
    ep.action_counts["dtmf_digits_received"] += 1
    state.digits = (state.digits + digit)[-MAX_DIGITS:]
    matched = False
    for action in ep.spec.actions:
        if action.on is not ActionTrigger.DTMF_RECEIVED:
            continue
        if action.match_digits is None:
            run(ep, action, now)
        elif state.digits.endswith(action.match_digits):
            matched = True
            run(ep, action, now)
    if matched:
        state.digits = ""


_RUNNERS: dict[ActionKind, Callable[[Endpoint, ActionSpec, float], None]] = {
    ActionKind.HOLD: _hold_or_resume,
    ActionKind.RESUME: _hold_or_resume,
    ActionKind.DTMF: _dtmf,
    ActionKind.HANGUP: _hangup,
}
