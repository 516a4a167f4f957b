"""media/sdp.py per-call shortcuts: the same bytes and results as the full offer/answer path."""

from __future__ import annotations

import pytest

from sipswarm.errors import NegotiationError
from sipswarm.media import sdp
from sipswarm.media.codecs import codec_by_name
from sipswarm.media.sdp import (
    LocalMedia,
    answer_body,
    answered_media,
    apply_answer,
    apply_answer_body,
    build_answer,
    build_offer,
    parse_sdp,
)

PCMU, PCMA = codec_by_name("PCMU"), codec_by_name("PCMA")
THEIRS = LocalMedia(address="127.0.0.2", port=30000, codecs=[PCMA, PCMU])
OURS = LocalMedia(address="127.0.0.1", port=9, codecs=[PCMU], direction="inactive", rtcp_port=9)


def _offer(session_id: int, local: LocalMedia = THEIRS) -> bytes:
    return build_offer(local, session_id=session_id).serialise()


def test_answer_body_gives_the_full_path_bytes_for_each_session_id() -> None:
    sdp._ANSWERS.clear()
    for offer_id, answer_id in ((11, 1001), (12, 1002), (13, 99999)):
        body, media = answer_body(_offer(offer_id), OURS, answer_id)
        offer = parse_sdp(_offer(offer_id))
        full = build_answer(offer, OURS, session_id=answer_id)
        assert body == full.serialise()
        assert media == answered_media(offer, full)
    assert len(sdp._ANSWERS) == 1  # three offers of one shape: one entry
    assert b"o=sipswarm 99999 0 IN IP4 127.0.0.1\r\n" in body


def test_answer_body_raises_as_build_answer_and_remembers_nothing() -> None:
    sdp._ANSWERS.clear()
    only_pcma = LocalMedia(address="127.0.0.2", port=30000, codecs=[PCMA])
    with pytest.raises(NegotiationError, match="no acceptable audio stream"):
        answer_body(_offer(1, only_pcma), OURS, 5)
    assert sdp._ANSWERS == {}


def test_apply_answer_body_matches_apply_answer_and_keys_on_everything_but_origin() -> None:
    sdp._APPLIED.clear()
    offer = build_offer(OURS, session_id=7)
    for sid, port in ((1, 6000), (2, 6000), (3, 6002)):
        answer = build_answer(offer, _their_answer(port), session_id=sid).serialise()
        got = apply_answer_body(offer, offer.serialise(), answer)
        assert got == apply_answer(offer, parse_sdp(answer))
        assert got.remote_rtp == ("127.0.0.2", port)
    assert len(sdp._APPLIED) == 2  # the port change is a new entry, the o= change is not


def _their_answer(port: int) -> LocalMedia:
    return LocalMedia(address="127.0.0.2", port=port, codecs=[PCMU])


def test_sdes_bodies_are_never_remembered() -> None:
    sdp._ANSWERS.clear()
    keyed = LocalMedia(address="127.0.0.2", port=30000, codecs=[PCMU], proto="RTP/SAVP",
                       crypto=("1 AES_CM_128_HMAC_SHA1_80 inline:" + "A" * 40,))  # fmt: skip
    ours = LocalMedia(address="127.0.0.1", port=9, codecs=[PCMU], proto="RTP/SAVP",
                      crypto=("1 AES_CM_128_HMAC_SHA1_80 inline:" + "B" * 40,))  # fmt: skip
    body, _ = answer_body(_offer(1, keyed), ours, 5)
    assert b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" in body and sdp._ANSWERS == {}


def test_caches_are_bounded() -> None:
    sdp._ANSWERS.clear()
    for port in range(sdp.CACHE_SIZE + 5):
        local = LocalMedia(address="127.0.0.2", port=20000 + 2 * port, codecs=[PCMU])
        answer_body(_offer(1, local), OURS, 5)
    assert 0 < len(sdp._ANSWERS) <= sdp.CACHE_SIZE
