"""re-INVITE (hold/resume) both ways between two stacks wired in memory: our
re-INVITE and its ACK, the engine answering an incoming one, 491 glare with the
RFC 3261 14.1 back-off, auth on a re-INVITE, failures and timeouts."""

from __future__ import annotations

import pytest
from sipwire import Net, advance, header, make_stack, reply, start_line, status_of

from sipswarm.errors import InvalidState
from sipswarm.sip.config import Account
from sipswarm.sip.events import (
    CallAnswered,
    CallConfirmed,
    IncomingCall,
    IncomingReInvite,
    ReInviteAccepted,
    ReInviteAnswered,
    ReInviteFailed,
)
from sipswarm.sip.stack import SipStack

ACC = Account("1000", "sip.test", "pw1000")
OFFER = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\na=sendrecv\r\n"
ANSWER = b"v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\na=sendrecv\r\n"
HOLD = b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\na=sendonly\r\n"
HELD = b"v=0\r\no=- 2 3 IN IP4 127.0.0.1\r\na=recvonly\r\n"


def established() -> tuple[SipStack, SipStack, Net, object, object]:
    a = make_stack(5001, "a")
    b = make_stack(5002, "b")
    b.listen("bob", "2000")
    net = Net([a, b])
    out = a.invite("alice", ACC, "sip:2000@127.0.0.1:5002", OFFER, 0.0)
    net.run(0.0)
    (incoming,) = net.ev(b)
    assert isinstance(incoming, IncomingCall)
    b.answer(incoming.call, ANSWER, 0.1)
    net.run(0.1)
    assert [type(e) for e in net.ev(a)] == [CallAnswered]
    assert [type(e) for e in net.ev(b)] == [CallConfirmed]
    return a, b, net, out, incoming.call


def test_hold_then_resume_from_the_caller_with_automatic_answer() -> None:
    a, b, net, out, _inc = established()
    a.reinvite(out, HOLD, 1.0)  # type: ignore[arg-type]
    ((reinvite, _),) = a.messages_to_send()
    assert start_line(reinvite) == "INVITE sip:2000@127.0.0.1:5002 SIP/2.0"
    assert header(reinvite, "CSeq") == "2 INVITE" and reinvite.endswith(HOLD)
    assert ";tag=" in header(reinvite, "To") and header(reinvite, "Contact")
    b.receive_message(reinvite, ("127.0.0.1", 5001), 1.0)
    ((ok, _),) = b.messages_to_send()
    assert status_of(ok) == 200 and ok.endswith(ANSWER)  # automatic: current SDP
    a.receive_message(ok, ("127.0.0.1", 5002), 1.0)
    ((ack, _),) = a.messages_to_send()
    assert start_line(ack).startswith("ACK ") and header(ack, "CSeq") == "2 ACK"
    (accepted,) = a.events_received()
    assert isinstance(accepted, ReInviteAccepted) and accepted.sdp_answer == ANSWER
    assert out.local_sdp == HOLD  # type: ignore[attr-defined]
    # a retransmitted 2xx gets the same ACK again, and no second event
    a.receive_message(ok, ("127.0.0.1", 5002), 1.5)
    assert a.messages_to_send() == [(ack, ("127.0.0.1", 5002))]
    assert a.events_received() == []
    b.receive_message(ack, ("127.0.0.1", 5001), 1.0)
    assert [type(e) for e in b.events_received()] == [ReInviteAnswered]
    advance(b, 40.0)
    assert b.counters["2xx_retransmissions"] == 0  # the ACK stopped them
    a.reinvite(out, OFFER, 50.0)  # type: ignore[arg-type]
    net.run(50.0)
    assert [type(e) for e in net.ev(a)] == [ReInviteAccepted]
    assert out.local_sdp == OFFER  # type: ignore[attr-defined]


def test_engine_answers_incoming_reinvite_with_its_own_sdp() -> None:
    a, b, net, out, inc = established()
    b.take_reinvites("bob")
    a.reinvite(out, HOLD, 1.0)  # type: ignore[arg-type]
    net.run(1.0)
    (incoming,) = net.ev(b)
    assert isinstance(incoming, IncomingReInvite) and incoming.sdp_offer == HOLD
    assert [status_of(d) for s, _, d in net.log if s == ("127.0.0.1", 5002)][-1] == 100
    assert net.ev(a) == []
    b.answer_reinvite(inc, HELD, 1.2)  # type: ignore[arg-type]
    net.run(1.2)
    (accepted,) = net.ev(a)
    assert isinstance(accepted, ReInviteAccepted) and accepted.sdp_answer == HELD
    assert inc.local_sdp == HELD and inc.remote_sdp == HOLD  # type: ignore[attr-defined]
    with pytest.raises(InvalidState):
        b.answer_reinvite(inc, HELD, 1.3)  # type: ignore[arg-type]


def test_engine_rejects_incoming_reinvite() -> None:
    a, b, net, out, inc = established()
    b.take_reinvites("bob")
    a.reinvite(out, b"v=0\r\nm=video 0 RTP/AVP 31\r\n", 1.0)  # type: ignore[arg-type]
    net.run(1.0)
    assert [type(e) for e in net.ev(b)] == [IncomingReInvite]
    b.reject_reinvite(inc, 488, 1.1)  # type: ignore[arg-type]
    net.run(1.1)
    (failed,) = net.ev(a)
    assert isinstance(failed, ReInviteFailed) and failed.code == 488
    assert out.local_sdp == OFFER  # type: ignore[attr-defined]
    assert a.counters["internal_errors"] == b.counters["internal_errors"] == 0


def test_glare_491_and_retry_after_back_off() -> None:
    a, b, net, out, inc = established()
    a.reinvite(out, HOLD, 1.0)  # type: ignore[arg-type]
    b.reinvite(inc, HELD, 1.0)  # type: ignore[arg-type]
    net.run(1.0)
    statuses = sorted(status_of(d) for _, _, d in net.log if d.startswith(b"SIP/2.0 491"))
    assert statuses == [491, 491]  # RFC 3261 14.2: each side answers the other 491
    assert net.ev(a) == [] and net.ev(b) == []
    # SequentialIdFactory draws the middle: callee (not Call-ID owner) 0-2 s -> 1.0 s,
    # caller (owner) 2.1-4 s -> 3.05 s.
    assert b.get_timer() == pytest.approx(2.0)
    net.tick(2.0)
    assert [type(e) for e in net.ev(b)] == [ReInviteAccepted]
    assert [type(e) for e in net.ev(a)] == [ReInviteAnswered]
    net.tick(4.05)
    assert [type(e) for e in net.ev(a)] == [ReInviteAccepted]
    assert out.local_sdp == HOLD and inc.local_sdp == HELD  # type: ignore[attr-defined]


def test_reinvite_timeout_and_illegal_states() -> None:
    a, b, _net, out, inc = established()
    a.reinvite(out, HOLD, 1.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidState):
        a.reinvite(out, HOLD, 1.0)  # type: ignore[arg-type]
    a.messages_to_send()  # lost, and every retransmission too
    advance(a, 1.0 + 64 * 0.5)
    (failed,) = a.events_received()
    assert isinstance(failed, ReInviteFailed) and failed.code == 408
    with pytest.raises(InvalidState):
        b.answer_reinvite(inc, HELD, 40.0)  # type: ignore[arg-type]


def test_reinvite_answers_a_407_with_credentials() -> None:
    a, b, net, out, inc = established()
    a.reinvite(out, HOLD, 1.0)  # type: ignore[arg-type]
    ((first, _),) = a.messages_to_send()
    challenge = 'Proxy-Authenticate: Digest realm="sip.test", nonce="n1", qop="auth"\r\n'
    a.receive_message(
        reply(first, 407, to_tag=inc.local_tag, extra=challenge), ("127.0.0.1", 5002), 1.1
    )  # type: ignore[attr-defined]
    ack, retry = (d for d, _ in a.messages_to_send())
    assert start_line(ack).startswith("ACK") and header(retry, "CSeq") == "3 INVITE"
    assert header(retry, "Proxy-Authorization").startswith('Digest username="1000"')
    b.receive_message(retry, ("127.0.0.1", 5001), 1.2)
    net.run(1.2)
    assert [type(e) for e in net.ev(a)] == [ReInviteAccepted]
