"""sip/framing.py: stream framing by Content-Length, fed literal bytes."""

from __future__ import annotations

import pytest

from sipswarm.sip.framing import MAX_MESSAGE_SIZE, StreamFramer

OPTIONS = (
    b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
    b"Call-ID: a@b\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
BODY = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
INVITE = (
    b"INVITE sip:1001@127.0.0.1 SIP/2.0\r\n"
    b"Call-ID: c@d\r\n"
    b"l: " + str(len(BODY)).encode() + b"\r\n"
    b"Content-Type: application/sdp\r\n"
    b"\r\n" + BODY
)
RESPONSE = b"SIP/2.0 200 OK\r\nCSeq: 1 OPTIONS\r\ncontent-LENGTH  :  0\r\n\r\n"


def frame(*chunks: bytes) -> tuple[StreamFramer, list[bytes]]:
    framer = StreamFramer()
    out: list[bytes] = []
    for chunk in chunks:
        framer.receive_data(chunk)
        out += framer.messages_received()
    return framer, out


def test_one_message_in_one_read() -> None:
    framer, out = frame(OPTIONS)
    assert out == [OPTIONS]
    assert framer.error is None and framer.buffered == 0


def test_many_messages_in_one_read_keep_order() -> None:
    _, out = frame(OPTIONS + INVITE + RESPONSE)
    assert out == [OPTIONS, INVITE, RESPONSE]


def test_byte_by_byte_delivery() -> None:
    stream = OPTIONS + INVITE
    framer, out = frame(*(stream[i : i + 1] for i in range(len(stream))))
    assert out == [OPTIONS, INVITE]
    assert framer.error is None


def test_body_split_waits_for_content_length() -> None:
    framer, out = frame(INVITE[:-5])
    assert out == [] and framer.buffered == len(INVITE) - 5
    framer.receive_data(INVITE[-5:])
    assert framer.messages_received() == [INVITE]


def test_compact_and_odd_case_content_length() -> None:
    _, out = frame(INVITE + RESPONSE)
    assert out == [INVITE, RESPONSE]


def test_folded_content_length_value() -> None:
    # RFC 3261 §7.3.1 header folding: the value continues on the next line.
    msg = b"SIP/2.0 180 Ringing\r\nContent-Length:\r\n 3\r\n\r\nabc"
    _, out = frame(msg)
    assert out == [msg]


def test_keepalive_ping_and_pong_are_counted_not_framed() -> None:
    framer, out = frame(b"\r\n\r\n", OPTIONS, b"\r\n", RESPONSE, b"\r\n\r\n\r\n\r\n")
    assert out == [OPTIONS, RESPONSE]
    assert framer.pings_received == 3
    assert framer.pongs_received == 1
    assert framer.pings_to_answer() == 3
    assert framer.pings_to_answer() == 0


def test_missing_content_length_is_fatal() -> None:
    framer, out = frame(b"SIP/2.0 200 OK\r\nCSeq: 1 OPTIONS\r\n\r\n" + OPTIONS)
    assert out == []
    assert framer.error is not None and "Content-Length" in framer.error
    framer.receive_data(OPTIONS)  # after an error everything is dropped and counted
    assert framer.messages_received() == []
    assert framer.bytes_dropped > len(OPTIONS)


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: -1\r\n",
        b"Content-Length: 0x10\r\n",
        b"Content-Length: 99999999999999\r\n",
        b"Content-Length: 1\r\nl: 2\r\n",
    ],
    ids=["negative", "hex", "huge", "conflicting"],
)
def test_bad_content_length_is_fatal(head: bytes) -> None:
    framer, out = frame(b"SIP/2.0 200 OK\r\n" + head + b"\r\n")
    assert out == [] and framer.error is not None


def test_repeated_equal_content_length_is_accepted() -> None:
    msg = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\nl: 0\r\n\r\n"
    assert frame(msg)[1] == [msg]


def test_garbage_start_line_fails_before_blank_line() -> None:
    framer, out = frame(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert out == [] and framer.error is not None and "start-line" in framer.error


def test_message_after_good_one_can_fail_without_losing_the_first() -> None:
    framer, out = frame(OPTIONS + b"\x16\x03\x01garbage\r\n\r\n")
    assert out == [OPTIONS]
    assert framer.error is not None


def test_oversize_body_is_fatal() -> None:
    msg = b"SIP/2.0 200 OK\r\nContent-Length: %d\r\n\r\n" % MAX_MESSAGE_SIZE
    framer, out = frame(msg)
    assert out == [] and framer.error is not None and "MAX_MESSAGE_SIZE" in framer.error


def test_endless_header_block_is_fatal() -> None:
    framer = StreamFramer(max_message_size=1000)
    framer.receive_data(b"SIP/2.0 200 OK\r\n")
    for _ in range(100):
        framer.receive_data(b"X-Pad: " + b"a" * 20 + b"\r\n")
    assert framer.error is not None and "header block" in framer.error
    assert framer.buffered == 0


def test_message_exactly_at_limit_passes() -> None:
    head = b"SIP/2.0 200 OK\r\nContent-Length: %05d\r\n\r\n"
    body_len = 1000 - len(head % 0)
    msg = head % body_len + b"x" * body_len
    framer = StreamFramer(max_message_size=1000)
    framer.receive_data(msg)
    assert framer.messages_received() == [msg]
