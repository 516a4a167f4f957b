"""The one error tree of sipswarm.

Every error raised on purpose by sipswarm derives from :class:`SipswarmError`::

    SipswarmError
     +-- ConfigError          bad settings, plan or assignment: names the field and the fix
     +-- InvalidState         a local action that the current state does not allow
     +-- ProtocolError        a peer broke a protocol rule we cannot absorb locally
     +-- NegotiationError     SDP offer/answer found nothing in common
     +-- ResourceError        out of ports, sockets or capacity (maps to OSERROR)
     +-- ResolutionError      DNS (RFC 3263) found no server for a SIP target

Bad input from the network never raises out of a ``receive_*`` method: it is
counted and dropped (see STYLE.md rule 11). These errors are for local misuse
and for configuration.
"""

from __future__ import annotations


class SipswarmError(Exception):
    """Root of every error sipswarm raises on purpose."""


class ConfigError(SipswarmError):
    """A setting, plan or assignment is invalid; the message names the field and the fix."""


class InvalidState(SipswarmError):
    """A local action is not allowed in the current state of a state machine."""


class ProtocolError(SipswarmError):
    """A peer broke a protocol rule in a way the core cannot absorb."""


class NegotiationError(SipswarmError):
    """SDP offer/answer failed; the message lists what was offered and what is supported."""


class ResourceError(SipswarmError):
    """A local resource (ports, sockets, capacity) is exhausted."""


class ResolutionError(SipswarmError):
    """RFC 3263 server location found no usable NAPTR/SRV/A record for a target."""
