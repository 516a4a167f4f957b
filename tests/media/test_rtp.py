"""RTP header pack/unpack by literal bytes (RFC 3550 §5.1)."""

from __future__ import annotations

import pytest

from sipswarm.media.rtp import RtpHeader, RtpPacketWriter, build_rtp, parse_rtp_header

# V=2 P=0 X=0 CC=0 | M=1 PT=0 | seq 0x1234 | ts 0x00000a00 | ssrc 0xdeadbeef | payload
LITERAL = bytes.fromhex("80 80 1234 00000a00 deadbeef") + b"\xff" * 4


def test_parse_literal_packet() -> None:
    hdr = parse_rtp_header(LITERAL)
    assert hdr == RtpHeader(0, True, 0x1234, 0xA00, 0xDEADBEEF, 12, 4)


def test_build_matches_literal() -> None:
    assert build_rtp(0, 0x1234, 0xA00, 0xDEADBEEF, b"\xff" * 4, marker=True) == LITERAL


def test_csrc_extension_and_padding_are_skipped() -> None:
    # CC=2, X=1, P=1: 2 CSRCs, extension of 1 word, payload 3 bytes, 2 padding bytes
    data = (
        bytes.fromhex("b2 08 0001 00000010 00000001")
        + bytes.fromhex("00000002 00000003")  # CSRCs
        + bytes.fromhex("bede 0001 11223344")  # RFC 8285 one-byte extension, 1 word
        + b"abc"
        + b"\x00\x02"  # padding, last octet = 2
    )
    hdr = parse_rtp_header(data)
    assert hdr is not None
    assert hdr.payload_type == 8 and not hdr.marker
    assert data[hdr.payload_offset : hdr.payload_offset + hdr.payload_length] == b"abc"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x00",  # too short
        bytes.fromhex("40 00 0001 00000000 00000001"),  # version 1
        bytes.fromhex("c0 00 0001 00000000 00000001"),  # version 3
        bytes.fromhex("81 00 0001 00000000 00000001"),  # CC=1 but no CSRC
        bytes.fromhex("90 00 0001 00000000 00000001 bede"),  # X=1, extension header cut
        bytes.fromhex("90 00 0001 00000000 00000001 bede 0009"),  # extension longer than data
        bytes.fromhex("a0 00 0001 00000000 00000001 00"),  # padding count 0
        bytes.fromhex("a0 00 0001 00000000 00000001 aa 20"),  # padding past the header
        bytes.fromhex("80 c8 0006 00000000 00000001"),  # RTCP SR (PT 200 = M + 72)
        b"\x80" + b"\x00" * 2000,  # larger than an MTU
    ],
)
def test_garbage_is_rejected_without_raising(data: bytes) -> None:
    assert parse_rtp_header(data) is None


def test_writer_in_place_sequence_timestamp_marker_and_wrap(
    writer_cls: type[RtpPacketWriter],
) -> None:
    w = writer_cls(
        ssrc=0x01020304, payload_type=8, sequence=0xFFFF, timestamp=0xFFFFFF60, timestamp_step=160
    )
    first = bytes(w.write(b"\x01" * 160))
    assert first[:12] == bytes.fromhex("80 88 ffff ffffff60 01020304")
    assert len(first) == 172
    second = bytes(w.write(b"\x02" * 80))
    # sequence wraps to 0, timestamp wraps mod 2^32, marker only on the first packet
    assert second[:12] == bytes.fromhex("80 08 0000 00000000 01020304")
    assert second[12:] == b"\x02" * 80
    w.mark_next()
    w.set_payload_type(0)
    third = parse_rtp_header(w.write(b"\x03"))
    assert third is not None and third.marker and third.payload_type == 0 and third.sequence == 1
    w.advance_timestamp(2)
    fourth = parse_rtp_header(w.write(b"\x04"))
    assert fourth is not None and fourth.sequence == 2 and fourth.timestamp == 160 * 4


def test_writer_rejects_bad_payload_type(writer_cls: type[RtpPacketWriter]) -> None:
    with pytest.raises(ValueError, match="payload_type"):
        writer_cls(ssrc=1, payload_type=200, sequence=0, timestamp=0, timestamp_step=160)
