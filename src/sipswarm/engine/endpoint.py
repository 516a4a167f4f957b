"""One endpoint: a phone that registers, calls or answers, sends RTP, and reports.

Theory of operation
-------------------
An :class:`Endpoint` is an event-driven object, not a coroutine: its SIP
runtime delivers stack events to :meth:`Endpoint.on_sip_event`, which picks
one handler per event type from a dict (STYLE.md rule 10); its timers
(answer delay, call duration, idle timeout) are entries in the engine's one
:class:`~sipswarm.engine.scheduler.Scheduler` heap. Why not a coroutine per
endpoint: thousands of endpoints spend nearly all their life waiting for a
message or a deadline, and an object costs a few hundred bytes where a
suspended coroutine with its frames and futures costs kilobytes and a task
switch per event. The only coroutines are the short set-up steps that must
await (DNS, binding sockets), and only when they must:
:mod:`sipswarm.engine.setup` and :meth:`_place_call`.

Life (PROTOCOL.md phases, forward only, :data:`~.outcomes.PHASE_TRANSITIONS`)::

    INITIALIZING  resolve the registrar/target, attach to a SIP runtime
    REGISTERED    2xx to REGISTER (or listening, register: false): item has contact
    CALLING       caller: INVITE sent / receiver: INVITE received
    RINGING       first 180/183 received / 180 sent
    NEGOTIATING   2xx received, answer applied / 2xx sent, ACK awaited
    INCALL        ACK sent / received, RTP started; hang up after call.duration_s
    DISCONNECTING BYE or CANCEL sent or received, or unregistering
    CLOSED        nothing left on the wire: ``outcome`` item, then forgotten

A caller places exactly one call. A receiver answers calls one after
another (:mod:`sipswarm.engine.receiver`; an INVITE while it is in a call
gets 486) until ``call.expected_calls`` calls ended or nobody called for its
idle timeout; its phases are the furthest any of its calls reached (they
never go back), and each call gets its own ``call`` item. A *service*
receiver (``sipswarm answer``) never takes a call itself: each INVITE is
adopted by a child endpoint made by the host, so every call still has its
own forward-only phases.

During a call, ``actions`` (at_s timers, ``on`` triggers, hold and resume by
re-INVITE, the peer's re-INVITEs) are :mod:`sipswarm.engine.actions`.

Outcome: the worst of everything that happened (:class:`~.outcomes.OutcomeState`);
the mapping from the wire is in :mod:`sipswarm.engine.outcomes`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from sipswarm.agent.assignment import CallSpec, EndpointSpec
from sipswarm.engine import actions, receiver, registration, setup
from sipswarm.engine.actions import CallActions
from sipswarm.engine.call_media import CallMedia
from sipswarm.engine.host import EndpointHost
from sipswarm.engine.outcomes import (
    PHASE_TRANSITIONS,
    OutcomeState,
    call_item,
    check_transition,
    outcome_for_call_failure,
)
from sipswarm.engine.receiver import DEFAULT_IDLE_TIMEOUT_S
from sipswarm.engine.resolver import ServerTarget
from sipswarm.engine.scheduler import ScheduledCall
from sipswarm.engine.sip_runtime import SipRuntime
from sipswarm.engine.trace_buffer import FailureTrace
from sipswarm.engine.transport import TransportError
from sipswarm.errors import (
    NegotiationError,
    ResourceError,
    SipswarmError,
)
from sipswarm.media.codecs import codec_by_name
from sipswarm.media.sdp import (
    LocalMedia,
    NegotiatedMedia,
    SdpError,
    SessionDescription,
    apply_answer_body,
)
from sipswarm.protocol import Outcome, Phase, Role, TraceMode
from sipswarm.sip.call import Call
from sipswarm.sip.config import Account
from sipswarm.sip.events import (
    CallAnswered,
    CallConfirmed,
    CallEnded,
    CallFailed,
    CallProgress,
    CallTeardownFailed,
    Event,
    IncomingCall,
    IncomingReInvite,
    RegistrationFailed,
    RegistrationSucceeded,
    ReInviteAccepted,
    ReInviteFailed,
    TraceRecord,
    Unregistered,
)
from sipswarm.sip.stack import SipStack

__all__ = ["DEFAULT_CALL", "DEFAULT_IDLE_TIMEOUT_S", "Endpoint", "EndpointHost"]

#: A receiver's call settings when the assignment gives none.
DEFAULT_CALL = CallSpec(target=None, duration_s=30.0, ring_timeout_s=30.0, answer_delay_ms=0)


class Endpoint:
    """One assigned endpoint. Next: :meth:`start` (at its start time), :meth:`cancel`."""

    def __init__(
        self,
        host: EndpointHost,
        spec: EndpointSpec,
        run_id: str,
        trace: TraceMode,
        *,
        service: bool = False,
    ) -> None:
        self.host = host
        self.spec = spec
        self.run_id = run_id
        self.endpoint_id = spec.endpoint_id
        self.key = (run_id, spec.endpoint_id)
        self.trace = trace
        self.service = service
        self.call_spec = spec.call or DEFAULT_CALL
        self.phase: Phase | None = None
        self.result = OutcomeState()
        self.account = Account(
            spec.account.username,
            spec.registrar.domain,
            spec.account.password or "",
            spec.account.auth_username,
            spec.account.realm,
            spec.account.display_name,
        )
        self.codecs = [codec_by_name(c) for c in spec.media.codecs]
        self.runtime: SipRuntime | None = None
        self.media = CallMedia(
            lambda codec, source: host.open_media(self, codec, source),
            host.close_media,
            lambda codec: host.source_for(self, codec),
            srtp=spec.media.srtp.value,
            rtp=spec.media.rtp,
        )
        self.target: ServerTarget | None = None
        self.call: Call | None = None
        self.offer: SessionDescription | None = None
        self.registered = False
        self.unregistering = False
        self.closed = False
        self.cancelled = False
        self.contact: str | None = None
        self._final_ts: float | None = None
        self.negotiated: NegotiatedMedia | None = None
        self._call_reported = False
        self.calls_taken = 0  # receiver: calls taken (answered or not)
        self.calls_ended = 0  # receiver: calls over, the ones refused busy included
        self.adopted = False  # a child of a service endpoint: exactly one call
        self._timers: dict[str, ScheduledCall] = {}
        self._task: asyncio.Task[None] | None = None
        # trace: failures (first 50, last 150): (record, transport, local) per message
        self._traces: FailureTrace[tuple[TraceRecord, str, str]] = FailureTrace()
        self.call_actions = CallActions()  # hold state of the current call (engine/actions.py)
        self.action_counts: Counter[str] = Counter()  # holds sent/received ..., for counters()
        self.on_closed: Callable[[Endpoint], None] | None = None

    # -- phases and items -------------------------------------------------------------
    # Hot: eight phase items per call. Each is one dict literal in PROTOCOL.md's key
    # order; ``_value_`` is the member's plain str, read without the ``value``
    # property's descriptor call (the item must carry a str, not the enum).
    def _go(self, phase: Phase, now: float, ts: int | None = None) -> None:
        """Move to ``phase`` (InvalidState if it is not later) and emit its item
        (``ts``: its epoch ms when the caller has them already)."""
        check_transition(self.phase, phase, self.endpoint_id)
        self._emit_phase(phase, self.host.epoch_ms(now) if ts is None else ts)

    def _emit_phase(self, phase: Phase, ts: int | None, contact: str | None = None) -> None:
        self.phase = phase
        item = {
            "kind": "phase",
            "run_id": self.run_id,
            "endpoint_id": self.endpoint_id,
            "ts": ts,
            "phase": phase._value_,
        }
        if contact is not None:
            item["contact"] = contact
        self.host.emit(item)

    def _item(self, kind: str, t: float, **fields: Any) -> dict[str, Any]:
        """A PROTOCOL.md item of this endpoint: kind, run_id, endpoint_id, ts, ``fields``."""
        item = {
            "kind": kind,
            "run_id": self.run_id,
            "endpoint_id": self.endpoint_id,
            "ts": self.host.epoch_ms(t),
        }
        item.update(fields)
        return item

    def _advance(self, phase: Phase, now: float) -> None:
        """:meth:`_go` unless the endpoint is already at or past ``phase``."""
        current = self.phase
        if current is None or phase in PHASE_TRANSITIONS[current]:
            self._emit_phase(phase, self.host.epoch_ms(now))

    def fail(self, outcome: Outcome, reason: str, code: int | None = None) -> None:
        """Record a problem; the worst outcome wins (severity order)."""
        self.result.offer(outcome, reason, code)

    def metrics_entry(self) -> dict[str, Any]:
        """This endpoint's part of a ``metrics`` item (media keys only once RTP started)."""
        entry: dict[str, Any] = {
            "endpoint_id": self.endpoint_id,
            "phase": (self.phase or Phase.INITIALIZING).value,
        }
        media = self.media.metrics()  # counters cumulative over a receiver's calls
        if media is not None:
            entry.update(media)
        return entry

    # -- start (the set-up steps are in sipswarm.engine.setup) -------------------------
    def start(self, now: float) -> None:
        """Go INITIALIZING and begin (resolve, bind, register or listen): in this call
        when nothing needs awaiting, else through a short task (:func:`.setup.start`)."""
        self._go(Phase.INITIALIZING, now)
        setup.start(self, now)

    def _proxy_uri(self) -> str | None:
        proxy = self.spec.registrar.outbound_proxy
        if proxy is None:
            return None
        return proxy if proxy.startswith(("sip:", "sips:")) else f"sip:{proxy}"

    def _stack(self) -> SipStack:
        if self.runtime is None or self.runtime.stack is None:
            raise SipswarmError(f"endpoint {self.endpoint_id} has no SIP runtime yet")
        return self.runtime.stack

    def _abort(self, outcome: Outcome, reason: str, code: int | None = None) -> None:
        self.fail(outcome, reason, code)
        self._teardown(self.host.loop.time())

    def _reachable(self, contact: str, now: float) -> None:
        self.contact = contact
        check_transition(self.phase, Phase.REGISTERED, self.endpoint_id)
        self._emit_phase(Phase.REGISTERED, self.host.epoch_ms(now), contact)
        if self.cancelled:
            self._teardown(now)
        elif self.service:
            self._stack().listen_any(self.key)
        elif self.spec.role is Role.CALLER:
            port = self.media.open_port()  # signalling only: no socket, no task
            if port is None:
                self._task = self.host.spawn(self._guard(self._place_call()))
            else:
                self._invite(port, now)
        else:
            self._timer("idle", receiver.idle_limit(self), partial(receiver.idle_timeout, self))

    # -- timers -----------------------------------------------------------------------
    def _timer(self, name: str, delay: float, callback: Callable[[float], None]) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        self._timers[name] = self.host.scheduler.call_later(delay, partial(self._safely, callback))

    def _safely(self, callback: Callable[[float], None], now: float) -> None:
        """Run an endpoint step; a bug closes this endpoint (CALL_FAILED), never stalls it."""
        try:
            callback(now)
        except Exception as exc:  # reported in the outcome; must not reach the transport
            self._internal_error(exc)

    async def _guard(self, step: Coroutine[Any, Any, None]) -> None:
        try:
            await step
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._internal_error(exc)
            raise

    def _internal_error(self, exc: Exception) -> None:
        """A bug in an endpoint step: this endpoint ends CALL_FAILED, the others go on."""
        self.fail(Outcome.CALL_FAILED, f"internal error: {exc!r}")
        self.force_close(self.host.loop.time())

    def _cancel_timers(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def _hang_up(self, now: float) -> None:
        """call.duration_s is over (or a cancel): BYE, CANCEL or decline, whatever fits."""
        call = self.call
        if call is None or call.terminated or self.runtime is None:
            return
        self._advance(Phase.DISCONNECTING, now)
        self._stack().hangup(call, now)
        self.runtime.flush()

    # -- media --------------------------------------------------------------------------
    def _local_media(self, port: int, offer: bool = True) -> LocalMedia:
        ptime = self.spec.media.ptime_ms
        return self.media.local(self.host.sdp_address, port, self.codecs, ptime, offer=offer)

    def _stop_media(self) -> None:
        answered = self.call is not None and self.call.answer_ts is not None
        warning = self.media.stop(answered)
        if warning is not None:
            self.fail(Outcome.COMPLETED_WITH_WARNINGS, warning)

    # -- caller -------------------------------------------------------------------------
    async def _place_call(self) -> None:
        """Bind the RTP pair (the one await of a caller), then :meth:`_invite`."""
        try:
            port = await self.media.open(self.codecs[0])
        except (ResourceError, OSError) as exc:
            return self._abort(Outcome.OSERROR, f"cannot open RTP ports: {exc}")
        if self.closed:
            return self._stop_media()
        if self.cancelled:
            return self._teardown(self.host.loop.time())
        self._invite(port, self.host.loop.time())

    def _invite(self, port: int, now: float) -> None:
        """Offer our media on ``port`` in the INVITE: CALLING."""
        session_id = int(self.host.epoch_ms(now) or 0)
        self.offer, body = self.media.offer(self._local_media(port), session_id)
        target = self.call_spec.target or ""
        try:
            self.call = self._stack().invite(
                self.key,
                self.account,
                target,
                body,
                now,
                route=self._proxy_uri(),
                ring_timeout=self.call_spec.ring_timeout_s,
                destination=self.target.address if self.target else None,
            )
        except SipswarmError as exc:
            return self._abort(Outcome.CALL_FAILED, f"cannot call {target}: {exc}")
        self._go(Phase.CALLING, now)
        self._flush()

    def _on_progress(self, ev: CallProgress) -> None:
        if ev.code in (180, 183):
            self._advance(Phase.RINGING, self.host.loop.time())

    def _on_answered(self, ev: CallAnswered) -> None:
        now = self.host.loop.time()
        self._advance(Phase.NEGOTIATING, now)
        self._final_ts = now
        try:
            if self.offer is None:
                raise NegotiationError("2xx arrived for a call without an offer")
            local_sdp = ev.call.local_sdp  # our offer as sent
            self.media.start(apply_answer_body(self.offer, local_sdp, ev.sdp_answer))
        except (NegotiationError, SdpError) as exc:
            self.fail(Outcome.NEGOTIATION_FAILED, f"SDP answer not usable: {exc}", 200)
            self._hang_up(now)
            return
        self._in_call(now)

    def _in_call(self, now: float) -> None:
        self._advance(Phase.INCALL, now)  # a receiver's later calls stay INCALL
        if self.spec.call is not None:  # without call settings the far end hangs up
            self._timer("duration", self.call_spec.duration_s, self._hang_up)
        actions.start(self, now)  # at_s timers, on triggers (engine/actions.py)
        if self.cancelled:
            self._hang_up(now)

    # -- receiver (the flow is in sipswarm.engine.receiver) --------------------------------
    def take_call(self, ev: IncomingCall, now: float) -> None:
        """Engine: this child endpoint takes ``ev``, its only call (``sipswarm answer``)."""
        self.adopted = True
        self._stack().take_reinvites(self.key)
        receiver.take_call(self, ev, now)

    # -- call end -----------------------------------------------------------------------
    def _on_call_failed(self, ev: CallFailed) -> None:
        now = self.host.loop.time()
        self._final_ts = self._final_ts or now
        code = ev.code
        given_up = ev.call.cancel_reason is not None  # a late final response ends it
        if self.cancelled and (code in (487, 603) or given_up):
            self.fail(Outcome.CANCELLED, self.result.reason or "cancelled", code)
        elif ev.call.direction == "out" and (code == 487 or given_up):
            why = f"no answer within ring_timeout_s {self.call_spec.ring_timeout_s:g} s"
            how = "CANCEL sent, 487" if code == 487 else f"then {code} {ev.reason}".strip()
            self.fail(Outcome.TIMEOUT, f"{why} ({how})", code)
        elif ev.call.direction == "in" and ev.by == "remote":
            self.fail(Outcome.CALL_FAILED, f"caller cancelled the call ({code})", code)
        else:  # fail() keeps an earlier, worse outcome (e.g. our own 488)
            outcome = outcome_for_call_failure(code)
            self.fail(outcome, f"call failed: {code} {ev.reason}".strip(), code)
        self._report_call()
        self._call_over(now)

    def _on_call_ended(self, ev: CallEnded) -> None:
        now = self.host.loop.time()
        self._report_call()
        self._call_over(now, bye=True)

    def _call_over(self, now: float, *, bye: bool = False) -> None:
        """A call ended: a receiver waits for the next one, anyone else closes."""
        if receiver.call_over(self, now):
            return
        if bye:
            self._advance(Phase.DISCONNECTING, now)
        self._teardown(now)

    def _on_teardown_failed(self, ev: CallTeardownFailed) -> None:
        now = self.host.loop.time()
        self.fail(Outcome.TEARDOWN_ERROR, f"BYE failed: {ev.code} {ev.reason}".strip(), ev.code)
        self._report_call()
        self._call_over(now)

    def _report_call(self) -> None:
        call = self.call
        if call is None or self._call_reported:
            return
        self._call_reported = True
        if self.result.final_code is None:
            self.result.final_code = call.final_code
        self._stop_media()
        if call.invite_ts is not None:  # docs/protocol.md: results of a late generator
            overload = self.host.generator_overload(call.invite_ts, self.host.loop.time())
            taken = overload is None or self.result.offer(Outcome.COMPLETED_WITH_WARNINGS, overload)
            if not taken:  # a worse outcome stands: say that the generator was late too
                self.result.reason = f"{self.result.reason}; {overload}"
        self.host.emit(
            call_item(
                call,
                self.run_id,
                self.endpoint_id,
                self.host.epoch_ms,
                self.media.first_rtp_ts,
                self._final_ts,
            )
        )

    # -- stack input --------------------------------------------------------------------
    def on_sip_event(self, event: Event) -> None:
        """Runtime callback: dispatch by event type (one handler per kind)."""
        handler = _HANDLERS.get(type(event))
        if handler is None or self.closed:
            return
        call = getattr(event, "call", None)
        if call is not None and call is not self.call and not isinstance(event, IncomingCall):
            return  # e.g. the 486 we sent to a second INVITE
        try:
            handler(self, event)
        except Exception as exc:  # reported in the outcome; must not reach the transport
            self._internal_error(exc)

    def on_trace(self, record: TraceRecord, runtime: SipRuntime) -> None:
        """Runtime callback: one SIP message of this endpoint. ``trace: all`` emits
        its ``trace`` item now; ``failures`` holds the record, and :meth:`_closed`
        builds the items only for an outcome that sends them."""
        if self.trace is TraceMode.ALL:
            self.host.emit(self._trace_item(record, runtime.name, runtime.local))
        else:
            self._traces.add((record, runtime.name, runtime.local))

    def _trace_item(self, record: TraceRecord, transport: str, local: str) -> dict[str, Any]:
        """The PROTOCOL.md ``trace`` item of one message (``ts``: when it went or came)."""
        return {
            "kind": "trace",
            "run_id": self.run_id,
            "endpoint_id": self.endpoint_id,
            "ts": self.host.epoch_ms(record.ts),
            "dir": record.dir,
            "transport": transport,
            "local": local,
            "remote": f"{record.remote[0]}:{record.remote[1]}",
            "message": record.message.decode(errors="replace"),
        }

    def on_transport_error(self, error: TransportError) -> None:
        """Runtime callback (own socket only): the socket failed -> OSERROR, close."""
        if not self.closed and error.kind in ("send", "connect", "closed"):
            self.fail(Outcome.OSERROR, f"{error.transport} {error.kind} error: {error.reason}")
            self.force_close(self.host.loop.time())

    def _flush(self) -> None:
        if self.runtime is not None:
            self.runtime.flush()

    # -- cancel and close ---------------------------------------------------------------
    def cancel(self, reason: str, now: float) -> None:
        """Run cancelled or orphaned: hang up, unregister, close as CANCELLED (or worse)."""
        if self.closed:
            return
        self.cancelled = True
        self.fail(Outcome.CANCELLED, reason)  # PROTOCOL.md: reason `orphaned`, verbatim
        if self.phase is None:
            self._closed(now)
        elif self.call is not None and not self.call.terminated:
            self._hang_up(now)
        elif self.runtime is not None and self.phase.order >= Phase.REGISTERED.order:
            self._teardown(now)
        # else: still starting; _start/_place_call see `cancelled` and tear down

    def _teardown(self, now: float) -> None:
        """The call is over or never came: stop media, unregister if registered, close."""
        if self.closed:
            return
        self._cancel_timers()
        self._report_call()
        self._stop_media()
        if self.registered and not self.unregistering and self.runtime is not None:
            self.unregistering = True
            self._advance(Phase.DISCONNECTING, now)
            self._stack().unregister(self.key, now)
            self.runtime.flush()
            return
        if not self.unregistering:
            self._closed(now)

    def force_close(self, now: float) -> None:
        """Close now whatever is pending (cancel deadline, dead socket)."""
        if self.closed:
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._cancel_timers()
        self._report_call()
        self._stop_media()
        self._closed(now)

    def _closed(self, now: float) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel_timers()
        self._stop_media()
        if self.runtime is not None:
            self.runtime.detach(self.key)
            self.host.release_runtime(self, self.runtime)
        outcome, code, reason = self.result.final()
        if outcome is not Outcome.SUCCESS:
            for held in self._traces.items():
                self.host.emit(self._trace_item(*held))
        self._traces.clear()
        ts = self.host.epoch_ms(now)  # the CLOSED phase and the outcome share it
        self._go(Phase.CLOSED, now, ts)
        self.host.emit(
            {
                "kind": "outcome",
                "run_id": self.run_id,
                "endpoint_id": self.endpoint_id,
                "ts": ts,
                "outcome": outcome._value_,
                "final_code": code,
                "reason": reason,
            }
        )
        self.host.endpoint_closed(self)
        self.media.detach()  # its callbacks close over self: no cycle left for the GC


_HANDLERS: dict[type, Callable[[Endpoint, Any], None]] = {
    RegistrationSucceeded: registration.on_registered,
    RegistrationFailed: registration.on_registration_failed,
    Unregistered: registration.on_unregistered,
    IncomingCall: receiver.on_incoming,
    CallProgress: Endpoint._on_progress,
    CallAnswered: Endpoint._on_answered,
    CallConfirmed: receiver.on_confirmed,
    CallFailed: Endpoint._on_call_failed,
    CallEnded: Endpoint._on_call_ended,
    CallTeardownFailed: Endpoint._on_teardown_failed,
    IncomingReInvite: actions.on_incoming_reinvite,
    ReInviteAccepted: actions.on_reinvite_accepted,
    ReInviteFailed: actions.on_reinvite_failed,
}
