"""The per-message shortcuts of the SIP core give the same results as the long way:
derived config strings, request rendering, memoised parses (bounded), digest parsing."""

from __future__ import annotations

import dataclasses
import gc
import weakref

import pytest
from sipwire import header, make_stack, reply

from sipswarm.sip import fastparse
from sipswarm.sip.call import Call
from sipswarm.sip.config import Account, StackConfig
from sipswarm.sip.digest import parse_challenge
from sipswarm.sip.events import CallAnswered, CallEnded, CallFailed, CallTeardownFailed
from sipswarm.sip.fastparse import parse_host_port, parse_top_via
from sipswarm.sip.message import SipMessage, parse_message
from sipswarm.sip.request import RequestSpec
from sipswarm.sip.stack import SipStack

SPEC = RequestSpec(
    "INVITE",
    "sip:bob@127.0.0.1:5062",
    "<sip:alice@127.0.0.1>;tag=t1",
    "<sip:bob@127.0.0.1>",
    "c1",
    1,
    ("127.0.0.1", 5062),
    contact="<sip:alice@127.0.0.1:5061>",
    routes=["<sip:127.0.0.1:5060;lr>"],
    extra="Allow: INVITE, ACK\r\n",
    body=b"v=0\r\n",
)


def test_render_bytes() -> None:
    config = StackConfig("127.0.0.1", 5061, user_agent="ua")
    assert SPEC.render(config, "z9hG4bKb1", "Proxy-Authorization: Digest x\r\n") == (
        b"INVITE sip:bob@127.0.0.1:5062 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5061;rport;branch=z9hG4bKb1\r\n"
        b"Max-Forwards: 70\r\n"
        b"Route: <sip:127.0.0.1:5060;lr>\r\n"
        b"From: <sip:alice@127.0.0.1>;tag=t1\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: c1\r\n"
        b"CSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.1:5061>\r\n"
        b"Proxy-Authorization: Digest x\r\nAllow: INVITE, ACK\r\nUser-Agent: ua\r\n"
        b"Content-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n"
    )
    ack = SPEC.render_ack(config, "z9hG4bKb1", "<sip:bob@127.0.0.1>;tag=x")
    assert ack.startswith(b"ACK sip:bob@127.0.0.1:5062 SIP/2.0\r\n")
    assert b"Route: <sip:127.0.0.1:5060;lr>\r\n" in ack and b"CSeq: 1 ACK\r\n" in ack
    assert ack.endswith(b"User-Agent: ua\r\nContent-Length: 0\r\n\r\n")


def test_config_strings_follow_the_fields() -> None:
    config = StackConfig("127.0.0.1", 5061)
    assert config.sent_by == "127.0.0.1:5061" and not config.reliable
    moved = dataclasses.replace(
        config, public_host="192.0.2.1", public_port=7000, transport="tcp", max_forwards=9
    )
    assert moved.sent_by == "192.0.2.1:7000" and moved.reliable
    data = SPEC.render(moved, "z9hG4bKb2")
    assert b"Via: SIP/2.0/TCP 192.0.2.1:7000;rport;branch=z9hG4bKb2\r\nMax-Forwards: 9\r\n" in data
    assert moved != config and dataclasses.replace(moved) == moved


def test_next_is_the_same_request_one_cseq_later() -> None:
    nxt = SPEC.next()
    assert nxt.cseq == 2
    assert dataclasses.replace(nxt, cseq=1) == SPEC


RESPONSE = (
    "SIP/2.0 180 Ringing\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;rport=5061;branch=z9hG4bKb1;received=127.0.0.1\r\n"
    "Record-Route: <sip:127.0.0.1;lr>\r\n"
    "From: <sip:alice@127.0.0.1>;tag=t1\r\nTo: <sip:bob@127.0.0.1>;tag=r1\r\n"
    "Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
)


def _parse(text: str) -> SipMessage:
    msg = parse_message(text.encode())
    assert isinstance(msg, SipMessage)
    return msg


def test_repeated_header_lines_parse_alike_and_apart() -> None:
    first, second = _parse(RESPONSE), _parse(RESPONSE)
    assert first.headers == second.headers
    assert first.headers["record-route"] == ["<sip:127.0.0.1;lr>"]
    first.headers["record-route"].append("x")  # each message owns its lists
    assert second.headers["record-route"] == ["<sip:127.0.0.1;lr>"]
    assert first.top_via.params["received"] == "127.0.0.1" and second.branch == "z9hG4bKb1"


def test_a_bad_line_stays_bad_after_good_ones() -> None:
    _parse(RESPONSE)
    bad = RESPONSE.replace("Content-Length: 0", "Content Length: 0")
    assert not isinstance(parse_message(bad.encode()), SipMessage)
    assert not isinstance(parse_message(bad.encode()), SipMessage)
    no_colon = RESPONSE.replace("Content-Length: 0", "Content-Length")
    assert not isinstance(parse_message(no_colon.encode()), SipMessage)


def test_host_port_memo_stays_bounded_under_a_flood() -> None:
    for i in range(fastparse.MEMO_SIZE + 50):
        parse_host_port(f"sip:u{i}@127.0.0.1:5060")
    assert len(fastparse._HOST_PORTS) <= fastparse.MEMO_SIZE


def test_via_and_memoised_host_port_are_the_parsed_values() -> None:
    value = ["SIP/2.0/UDP 127.0.0.1:5061;rport=5061;branch=z9hG4bKv1"]
    once, again = parse_top_via(value), parse_top_via(list(value))
    assert (again.host, again.port, again.branch) == ("127.0.0.1", 5061, "z9hG4bKv1")
    assert once.params == again.params == {"rport": "5061", "branch": "z9hG4bKv1"}
    with pytest.raises(ValueError):
        parse_top_via(["SIP/2.0/UDP"])
    with pytest.raises(ValueError):
        parse_host_port("sip:")
    with pytest.raises(ValueError):
        parse_host_port("sip:")  # a failure is not remembered as a value
    assert parse_host_port("sip:bob@127.0.0.1:5062;maddr=10.0.0.1") == (
        "sip",
        "127.0.0.1",
        5062,
        {"maddr": "10.0.0.1"},
    )


@pytest.mark.parametrize(
    ("qop", "options"),
    [('"auth"', ("auth",)), ("auth", ("auth",)), ('" auth-int , auth "', ("auth-int", "auth"))],
)
def test_challenge_qop_forms(qop: str, options: tuple[str, ...]) -> None:
    ch = parse_challenge(f'Digest realm="r", nonce="n", qop={qop}')
    assert ch is not None and ch.qop == options


def test_challenge_quoted_pairs() -> None:
    ch = parse_challenge('Digest realm="a\\"b\\\\c", nonce="n\\,1", opaque=""')
    assert ch is not None
    assert (ch.realm, ch.nonce, ch.opaque, ch.qop) == ('a"b\\c', "n,1", "", ())
    assert parse_challenge('Digest realm="r" nonce="n"') is None  # no comma between


# -- the digest flow starts only when a call's request is challenged -----------------------
PEER = ("127.0.0.1", 5099)
ACC = Account("1000", "sip.test", "secret1000")


def _challenge(status: int, nonce: str, stale: bool = False) -> str:
    name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    flag = ", stale=true" if stale else ""
    return f'{name}: Digest realm="sip.test", nonce="{nonce}", qop="auth"{flag}\r\n'


def _sent(stack: SipStack) -> list[bytes]:
    return [data for data, _ in stack.messages_to_send()]


def _answered_call(stack: SipStack) -> tuple[Call, bytes]:
    call = stack.invite("ep", ACC, "sip:2000@127.0.0.1:5099", b"v=0\r\n", 0.0)
    (invite,) = _sent(stack)
    ok = reply(invite, 200, "OK", to_tag="b", extra="Contact: <sip:2000@127.0.0.1:5099>\r\n")
    stack.receive_message(ok, PEER, 0.1)
    assert header(_sent(stack)[0], "CSeq") == "1 ACK"
    assert [type(e) for e in stack.events_received()] == [CallAnswered]
    return call, invite


def test_challenged_bye_is_answered_with_the_next_cseq() -> None:
    stack = make_stack(5070, "a")
    call, _ = _answered_call(stack)
    stack.bye(call, 1.0)
    (bye,) = _sent(stack)
    assert header(bye, "CSeq") == "2 BYE"
    stack.receive_message(reply(bye, 401, "U", extra=_challenge(401, "n1")), PEER, 1.1)
    (retry,) = _sent(stack)
    assert header(retry, "CSeq") == "3 BYE" and "Authorization" in retry.decode()
    assert header(retry, "Call-ID") == header(bye, "Call-ID")
    stack.receive_message(reply(retry, 200, "OK"), PEER, 1.2)
    (ended,) = stack.events_received()
    assert isinstance(ended, CallEnded) and ended.by == "local"


def test_bye_refused_without_challenge_is_not_retried() -> None:
    stack = make_stack(5070, "a")
    call, _ = _answered_call(stack)
    stack.bye(call, 1.0)
    (bye,) = _sent(stack)
    stack.receive_message(reply(bye, 403, "Forbidden"), PEER, 1.1)
    assert _sent(stack) == []
    (failed,) = stack.events_received()
    assert isinstance(failed, CallTeardownFailed) and failed.code == 403


@pytest.mark.parametrize(("stale", "retried"), [(False, False), (True, True)])
def test_second_invite_challenge_only_answered_when_stale(stale: bool, retried: bool) -> None:
    stack = make_stack(5070, "a")
    stack.invite("ep", ACC, "sip:2000@127.0.0.1:5099", b"v=0\r\n", 0.0)
    (invite,) = _sent(stack)
    stack.receive_message(reply(invite, 407, "P", to_tag="p", extra=_challenge(407, "n1")), PEER, 0)
    _ack, second = _sent(stack)
    assert header(second, "CSeq") == "2 INVITE" and "Proxy-Authorization" in second.decode()
    again = reply(second, 407, "P", to_tag="p", extra=_challenge(407, "n2", stale))
    stack.receive_message(again, PEER, 0.1)
    sent = _sent(stack)
    assert header(sent[0], "CSeq") == "2 ACK"
    if retried:
        assert header(sent[1], "CSeq") == "3 INVITE" and 'nonce="n2"' in sent[1].decode()
        assert stack.events_received() == []
    else:
        assert len(sent) == 1
        (failed,) = stack.events_received()
        assert isinstance(failed, CallFailed) and failed.code == 407


# -- sipmessage's shared exceptions keep none of our frames --------------------------------
BAD_VIA = (
    "OPTIONS sip:bob@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;;branch=\r\n"
    "Max-Forwards: 70\r\nFrom: <sip:carol@127.0.0.1>;tag=1\r\nTo: <sip:bob@127.0.0.1>\r\n"
    "Call-ID: leak-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize(
    "data",
    [
        BAD_VIA,  # top Via falls back to sipmessage's Via parser, which fails
        BAD_VIA.replace("5099;;branch=", "5099;branch=z9hG4bK1").replace(
            "<sip:carol@127.0.0.1>;tag=1", "carol <sip:carol@127.0.0.1>>;tag=1"
        ),  # From falls back to sipmessage's Address parser, which fails
    ],
    ids=["via", "from"],
)
def test_a_failed_sipmessage_parse_keeps_no_stack_alive(data: str) -> None:
    # sipmessage raises module-level ValueError instances: the traceback of the last
    # raise stayed on them, and with it our frames and the whole stack they held.
    stack = make_stack(5070, "s")
    stack.listen("bob", "bob")
    core = weakref.ref(stack._core)
    stack.receive_message(data.encode(), PEER, 0.0)
    assert stack.counters["malformed"] == 1 and stack.counters["internal_errors"] == 0
    del stack
    gc.collect()
    assert core() is None
