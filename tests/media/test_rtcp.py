"""RTCP builders and parser (RFC 3550 §6) by literal bytes; A.7 interval; RTT arithmetic."""

from __future__ import annotations

import struct

import pytest

from sipswarm.errors import ConfigError
from sipswarm.media.rtcp import (
    ReportBlock,
    SenderInfo,
    build_bye,
    build_receiver_report,
    build_sender_report,
    is_rtcp,
    ntp_from_unix,
    ntp_middle32,
    parse_rtcp,
    rtcp_interval,
    rtt_seconds,
)

BLOCK = ReportBlock(
    ssrc=0xCAFEBABE,
    fraction_lost=64,
    cumulative_lost=-3,
    highest_seq=0x0001_0005,
    jitter=80,
    lsr=0x1234_5678,
    dlsr=0x0001_8000,
)

# SR from SSRC 0x11223344 with one block, then SDES CNAME "ab@x" (written out by hand).
SR_LITERAL = bytes.fromhex(
    "81c8000c"  # V=2 P=0 RC=1, PT=200, length 12 words (52 bytes)
    "11223344"  # sender SSRC
    "e8f1e2d3"
    "80000000"  # NTP 64-bit
    "000003e8"  # RTP timestamp 1000
    "00000032"  # packet count 50
    "00001f40"  # octet count 8000
    "cafebabe"  # block: source SSRC
    "40fffffd"  # fraction 64, cumulative -3 (24-bit two's complement)
    "00010005"  # extended highest sequence
    "00000050"  # jitter 80
    "12345678"  # LSR
    "00018000"  # DLSR 1.5 s
    "81ca0003"  # SDES, SC=1, length 3 words
    "11223344"
    "0104"
    "61624078"
    "0000"  # chunk: CNAME(1) len 4 "ab@x", null + pad
)
BLOCK_BYTES = SR_LITERAL[28:52]


def test_build_sender_report_matches_literal_bytes() -> None:
    info = SenderInfo(ntp_ts=0xE8F1E2D380000000, rtp_ts=1000, packet_count=50, octet_count=8000)
    assert build_sender_report(0x11223344, info, [BLOCK], "ab@x") == SR_LITERAL


def test_parse_sender_report_literal() -> None:
    rep = parse_rtcp(SR_LITERAL)
    assert rep is not None
    assert rep.ssrc == 0x11223344
    assert rep.sender_info == SenderInfo(0xE8F1E2D380000000, 1000, 50, 8000)
    assert rep.blocks == [BLOCK]
    assert rep.cname == "ab@x"
    assert rep.bye is False


def test_receiver_report_empty_is_valid_compound() -> None:
    data = build_receiver_report(7, [], "c")
    # empty RR (RC=0, 8 bytes) + SDES: header, ssrc, type 1 len 1 "c", null, pad -> 12 bytes
    assert data == bytes.fromhex("80c900010000000781ca00020000000701016300")
    rep = parse_rtcp(data)
    assert rep is not None and rep.ssrc == 7 and rep.sender_info is None and rep.blocks == []
    assert rep.cname == "c"


def test_cname_needing_a_full_null_word() -> None:
    # 2 + 2 bytes of item = 4: the null terminator needs a whole extra word
    data = build_receiver_report(1, [], "ab")
    assert data[8:] == bytes.fromhex("81ca0003000000010102616200000000")
    rep = parse_rtcp(data)
    assert rep is not None and rep.cname == "ab"


def test_more_than_31_blocks_spill_into_extra_rr() -> None:
    blocks = [ReportBlock(i + 1, 0, i, 100 + i, 0, 0, 0) for i in range(40)]
    data = build_sender_report(9, SenderInfo(1, 2, 3, 4), blocks, "x")
    assert data[0] == 0x80 | 31 and data[1] == 200
    second = 4 * (struct.unpack_from("!H", data, 2)[0] + 1)
    assert data[second] == 0x80 | 9 and data[second + 1] == 201
    rep = parse_rtcp(data)
    assert rep is not None and rep.blocks == blocks


def test_cumulative_lost_clamped_to_24_bits() -> None:
    big = ReportBlock(1, 300, 10_000_000, 0, -5, 0, 0)
    rep = parse_rtcp(build_receiver_report(2, [big], "x"))
    assert rep is not None
    (blk,) = rep.blocks
    assert blk.cumulative_lost == 0x7FFFFF and blk.fraction_lost == 255 and blk.jitter == 0
    neg = parse_rtcp(build_receiver_report(2, [ReportBlock(1, 0, -9_000_000, 0, 0, 0, 0)], "x"))
    assert neg is not None and neg.blocks[0].cumulative_lost == -0x800000


def test_bye_with_reason_literal() -> None:
    data = build_bye(0x01020304, "end")
    assert data == bytes.fromhex("80c900010102030481cb00020102030403656e64")
    rep = parse_rtcp(data)
    assert rep is not None and rep.bye and rep.bye_reason == "end" and rep.ssrc == 0x01020304


def test_bye_with_cname_blocks_and_padding() -> None:
    data = build_bye(5, "hangup", cname="me", blocks=[BLOCK])
    rep = parse_rtcp(data)
    assert rep is not None and rep.bye and rep.bye_reason == "hangup" and rep.cname == "me"
    assert rep.blocks == [BLOCK]
    assert len(data) % 4 == 0


def test_padding_bit_is_honoured() -> None:
    # RR with P bit and 4 padding octets (the last one says 4)
    data = bytes.fromhex("a1c9000800000001") + BLOCK_BYTES + bytes.fromhex("00000004")
    rep = parse_rtcp(data)
    assert rep is not None and rep.blocks == [BLOCK]


def test_feedback_and_app_packets_are_skipped() -> None:
    rr = build_receiver_report(3, [BLOCK], "x")
    pli = bytes.fromhex("81ce000200000003cafebabe")  # RFC 4585 PSFB PLI
    rep = parse_rtcp(rr + pli)
    assert rep is not None and rep.blocks == [BLOCK]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80",
        b"\x80\xc9\x00\x01",  # length says 8 bytes, only 4 present
        bytes.fromhex("41c9000100000001"),  # version 1
        bytes.fromhex("81c900010000000181"),  # trailing garbage
        bytes.fromhex("81c9000100000001"),  # RC=1 but no block -> truncated
        bytes.fromhex("8060000100000001"),  # PT 96 is RTP, not RTCP
        bytes.fromhex("a0c9000100000000"),  # P bit with 0 padding count
        bytes.fromhex("81ca00020000000101ff6162"),  # SDES item longer than packet
        bytes.fromhex("82cb000100000001"),  # BYE SC=2, one SSRC present
        b"\x00" * 100,
        bytes(range(256)),
    ],
)
def test_garbage_returns_none(data: bytes) -> None:
    assert parse_rtcp(data) is None


def test_parse_never_raises_on_truncations_and_bit_flips() -> None:
    good = SR_LITERAL + build_bye(0x11223344, "bye")
    for cut in range(len(good)):
        parse_rtcp(good[:cut])
    for i in range(len(good)):
        for bit in range(8):
            flipped = bytearray(good)
            flipped[i] ^= 1 << bit
            parse_rtcp(bytes(flipped))
    assert parse_rtcp(good) is not None


def test_is_rtcp_rfc5761_ranges() -> None:
    assert is_rtcp(SR_LITERAL)
    assert is_rtcp(build_receiver_report(1, [], "x"))
    rtp = bytes.fromhex("8000000100000000deadbeef")  # PT 0
    rtp_marker = bytes.fromhex("8080000100000000deadbeef")  # PT 0 + marker -> 128
    dyn = bytes.fromhex("80e0000100000000deadbeef")  # PT 96 + marker -> 224: RTP
    stun = bytes.fromhex("000100002112a442") + b"\x00" * 12
    assert not any(is_rtcp(p) for p in (rtp, rtp_marker, dyn, stun, b"\x81\xc8"))


def test_ntp_conversion() -> None:
    assert ntp_from_unix(0.0) == 2_208_988_800 << 32
    assert ntp_from_unix(1.5) == ((2_208_988_801 << 32) | 0x80000000)
    assert ntp_middle32(0x0123_4567_89AB_CDEF) == 0x4567_89AB


def test_rtt_from_lsr_dlsr() -> None:
    sent = ntp_from_unix(1000.0)
    arrival = ntp_from_unix(1000.0 + 1.5 + 0.040)  # 1.5 s held at the peer, 40 ms RTT
    rtt = rtt_seconds(ntp_middle32(arrival), ntp_middle32(sent), int(1.5 * 65536))
    assert rtt is not None and abs(rtt - 0.040) < 2 / 65536
    assert rtt_seconds(ntp_middle32(arrival), 0, 0) is None
    assert rtt_seconds(100, 200, 0) is None  # negative
    # across the 2**32 wrap of the middle 32 bits
    assert rtt_seconds(0x0000_0010, 0xFFFF_FFF0, 0) == pytest.approx(32 / 65536)


def test_rtcp_interval_a7() -> None:
    # two members, both senders: 2 > 2 * 0.25 so no split; tiny packets -> 5 s floor
    t = rtcp_interval(2, 2, 4000.0, True, 100.0, False, 1.0)
    assert t == pytest.approx(5.0 / (2.71828 - 1.5))
    assert rtcp_interval(2, 2, 4000.0, True, 100.0, True, 1.0) == pytest.approx(t / 2)
    assert rtcp_interval(2, 2, 4000.0, True, 100.0, False, 0.5) == pytest.approx(t / 2)
    # 1000 receivers, 1 sender at 5% of 64 kbit/s = 3200 bit/s = 400 octets/s
    # receivers share 3/4: 300 octets/s over 999 members of 120 octets -> 399.6 s
    recv = rtcp_interval(1000, 1, 3200.0, False, 120.0, False, 1.0)
    assert recv == pytest.approx(120 * 999 / 300 / (2.71828 - 1.5))
    # the sender gets 1/4: 100 octets/s for 1 sender -> 1.2 s, floored at 5 s
    assert rtcp_interval(1000, 1, 3200.0, True, 120.0, False, 1.0) == pytest.approx(t)


@pytest.mark.parametrize("kwargs", [{"rand_factor": 0.4}, {"rand_factor": 1.6}, {"bw": 0.0}])
def test_rtcp_interval_rejects_bad_input(kwargs: dict[str, float]) -> None:
    bw = kwargs.get("bw", 1000.0)
    with pytest.raises(ConfigError, match="rtcp_interval"):
        rtcp_interval(2, 1, bw, True, 100.0, False, kwargs.get("rand_factor", 1.0))


def test_build_rejects_bad_ssrc_and_cname() -> None:
    with pytest.raises(ConfigError, match="ssrc"):
        build_receiver_report(-1, [], "x")
    with pytest.raises(ConfigError, match="cname"):
        build_receiver_report(1, [], "")
    with pytest.raises(ConfigError, match="cname"):
        build_receiver_report(1, [], "x" * 256)
