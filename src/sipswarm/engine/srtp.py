"""SRTP and SRTCP (RFC 3711) for one call leg, through pylibsrtp (libsrtp2).

Theory of operation
-------------------
An :class:`SrtpContext` holds two libsrtp sessions keyed from SDES
(:class:`~sipswarm.media.sdes.SdesKeys`): the outbound one with our master
key (any SSRC we send) and the inbound one with the peer's (any SSRC it
sends). The RTP session calls it on its paths, only when SRTP was
negotiated (a plain session never touches this module)::

    ctx = SrtpContext(keys)                 # CallMedia, after offer/answer
    session.start(..., srtp=ctx)
    wire = ctx.protect_rtp(packet)          # send path (also DTMF events)
    packet = ctx.unprotect_rtp(wire)        # receive path: None = dropped, counted
    ctx.protect_rtcp / ctx.unprotect_rtcp   # SRTCP, same keys (RFC 3711 §3.4)

Bad input never raises (STYLE.md rule 11): a packet that fails
authentication (wrong key, tampering, a stranger) is counted in
``auth_failures``; one that libsrtp's replay window refuses (a duplicate,
or older than the 128-packet window, RFC 3711 §3.3.2) in ``replays``;
anything else libsrtp cannot parse in ``errors``. The counters are
cumulative and survive a re-key (:meth:`SrtpContext.rekeyed`).
"""

from __future__ import annotations

from typing import Final

from pylibsrtp import Error as LibSrtpError
from pylibsrtp import Policy, Session

from sipswarm.errors import ConfigError
from sipswarm.media.sdes import SdesKeys

__all__ = ["PROFILES", "LibSrtpError", "SrtpContext"]

#: SDES crypto-suite name -> libsrtp protection profile.
PROFILES: Final = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}


def _session(key: bytes, profile: int, ssrc_type: int) -> Session:
    return Session(Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile))


class SrtpContext:
    """Protect what we send, unprotect what we receive; see the module docstring."""

    def __init__(self, keys: SdesKeys) -> None:
        profile = PROFILES.get(keys.suite.name)
        if profile is None:
            raise ConfigError(
                f"SRTP suite {keys.suite.name} has no libsrtp profile; use one of {list(PROFILES)}"
            )
        self.keys = keys
        self._tx = _session(keys.local_key_salt, profile, Policy.SSRC_ANY_OUTBOUND)
        self._rx = _session(keys.remote_key_salt, profile, Policy.SSRC_ANY_INBOUND)
        self.protect_rtp = self._tx.protect
        self.protect_rtcp = self._tx.protect_rtcp
        self._unprotect = self._rx.unprotect
        self._unprotect_rtcp = self._rx.unprotect_rtcp
        self.auth_failures = 0
        self.replays = 0
        self.errors = 0

    @property
    def overhead(self) -> int:
        """Octets SRTP adds to an RTP packet (the auth tag; no MKI)."""
        return self.keys.suite.tag_len

    def rekeyed(self, keys: SdesKeys) -> SrtpContext:
        """This context if ``keys`` are the same, else a new one that keeps the counters."""
        if keys == self.keys:
            return self
        new = SrtpContext(keys)
        new.auth_failures, new.replays, new.errors = self.auth_failures, self.replays, self.errors
        return new

    def unprotect_rtp(self, data: bytes) -> bytes | None:
        """The plain RTP packet, or None (counted) when libsrtp refuses ``data``."""
        try:
            return self._unprotect(data)
        except LibSrtpError as exc:
            self._count(exc)
            return None

    def unprotect_rtcp(self, data: bytes) -> bytes | None:
        """The plain RTCP compound packet, or None (counted) when libsrtp refuses ``data``."""
        try:
            return self._unprotect_rtcp(data)
        except LibSrtpError as exc:
            self._count(exc)
            return None

    def _count(self, exc: LibSrtpError) -> None:
        # libsrtp's srtp_err_status strings: "authentication failure", "replay check failed (...)"
        text = str(exc)
        if text.startswith("authentication"):
            self.auth_failures += 1
        elif text.startswith("replay"):
            self.replays += 1
        else:
            self.errors += 1

    def metrics(self) -> dict[str, int]:
        """The worker-extension counters for the ``recv`` metrics object."""
        return {
            "srtp_auth_failures": self.auth_failures,
            "srtp_replays": self.replays,
            "srtp_errors": self.errors,
        }
