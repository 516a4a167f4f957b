"""SDES (RFC 4568): a=crypto syntax, our offer lines, the answer's choice, key pairing, SDP 488s."""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import Callable

import pytest

from sipswarm.errors import NegotiationError
from sipswarm.media.codecs import PCMA, PCMU
from sipswarm.media.sdes import (
    SUITES,
    CryptoAttribute,
    SdesError,
    answer_crypto,
    negotiated_keys,
    offer_crypto,
    parse_crypto,
)
from sipswarm.media.sdp import LocalMedia, answered_media, apply_answer, build_answer, build_offer

# RFC 4568 §9.1 example key (30 octets); 0..29 and 100..129 as easy-to-read keys
RFC_KEY = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"
KEY_A = bytes(range(30))
KEY_B = bytes(range(100, 130))


def fake_random(seed: int = 0) -> Callable[[int], bytes]:
    """Deterministic key material: consecutive byte values from ``seed``."""
    counter = itertools.count(seed)
    return lambda n: bytes((next(counter) & 0xFF) for _ in range(n))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_parse_rfc_example_with_lifetime_and_zero_length_mki_ignored() -> None:
    a = parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20")
    assert a.tag == 1 and a.suite.name == "AES_CM_128_HMAC_SHA1_80"
    assert a.key_salt == base64.b64decode(RFC_KEY) and a.lifetime == "2^20"
    assert a.serialise() == f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20"
    wsh = parse_crypto(f"9 AES_CM_128_HMAC_SHA1_32 inline:{RFC_KEY} WSH=64")
    assert wsh.session_params == ("WSH=64",) and wsh.suite.tag_len == 4


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1 AES_CM_128_HMAC_SHA1_80", "must be '<tag> <suite> inline:<key>'"),
        ("x AES_CM_128_HMAC_SHA1_80 inline:" + RFC_KEY, "must be '<tag>"),
        ("1 F8_128_HMAC_SHA1_80 inline:" + RFC_KEY, "suite 'F8_128_HMAC_SHA1_80' is not supported"),
        ("1 AES_CM_128_HMAC_SHA1_80 uri:" + RFC_KEY, "key method must be 'inline'"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:!!notbase64!!", "not valid base64"),
        (
            "1 AES_CM_128_HMAC_SHA1_80 inline:" + RFC_KEY[:-4],
            "needs 30 octets of key||salt, got 27",
        ),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:" + RFC_KEY + "|2^20|1:4", "MKI '1:4' is not supported"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:" + RFC_KEY + "|junk", "neither a lifetime nor an MKI"),
        (
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20|1:4;inline:{RFC_KEY}|2^20|2:4",
            "several master keys",
        ),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:" + RFC_KEY + " UNENCRYPTED_SRTP", "UNENCRYPTED_SRTP"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:" + RFC_KEY + " KDR=24", "'KDR=24' is not supported"),
    ],
)
def test_unusable_lines_are_refused_naming_the_part(value: str, message: str) -> None:
    with pytest.raises(SdesError, match=re.escape(message)):
        parse_crypto(value)


def test_zero_length_mki_is_no_mki() -> None:
    assert parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|1:0").lifetime is None


def test_offer_lines_take_key_material_from_the_injected_source() -> None:
    lines = offer_crypto(["AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM"], fake_random())
    assert [(a.tag, a.suite.name, len(a.key_salt)) for a in lines] == [
        (1, "AES_CM_128_HMAC_SHA1_80", 30),
        (2, "AEAD_AES_128_GCM", 28),
    ]
    assert lines[0].key_salt == bytes(range(30)) and lines[1].key_salt == bytes(range(30, 58))
    assert parse_crypto(lines[1].serialise()) == lines[1]
    with pytest.raises(SdesError, match="returned 3 octets"):
        offer_crypto(["AES_CM_128_HMAC_SHA1_80"], lambda n: b"abc")


def test_answer_takes_first_supported_offered_line_with_its_tag_and_our_key() -> None:
    offered = [
        f"1 AES_256_CM_HMAC_SHA1_80 inline:{b64(bytes(46))}",  # RFC 6188: not in pylibsrtp
        f"5 AES_CM_128_HMAC_SHA1_32 inline:{b64(KEY_A)}",
        f"6 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY_A)}",
    ]
    ours = [
        CryptoAttribute(1, SUITES["AES_CM_128_HMAC_SHA1_80"], KEY_B).serialise(),
        CryptoAttribute(2, SUITES["AES_CM_128_HMAC_SHA1_32"], KEY_B).serialise(),
    ]
    assert answer_crypto(offered, ours) == f"5 AES_CM_128_HMAC_SHA1_32 inline:{b64(KEY_B)}"
    with pytest.raises(SdesError, match=r"SRTP \(SDES\) offer has no acceptable a=crypto line"):
        answer_crypto(offered[:1], ours)
    with pytest.raises(SdesError, match="the offer has no a=crypto line"):
        answer_crypto([], ours)


def test_keys_pair_by_tag_and_suite_from_both_sides() -> None:
    offer = [
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY_A)}",
        f"2 AES_CM_128_HMAC_SHA1_32 inline:{b64(bytes(30))}",
    ]
    answer = [f"2 AES_CM_128_HMAC_SHA1_32 inline:{b64(KEY_B)}"]
    caller = negotiated_keys(offer, answer)
    callee = negotiated_keys(answer, offer)
    assert caller.suite.name == "AES_CM_128_HMAC_SHA1_32" and caller.tag == 2
    assert (caller.local_key_salt, caller.remote_key_salt) == (bytes(30), KEY_B)
    assert (callee.local_key_salt, callee.remote_key_salt) == (KEY_B, bytes(30))
    wrong_suite = [f"2 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY_B)}"]
    with pytest.raises(SdesError, match="match no offered line"):
        negotiated_keys(offer, wrong_suite)
    with pytest.raises(SdesError, match="the peer's SDP has none"):
        negotiated_keys(offer, [])
    with pytest.raises(SdesError, match="exactly one a=crypto line"):
        negotiated_keys(offer, offer)


def local(proto: str = "RTP/AVP", crypto: tuple[str, ...] = (), port: int = 30000) -> LocalMedia:
    return LocalMedia("127.0.0.1", port, [PCMU, PCMA], crypto=crypto, proto=proto)


def sdes_local(seed: int, port: int, suites: tuple[str, ...]) -> LocalMedia:
    lines = tuple(a.serialise() for a in offer_crypto(suites, fake_random(seed)))
    return local("RTP/SAVP", lines, port)


def test_sdp_offer_answer_round_trip_keys_both_ways() -> None:
    caller = sdes_local(0, 30000, ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"))
    callee = sdes_local(100, 31000, tuple(SUITES))
    offer = build_offer(caller, session_id=1)
    text = offer.serialise().decode()
    assert "m=audio 30000 RTP/SAVP 0 8 101\r\n" in text
    assert text.count("a=crypto:") == 2 and "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" in text
    answer = build_answer(offer, callee, session_id=2)
    [line] = answer.media[0].attribute_values("crypto")
    assert line.startswith("1 AES_CM_128_HMAC_SHA1_80 inline:") and answer.media[0].port == 31000
    ours, theirs = apply_answer(offer, answer), answered_media(offer, answer)
    a, b = (negotiated_keys(m.local_crypto, m.remote_crypto) for m in (ours, theirs))
    assert a.local_key_salt == b.remote_key_salt == bytes(range(30))
    assert a.remote_key_salt == b.local_key_salt == bytes(range(100, 130))


def test_plain_offer_to_sdes_receiver_and_sdes_offer_to_plain_receiver_are_refused() -> None:
    sdes = sdes_local(0, 30000, ("AES_CM_128_HMAC_SHA1_80",))
    plain_offer = build_offer(local(), session_id=1)
    with pytest.raises(NegotiationError, match=r"SRTP \(media.srtp sdes\) is required here"):
        build_answer(plain_offer, sdes, session_id=2)
    sdes_offer = build_offer(sdes, session_id=1)
    with pytest.raises(NegotiationError, match=r"the offer requires SRTP and media\.srtp is off"):
        build_answer(sdes_offer, local(), session_id=2)
    gcm_only = sdes_local(5, 30000, ("AEAD_AES_128_GCM",))
    with pytest.raises(NegotiationError, match="suite AES_CM_128_HMAC_SHA1_80 is not enabled"):
        build_answer(sdes_offer, gcm_only, session_id=2)
