"""Malformed and torture messages (tests/data/sip/*.sip): answered or dropped, never raised."""

from __future__ import annotations

from pathlib import Path

import pytest
from sipwire import make_stack, status_of

from sipswarm.sip.events import IncomingCall, MessageDropped
from sipswarm.sip.message import MAX_MESSAGE_SIZE, ParseFailure, parse_message

DATA = Path(__file__).resolve().parents[1] / "data" / "sip"
CASES = sorted(DATA.glob("*.sip"))
PARSE_ERRORS = {"400", "505"}
PEER = ("127.0.0.1", 5099)


def load(path: Path) -> bytes:
    return path.read_bytes().replace(b"\n", b"\r\n")


def test_cases_exist() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_case(path: Path) -> None:
    expected = path.stem.split("_", 1)[0]
    stack = make_stack(5070, "s")
    stack.listen("bob", "bob")
    stack.receive_message(load(path), PEER, 0.0)
    out = stack.messages_to_send()
    events = stack.events_received()
    assert stack.counters["internal_errors"] == 0, events
    if expected == "drop":
        assert out == []
        assert any(isinstance(e, MessageDropped) for e in events)
        return
    assert [status_of(d) for d, _ in out] == [int(expected)]
    assert out[0][1] == PEER
    malformed = stack.counters["malformed"]
    assert malformed == (1 if expected in PARSE_ERRORS else 0)


def test_tortuous_invite_fields() -> None:
    stack = make_stack(5070, "s")
    stack.listen("bob", "bob")
    stack.receive_message(load(DATA / "100_tortuous_invite.sip"), PEER, 0.0)
    (event,) = stack.events_received()
    assert isinstance(event, IncomingCall)
    assert event.call.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert event.sdp_offer.endswith(b"a=rtpmap:31 LPC\r\n")
    assert event.call.dialog is not None
    assert event.call.dialog.remote_tag == "98asjd8"
    assert event.call.dialog.remote_cseq == 9
    assert event.call.dialog.remote_target == "sip:jdrosen@example.com"
    ((data, _),) = stack.messages_to_send()
    # RFC 3581: rport filled, received added; the other Via values copied as they were.
    assert b"192.0.2.2;rport=5099;branch=390skdjuw;received=127.0.0.1" in data
    assert b"z9hG4bK30239" in data


def test_oversized_message_dropped() -> None:
    stack = make_stack(5070, "s")
    big = b"OPTIONS sip:bob@x SIP/2.0\r\n" + b"X: " + b"a" * MAX_MESSAGE_SIZE + b"\r\n\r\n"
    stack.receive_message(big, PEER, 0.0)
    assert stack.messages_to_send() == []
    assert stack.counters["malformed"] == 1


@pytest.mark.parametrize(
    "data",
    [b"", b"\r\n\r\n", b"\r\n", b"\x00" * 50, b"SIP/2.0", b"INVITE\r\n\r\n", bytes(range(256))],
)
def test_garbage_never_raises(data: bytes) -> None:
    stack = make_stack(5070, "s")
    stack.receive_message(data, PEER, 0.0)
    assert stack.messages_to_send() == []
    assert stack.counters["internal_errors"] == 0


def test_keepalive_is_counted_not_malformed() -> None:
    stack = make_stack(5070, "s")
    stack.receive_message(b"\r\n\r\n", PEER, 0.0)
    assert stack.counters["keepalives"] == 1
    assert stack.counters["malformed"] == 0


def test_body_truncated_to_content_length() -> None:
    msg = parse_message(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@h>;tag=1\r\n"
        b"To: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 3\r\n\r\nabcdef"
    )
    assert not isinstance(msg, ParseFailure)
    assert msg.body == b"abc"
    assert msg.status == 200 and msg.method == "OPTIONS"
