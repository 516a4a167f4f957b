"""SDES keying for SRTP: the ``a=crypto`` attribute (RFC 4568) and its offer/answer.

Theory of operation
-------------------
SDES carries each side's SRTP master key and salt in clear text in the SDP
(so the signalling must be protected, SIPS/TLS, for real secrecy; a load
generator keys the media anyway). Each side sends with its own key; each
decrypts with the peer's. The calls, in order::

    offerer:   ours = offer_crypto(OFFER_SUITES, random_bytes)     # one line per suite
               LocalMedia(proto="RTP/SAVP", crypto=[a.serialise() for a in ours])
    answerer:  ours = offer_crypto(ANSWER_SUITES, random_bytes)    # candidates, one per suite
               line = answer_crypto(offered_values, our_values)    # sdp.build_answer calls it
    both:      keys = negotiated_keys(local_values, remote_values)  # -> SdesKeys for libsrtp

Rules applied (RFC 4568): the syntax of §9.1 (``tag suite inline:key||salt
[|lifetime][|MKI:length] [session-params]``); the answerer takes the first
offered line, in the offerer's order, whose suite and parameters it supports,
and answers with one line of the same tag and suite carrying its own key
(§7.1.2, §5.1.2); an offer with no usable line rejects the stream. Lines
with an MKI, several keys, or session parameters other than ``WSH`` are not
acceptable here (libsrtp through pylibsrtp is keyed with one master key and
default parameters); ``WSH`` is a hint (§6.3.7) and the lifetime is not
enforced (a call never re-keys; libsrtp's own limit is 2^48 packets for
AES-CM, 2^31 for SRTCP). Suites: AES_CM_128_HMAC_SHA1_80 and _32 (RFC 4568
§6.2), AEAD_AES_128_GCM and AEAD_AES_256_GCM (RFC 7714 §14.2); the
AES_256_CM suites of RFC 6188 are not in pylibsrtp and are skipped.

Key material comes from the ``random_bytes`` callable passed in (sans-I/O:
this module never draws randomness itself; the engine passes
``secrets.token_bytes``).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from sipswarm.errors import NegotiationError

__all__ = [
    "ANSWER_SUITES",
    "OFFER_SUITES",
    "SUITES",
    "CryptoAttribute",
    "CryptoSuite",
    "SdesError",
    "SdesKeys",
    "answer_crypto",
    "negotiated_keys",
    "offer_crypto",
    "parse_crypto",
]


class SdesError(NegotiationError):
    """An ``a=crypto`` value is malformed or not supported; the message says which part."""


@dataclass(frozen=True, slots=True)
class CryptoSuite:
    """Key and salt lengths (octets) and RTP auth tag length of one SRTP crypto-suite."""

    name: str
    key_len: int
    salt_len: int
    tag_len: int

    @property
    def key_salt_len(self) -> int:
        return self.key_len + self.salt_len


SUITES: Final = {
    s.name: s
    for s in (
        CryptoSuite("AES_CM_128_HMAC_SHA1_80", 16, 14, 10),  # RFC 4568 §6.2.1
        CryptoSuite("AES_CM_128_HMAC_SHA1_32", 16, 14, 4),  # RFC 4568 §6.2.2
        CryptoSuite("AEAD_AES_128_GCM", 16, 12, 16),  # RFC 7714 §14.2
        CryptoSuite("AEAD_AES_256_GCM", 32, 12, 16),  # RFC 7714 §14.2
    )
}
#: What we offer, in preference order (the answerer picks in this order, §7.1.2).
OFFER_SUITES: Final = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
#: What we accept when answering.
ANSWER_SUITES: Final = tuple(SUITES)

#: Session parameters we can honour (§6.3.7: the window size is a hint).
_IGNORED_PARAMS: Final = ("WSH=",)
_LIFETIME = re.compile(r"(?:2\^)?[0-9]{1,20}")
_MKI = re.compile(r"([0-9]{1,20}):([0-9]{1,3})")


@dataclass(frozen=True, slots=True)
class CryptoAttribute:
    """One ``a=crypto`` value: tag, suite, master key || salt (raw octets), the rest as read."""

    tag: int
    suite: CryptoSuite
    key_salt: bytes
    lifetime: str | None = None
    session_params: tuple[str, ...] = ()

    def serialise(self) -> str:
        """The attribute value (after ``a=crypto:``), RFC 4568 §9.1."""
        key = base64.b64encode(self.key_salt).decode("ascii")
        life = f"|{self.lifetime}" if self.lifetime else ""
        params = "".join(f" {p}" for p in self.session_params)
        return f"{self.tag} {self.suite.name} inline:{key}{life}{params}"


def _parse_key_info(value: str, suite: CryptoSuite) -> tuple[bytes, str | None]:
    """``key||salt[|lifetime][|MKI:length]`` (§9.1); an MKI is refused (see module docstring)."""
    key_b64, *rest = value.split("|")
    try:
        raw = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError):
        raise SdesError(f"a=crypto inline key is not valid base64: {key_b64!r}") from None
    if len(raw) != suite.key_salt_len:
        raise SdesError(
            f"a=crypto {suite.name} needs {suite.key_salt_len} octets of key||salt, got {len(raw)}"
        )
    lifetime = None
    for part in rest:
        mki = _MKI.fullmatch(part)
        if mki is not None:
            if int(mki.group(2)) != 0:
                raise SdesError(f"a=crypto MKI {part!r} is not supported (one key per stream)")
        elif _LIFETIME.fullmatch(part) and lifetime is None:
            lifetime = part
        else:
            raise SdesError(f"a=crypto key parameter {part!r} is neither a lifetime nor an MKI")
    return raw, lifetime


def parse_crypto(value: str) -> CryptoAttribute:
    """Parse one ``a=crypto`` value; :class:`SdesError` naming the part when not usable."""
    fields = value.split()
    if len(fields) < 3 or not fields[0].isdigit() or len(fields[0]) > 9:
        raise SdesError(f"a=crypto must be '<tag> <suite> inline:<key>', got {value!r}")
    suite = SUITES.get(fields[1])
    if suite is None:
        raise SdesError(
            f"a=crypto suite {fields[1]!r} is not supported; supported: {', '.join(SUITES)}"
        )
    keys = fields[2].split(";")
    if len(keys) != 1:
        raise SdesError("a=crypto with several master keys needs MKIs, which are not supported")
    method, _, info = keys[0].partition(":")
    if method != "inline":
        raise SdesError(f"a=crypto key method must be 'inline', got {method!r}")
    key_salt, lifetime = _parse_key_info(info, suite)
    params = tuple(fields[3:])
    for p in params:
        if not p.startswith(_IGNORED_PARAMS):
            raise SdesError(f"a=crypto session parameter {p!r} is not supported")
    return CryptoAttribute(int(fields[0]), suite, key_salt, lifetime, params)


def offer_crypto(
    suites: Sequence[str], random_bytes: Callable[[int], bytes]
) -> list[CryptoAttribute]:
    """One line per suite, tags 1..n, each with a fresh key from ``random_bytes(n)``."""
    out = []
    for tag, name in enumerate(suites, start=1):
        suite = SUITES[name]
        key_salt = random_bytes(suite.key_salt_len)
        if len(key_salt) != suite.key_salt_len:
            raise SdesError(f"random_bytes({suite.key_salt_len}) returned {len(key_salt)} octets")
        out.append(CryptoAttribute(tag, suite, key_salt))
    return out


def answer_crypto(offered: Sequence[str], ours: Sequence[str]) -> str:
    """The answer's one ``a=crypto`` value (RFC 4568 §7.1.2) or :class:`SdesError` (488).

    ``offered`` are the offer's values for the stream, ``ours`` our candidate
    lines (one per suite we accept, with our keys). The first offered line
    whose suite we have wins; the answer carries its tag and our key.
    """
    by_suite = {a.suite.name: a for a in map(parse_crypto, ours)}
    problems = []
    for value in offered:
        try:
            theirs = parse_crypto(value)
        except SdesError as exc:
            problems.append(str(exc))
            continue
        mine = by_suite.get(theirs.suite.name)
        if mine is not None:
            return CryptoAttribute(theirs.tag, mine.suite, mine.key_salt).serialise()
        problems.append(f"suite {theirs.suite.name} is not enabled here")
    if not offered:
        problems.append("the offer has no a=crypto line")
    raise SdesError(
        "SRTP (SDES) offer has no acceptable a=crypto line: "
        + "; ".join(problems)
        + f"; supported suites {', '.join(by_suite)}"
    )


@dataclass(frozen=True, slots=True)
class SdesKeys:
    """What libsrtp needs: the suite, our key||salt (we send), the peer's (we receive)."""

    suite: CryptoSuite
    local_key_salt: bytes
    remote_key_salt: bytes
    tag: int


def negotiated_keys(local: Sequence[str], remote: Sequence[str]) -> SdesKeys:
    """Pair our ``a=crypto`` values with the peer's by tag and suite (RFC 4568 §7.1.3).

    Works from either side: the answer holds exactly one line, and its tag
    picks the offer's line. :class:`SdesError` (the call is not usable) when
    the answer holds none, several, or one whose tag or suite was not offered.
    """
    mine, theirs = _parse_all(local), _parse_all(remote)
    if not mine or not theirs:
        side = "our SDP" if not mine else "the peer's SDP"
        raise SdesError(f"SRTP (SDES) needs a=crypto lines on both sides; {side} has none")
    if len(mine) > 1 and len(theirs) > 1:
        raise SdesError("SRTP (SDES): the answer must hold exactly one a=crypto line (§7.1.2)")
    for a in mine:
        for b in theirs:
            if a.tag == b.tag and a.suite == b.suite:
                return SdesKeys(a.suite, a.key_salt, b.key_salt, a.tag)
    raise SdesError(
        "SRTP (SDES): the answer's a=crypto tag and suite match no offered line: "
        f"ours {[(a.tag, a.suite.name) for a in mine]}, "
        f"theirs {[(b.tag, b.suite.name) for b in theirs]}"
    )


def _parse_all(values: Sequence[str]) -> list[CryptoAttribute]:
    """Usable lines; an offer's unusable lines are skipped (another one may be answered)."""
    out = []
    for v in values:
        try:
            out.append(parse_crypto(v))
        except SdesError:
            if len(values) == 1:  # the one line of an answer: nothing else to use
                raise
    return out
