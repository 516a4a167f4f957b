"""SDP parsing/serialising with literal bodies from real UAs, and RFC 3264 offer/answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipswarm.errors import NegotiationError, SipswarmError
from sipswarm.media.codecs import G722, OPUS, PCMA, PCMU
from sipswarm.media.sdp import (
    LocalMedia,
    SdpError,
    answered_media,
    apply_answer,
    build_answer,
    build_offer,
    parse_sdp,
    reoffer,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "sdp"
FILES = sorted(DATA.glob("*.sdp"))


def body(name: str) -> bytes:
    return (DATA / name).read_bytes()


def crlf(text: str) -> bytes:
    return "".join(line + "\r\n" for line in text.strip("\n").split("\n")).encode()


def local(port: int = 30000, **kw: object) -> LocalMedia:
    kw.setdefault("codecs", [PCMU, PCMA])
    return LocalMedia("127.0.0.1", port, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_real_bodies_round_trip_byte_for_byte(path: Path) -> None:
    raw = path.read_bytes()
    sdp = parse_sdp(raw)
    assert sdp.serialise() == raw.replace(b"\n", b"\r\n")
    assert parse_sdp(sdp.serialise()) == sdp


def test_pjsua_offer_fields() -> None:
    sdp = parse_sdp(body("pjsua_offer.sdp"))
    assert sdp.origin.session_id == 3908785435 and sdp.session_name == "pjmedia"
    assert sdp.connection is None
    (m,) = sdp.media
    assert m.connection is not None and m.connection.address == "127.0.0.1"
    assert m.formats == ["96", "9", "8", "0", "101", "102"]
    maps = m.rtpmaps()
    assert (maps[96].name, maps[96].clock_rate, maps[96].channels) == ("opus", 48000, 2)
    assert maps[102].name == "telephone-event" and maps[102].clock_rate == 8000
    assert m.fmtps() == {96: "useinbandfec=1", 101: "0-16", 102: "0-16"}
    assert m.rtcp_address() == (4001, "127.0.0.1")
    assert sdp.attribute("X-nat") == "0"
    assert sdp.direction_of(m) == "sendrecv"


def test_crypto_and_unknown_attributes_are_kept() -> None:
    sdp = parse_sdp(body("sdes_srtp_offer.sdp"))
    crypto = sdp.media[0].attribute_values("crypto")
    assert len(crypto) == 2 and crypto[1].endswith("|2^20|1:32")
    video = parse_sdp(body("video_first_offer.sdp"))
    assert video.media[1].attribute("x-unknown-attribute") == "kept as is"
    assert ("i", "voice") in video.media[1].lines
    assert video.attribute("tool") == "softphone 1.0"


def test_ptime_maxptime_mux() -> None:
    m = parse_sdp(body("asterisk_offer.sdp")).media[0]
    assert (m.ptime, m.maxptime, m.rtcp_mux) == (20, 150, False)
    k = parse_sdp(body("kamailio_relayed_baresip.sdp")).media[0]
    assert k.ptime == 30 and k.rtcp_mux and k.attribute("rtcp-rsize") == ""


def test_lf_and_missing_s_t_are_tolerated() -> None:
    sdp = parse_sdp("v=0\no=- 1 1 IN IP4 127.0.0.1\nm=audio 5004 RTP/AVP 0   \n")
    assert sdp.session_name == "-" and sdp.media[0].port == 5004
    assert b"\r\nt=0 0\r\n" in sdp.serialise()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "start with v=0"),
        ("hello world", "not '<type>=<value>'"),
        ("v=1\r\no=- 1 1 IN IP4 127.0.0.1\r\n", "start with v=0"),
        ("v=0\r\ns=-\r\n", "no o= line"),
        ("v=0\r\no=- x 1 IN IP4 127.0.0.1\r\n", "session id and version"),
        ("v=0\r\no=- 1 1 IN IP4\r\n", "6 fields"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nm=audio abc RTP/AVP 0\r\n", "port must be a number"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 70000 RTP/AVP 0\r\n", "0-65535"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nm=audio\r\n", "m= needs"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nc=IN IP4\r\n", "c= needs"),
        ("v=0\r\n" + "a=x\r\n" * 10000, "exceeds"),
    ],
)
def test_malformed_bodies_raise_sdp_error(text: str, message: str) -> None:
    with pytest.raises(SdpError, match=message):
        parse_sdp(text.encode())


def test_mutated_bodies_raise_only_documented_errors() -> None:
    """Every truncation and single-byte corruption: a result, SdpError or NegotiationError."""
    raw = body("pjsua_offer.sdp")
    variants = [raw[:i] for i in range(len(raw))]
    variants += [raw[:i] + b"\x00" + raw[i + 1 :] for i in range(0, len(raw), 3)]
    variants += [raw[:i] + b" " + raw[i + 1 :] for i in range(1, len(raw), 3)]
    accepted = refused = 0
    for data in variants:
        try:
            offer = parse_sdp(data)
            answer = build_answer(offer, local(), session_id=1)
            answered_media(offer, answer)
            accepted += 1
        except (SdpError, NegotiationError):
            refused += 1
    # a parser that refused everything (or nothing) would pass the loop above unnoticed
    assert accepted > 0 and refused > 0, (accepted, refused)


OFFER_LITERAL = crlf(
    """
v=0
o=sipswarm 42 0 IN IP4 127.0.0.1
s=sipswarm
c=IN IP4 127.0.0.1
t=0 0
m=audio 30000 RTP/AVP 0 8 111 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:111 opus/48000/2
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
"""
)


def test_build_offer_literal() -> None:
    offer = build_offer(local(codecs=[PCMU, PCMA, OPUS]), session_id=42)
    assert offer.serialise() == OFFER_LITERAL


def test_reoffer_bumps_version_and_carries_direction() -> None:
    first = build_offer(local(), session_id=42)
    hold = reoffer(first, local(direction="sendonly"))
    assert (hold.origin.session_id, hold.origin.version) == (42, 1)
    assert hold.direction_of(hold.media[0]) == "sendonly"
    assert reoffer(hold, local()).origin.version == 2


def test_offer_options_mux_rtcp_crypto_ipv6() -> None:
    lm = LocalMedia(
        "::1",
        40000,
        [PCMU],
        rtcp_port=40010,
        rtcp_mux=True,
        crypto=["1 AES_CM_128_HMAC_SHA1_80 inline:abcd"],
        proto="RTP/SAVP",
        telephone_event=False,
        ptime_ms=30,
    )
    text = build_offer(lm, session_id=1).serialise().decode()
    assert "c=IN IP6 ::1\r\n" in text and "m=audio 40000 RTP/SAVP 0\r\n" in text
    assert "a=rtcp:40010\r\na=rtcp-mux\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abcd" in text
    assert "a=ptime:30\r\n" in text and "telephone-event" not in text


def test_answer_to_sipp_literal() -> None:
    offer = parse_sdp(body("sipp_uac.sdp"))
    answer = build_answer(offer, local(), session_id=7)
    assert answer.serialise() == crlf(
        """
v=0
o=sipswarm 7 0 IN IP4 127.0.0.1
s=sipswarm
c=IN IP4 127.0.0.1
t=0 0
m=audio 30000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
a=ptime:20
a=sendrecv
"""
    )
    media = answered_media(offer, answer)
    assert media.codec == PCMU and media.payload_type == 0 and media.telephone_event_pt is None
    assert media.remote_rtp == ("127.0.0.1", 6000) and media.remote_rtcp == ("127.0.0.1", 6001)
    assert media.direction == "sendrecv" and media.sending and media.receiving


def test_answer_follows_offerer_order_and_dynamic_types() -> None:
    offer = parse_sdp(body("asterisk_offer.sdp"))
    # G.729 and GSM unknown: PCMU comes first in the offer although we prefer PCMA
    media = answered_media(offer, build_answer(offer, local(codecs=[PCMA, PCMU]), session_id=1))
    assert media.codec.name == "PCMU" and media.telephone_event_pt == 101
    ans = build_answer(offer, local(codecs=[OPUS]), session_id=1)
    m = ans.media[0]
    assert m.formats == ["107"] and m.rtpmaps()[107].name == "opus"  # no te at 48 kHz offered
    got = answered_media(offer, ans)
    assert got.codec.payload_type == 107 and got.codec.clock_rate == 48000 and got.ptime_ms == 20
    assert got.remote_fmtp == "useinbandfec=1"


def test_pjsua_opus_gets_48k_telephone_event() -> None:
    offer = parse_sdp(body("pjsua_offer.sdp"))
    media = answered_media(offer, build_answer(offer, local(codecs=[OPUS, G722]), session_id=1))
    assert media.codec.name == "opus" and media.payload_type == 96
    assert media.telephone_event_pt == 101  # telephone-event/48000 matches opus' clock
    assert media.remote_rtcp == ("127.0.0.1", 4001)
    g722 = answered_media(offer, build_answer(offer, local(codecs=[G722]), session_id=1))
    assert g722.codec is G722 and g722.telephone_event_pt == 102


def test_rtcp_mux_and_ptime_from_relayed_offer() -> None:
    offer = parse_sdp(body("kamailio_relayed_baresip.sdp"))
    no_mux = answered_media(offer, build_answer(offer, local(), session_id=1))
    assert not no_mux.rtcp_mux and no_mux.remote_rtcp == ("127.0.0.1", 10181)
    assert no_mux.ptime_ms == 30  # the peer asked for 30 ms packets
    answer = build_answer(offer, local(rtcp_mux=True), session_id=1)
    assert answer.media[0].rtcp_mux
    mux = answered_media(offer, answer)
    assert mux.rtcp_mux and mux.remote_rtcp == ("127.0.0.1", 10180)


def test_video_rejected_with_port_zero_and_second_audio_rejected() -> None:
    offer = parse_sdp(body("video_first_offer.sdp"))
    answer = build_answer(offer, local(), session_id=1)
    assert [(m.media, m.port) for m in answer.media] == [
        ("video", 0),
        ("audio", 30000),
        ("audio", 0),
    ]
    media = answered_media(offer, answer)
    assert media.media_index == 1 and media.remote_rtp == ("127.0.0.1", 49170)
    assert parse_sdp(answer.serialise()) == answer


def test_no_common_codec_is_a_negotiation_error_listing_both_sides() -> None:
    text = body("asterisk_offer.sdp").replace(b"18 3 9 107 0 8 101", b"18 3 101")
    with pytest.raises(NegotiationError) as err:
        build_answer(parse_sdp(text), local(), session_id=1)
    message = str(err.value)
    assert "[G729/8000, GSM/8000, telephone-event/8000]" in message
    assert "supported PCMU/8000, PCMA/8000 over RTP/AVP or RTP/AVPF" in message
    offer = parse_sdp(body("sipp_uac.sdp"))
    with pytest.raises(NegotiationError, match=r"offered audio RTP/AVP \[PCMU/8000\].*PCMA/8000"):
        build_answer(offer, local(codecs=[PCMA]), session_id=1)


def test_transport_mismatches_are_rejected() -> None:
    webrtc = parse_sdp(body("webrtc_offer.sdp"))
    with pytest.raises(NegotiationError, match="UDP/TLS/RTP/SAVPF"):
        build_answer(webrtc, local(), session_id=1)
    srtp = parse_sdp(body("sdes_srtp_offer.sdp"))
    with pytest.raises(NegotiationError, match="RTP/SAVP"):
        build_answer(srtp, local(), session_id=1)  # RTP/AVP only
    key = "inline:" + "A" * 40  # 30 octets of key||salt
    keyed = local(proto="RTP/SAVP", crypto=[f"7 AES_CM_128_HMAC_SHA1_80 {key}"])
    with pytest.raises(NegotiationError, match=r"got 36; .*MKI '1:32' is not supported"):
        build_answer(srtp, keyed, session_id=1)  # too long a key, then an MKI (RFC 4568 9.1)
    old_key = b"WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVzcyAoZ2V0"
    srtp = parse_sdp(body("sdes_srtp_offer.sdp").replace(old_key, old_key[:40]))
    answer = build_answer(srtp, keyed, session_id=1)
    media = answered_media(srtp, answer)
    assert media.codec.name == "PCMA" and len(media.remote_crypto) == 2
    # RFC 4568 7.1.2: one line, the offer's tag, our key
    assert answer.media[0].attribute_values("crypto") == [f"1 AES_CM_128_HMAC_SHA1_80 {key}"]


@pytest.mark.parametrize(
    ("offer_file", "expected_answer_dir", "our_dir"),
    [("hold_sendonly.sdp", "recvonly", "recvonly"), ("hold_old_style.sdp", "sendrecv", "recvonly")],
)
def test_hold_offers(offer_file: str, expected_answer_dir: str, our_dir: str) -> None:
    offer = parse_sdp(body(offer_file))
    answer = build_answer(offer, local(codecs=[PCMA]), session_id=1)
    assert answer.direction_of(answer.media[0]) == expected_answer_dir
    media = answered_media(offer, answer)
    assert media.direction == our_dir and not media.sending and media.receiving


def test_reanswer_keeps_version_when_unchanged() -> None:
    offer = parse_sdp(body("sipp_uac.sdp"))
    first = build_answer(offer, local(), session_id=9)
    same = build_answer(offer, local(), session_id=1234, previous_answer=first)
    assert (same.origin.session_id, same.origin.version) == (9, 0)
    held = build_answer(
        parse_sdp(body("hold_sendonly.sdp")), local(), session_id=1, previous_answer=first
    )
    assert (held.origin.session_id, held.origin.version) == (9, 1)


def test_apply_answer_offerer_side() -> None:
    offer = build_offer(local(codecs=[PCMU, PCMA, OPUS], rtcp_mux=True), session_id=1)
    answer = parse_sdp(
        crlf(
            """
v=0
o=- 5 5 IN IP4 127.0.0.2
s=-
c=IN IP4 127.0.0.2
t=0 0
m=audio 6000 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=ptime:40
a=rtcp-mux
a=recvonly
"""
        )
    )
    media = apply_answer(offer, answer)
    assert media.codec is PCMA and media.telephone_event_pt == 101 and media.ptime_ms == 40
    assert media.remote_rtp == media.remote_rtcp == ("127.0.0.2", 6000) and media.rtcp_mux
    assert media.direction == "sendonly"


def test_apply_answer_rejects_rfc3264_violations() -> None:
    offer = build_offer(local(), session_id=1)
    bad_codec = parse_sdp(
        crlf("v=0\no=- 1 1 IN IP4 h\nc=IN IP4 127.0.0.1\nm=audio 6000 RTP/AVP 18")
    )
    with pytest.raises(NegotiationError, match="chose no offered audio codec"):
        apply_answer(offer, bad_codec)
    rejected = parse_sdp(crlf("v=0\no=- 1 1 IN IP4 h\nc=IN IP4 127.0.0.1\nm=audio 0 RTP/AVP 0"))
    with pytest.raises(NegotiationError, match="rejected every audio stream"):
        apply_answer(offer, rejected)
    two = parse_sdp(
        crlf("v=0\no=- 1 1 IN IP4 h\nc=IN IP4 h\nm=audio 1 RTP/AVP 0\nm=video 0 RTP/AVP 99")
    )
    with pytest.raises(NegotiationError, match="2 m= lines, the offer had 1"):
        apply_answer(offer, two)
    no_c = parse_sdp(crlf("v=0\no=- 1 1 IN IP4 h\nm=audio 6000 RTP/AVP 0"))
    with pytest.raises(SdpError, match="no c= line"):
        apply_answer(offer, no_c)
    assert issubclass(SdpError, SipswarmError)


def test_local_misconfiguration() -> None:
    offer = parse_sdp(body("sipp_uac.sdp"))
    with pytest.raises(NegotiationError, match="direction must be one of"):
        build_answer(offer, local(direction="both"), session_id=1)
    with pytest.raises(NegotiationError, match="no audio codec"):
        build_offer(local(codecs=[]), session_id=1)
