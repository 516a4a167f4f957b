"""The registration side of an :class:`~sipswarm.engine.endpoint.Endpoint` (RFC 3261 10).

Functions of the endpoint they act on, picked by the endpoint's handler
table; kept apart so that endpoint.py reads as phases, calls and teardown::

    on_registered(ep, RegistrationSucceeded)      item; first 2xx -> REGISTERED
    on_registration_failed(ep, RegistrationFailed) item; REGISTRATION_FAILED (a
                                                   refresh failing in a call: warning)
    on_unregistered(ep, Unregistered)              item (expires 0); close

Every REGISTER outcome, refreshes and the unregister included, is a
``registration`` item (docs/protocol.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sipswarm.protocol import Outcome, Phase
from sipswarm.sip.events import RegistrationFailed, RegistrationSucceeded, Unregistered

if TYPE_CHECKING:
    from sipswarm.engine.endpoint import Endpoint

__all__ = ["on_registered", "on_registration_failed", "on_unregistered"]


def registration_item(
    ep: Endpoint, code: int | None, ms: float | None, expires: int | None
) -> None:
    """Emit one PROTOCOL.md ``registration`` item."""
    rounded = None if ms is None else round(ms, 3)
    item = ep._item("registration", ep.host.loop.time(), status_code=code)
    ep.host.emit(item | {"register_ms": rounded, "expires_granted_s": expires})


def on_registered(ep: Endpoint, ev: RegistrationSucceeded) -> None:
    """2xx to REGISTER: the first one makes the endpoint reachable (REGISTERED)."""
    registration_item(ep, ev.status_code, ev.register_ms, ev.expires_granted)
    ep.registered = True
    if not ev.refresh and ep.phase is Phase.INITIALIZING:
        ep._reachable(ep._stack().contact_uri(ep.key), ep.host.loop.time())


def on_registration_failed(ep: Endpoint, ev: RegistrationFailed) -> None:
    """REGISTER failed: a warning during a call, else REGISTRATION_FAILED and close."""
    registration_item(ep, ev.status_code, ev.register_ms, None)
    reason = f"REGISTER failed: {ev.status_code} {ev.reason}".strip()
    if ev.refresh and ep.call is not None:
        ep.fail(Outcome.COMPLETED_WITH_WARNINGS, f"re-registration during the call: {reason}")
        return
    ep.registered = False
    ep.fail(Outcome.REGISTRATION_FAILED, reason, ev.status_code)
    if ep.call is None or ep.call.terminated:
        ep._teardown(ep.host.loop.time())


def on_unregistered(ep: Endpoint, ev: Unregistered) -> None:
    """The unregister on close was answered (or not): a warning unless 2xx; close."""
    registration_item(ep, ev.status_code, None, 0)
    ep.registered = False
    if not 200 <= ev.status_code < 300:
        ep.fail(
            Outcome.COMPLETED_WITH_WARNINGS,
            f"unregister failed: {ev.status_code} {ev.reason}".strip(),
        )
    ep._closed(ep.host.loop.time())
