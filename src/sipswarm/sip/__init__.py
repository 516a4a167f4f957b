"""SIP core: sans-I/O transactions, dialogs, digest auth and user-agent flows.

Bytes and ``now`` go in; events and bytes come out. Nothing here imports
asyncio, socket, time or random (tests/test_layering.py checks it).

Start with :class:`SipStack` (theory of operation in :mod:`sipswarm.sip.stack`)::

    from sipswarm.sip import Account, RandomIdFactory, SipStack, StackConfig

Modules: ``stack`` (public face, demultiplexing), ``transaction`` (RFC 3261
§17), ``registration``, ``uac``, ``uas``, ``session`` (flows), ``dialog``,
``digest`` (RFC 7616/8760), ``message`` (bounded parsing), ``request``
(rendering), ``timers`` (one deadline heap), ``events``, ``ids``, ``config``,
``framing`` (TCP/TLS stream framing).
"""

from __future__ import annotations

from sipswarm.sip.call import Call, CallState
from sipswarm.sip.config import Account, StackConfig, TimerConfig
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
    MessageDropped,
    RegistrationFailed,
    RegistrationSucceeded,
    ReInviteAccepted,
    ReInviteAnswered,
    ReInviteFailed,
    TraceRecord,
    Unregistered,
)
from sipswarm.sip.ids import IdFactory, RandomIdFactory, SequentialIdFactory
from sipswarm.sip.registration import Registration, RegState
from sipswarm.sip.stack import SipStack

__all__ = [
    "Account",
    "Call",
    "CallAnswered",
    "CallConfirmed",
    "CallEnded",
    "CallFailed",
    "CallProgress",
    "CallState",
    "CallTeardownFailed",
    "Event",
    "IdFactory",
    "IncomingCall",
    "IncomingReInvite",
    "MessageDropped",
    "RandomIdFactory",
    "ReInviteAccepted",
    "ReInviteAnswered",
    "ReInviteFailed",
    "RegState",
    "Registration",
    "RegistrationFailed",
    "RegistrationSucceeded",
    "SequentialIdFactory",
    "SipStack",
    "StackConfig",
    "TimerConfig",
    "TraceRecord",
    "Unregistered",
]
