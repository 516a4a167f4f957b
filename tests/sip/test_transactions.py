"""RFC 3261 §17 transactions driven through the stack with literal bytes and a fake clock."""

from __future__ import annotations

import pytest
from sipwire import advance, header, make_stack, reply, request, start_line, status_of

from sipswarm.sip.call import CallState
from sipswarm.sip.config import Account
from sipswarm.sip.events import (
    CallAnswered,
    CallConfirmed,
    CallEnded,
    CallFailed,
    IncomingCall,
    RegistrationFailed,
)
from sipswarm.sip.stack import SipStack

PEER = ("127.0.0.1", 5099)
ACC = Account("alice", "127.0.0.1", "pw")
SDP = b"v=0\r\n"


def uac(transport: str = "udp") -> tuple[SipStack, bytes]:
    stack = make_stack(5070, "a", transport)
    stack.invite("alice", ACC, "sip:bob@127.0.0.1:5099", SDP, 0.0)
    ((invite, dest),) = stack.messages_to_send()
    assert dest == PEER
    return stack, invite


def test_invite_timer_a_doubles_and_timer_b_fails_call() -> None:
    stack, invite = uac()
    sent = advance(stack, 100.0)
    # RFC 3261 17.1.1.2: 7 transmissions at 0, .5, 1.5, 3.5, 7.5, 15.5, 31.5; B at 32.
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(data == invite for _, data in sent)
    assert stack.counters["retransmissions"] == 6
    (event,) = stack.events_received()
    assert isinstance(event, CallFailed) and event.code == 408
    assert stack.get_timer() is None


def test_invite_provisional_stops_retransmission_and_timer_b() -> None:
    stack, invite = uac()
    stack.receive_message(reply(invite, 100, "Trying"), PEER, 0.2)
    assert advance(stack, 200.0) == []
    assert stack.events_received() == []  # RFC 3261: Proceeding waits (CANCEL is the way out)


def test_non_invite_timer_e_caps_at_t2_and_timer_f() -> None:
    stack = make_stack(5070, "a")
    stack.register("alice", ACC, "sip:127.0.0.1:5099", 300, 0.0)
    ((register, _),) = stack.messages_to_send()
    sent = advance(stack, 100.0)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(data == register for _, data in sent)
    (event,) = stack.events_received()
    assert isinstance(event, RegistrationFailed) and event.status_code == 408


def test_non_invite_proceeding_retransmits_every_t2() -> None:
    stack = make_stack(5070, "a")
    stack.register("alice", ACC, "sip:127.0.0.1:5099", 300, 0.0)
    ((register, _),) = stack.messages_to_send()
    stack.receive_message(reply(register, 100, "Trying"), PEER, 0.1)
    sent = advance(stack, 20.0)
    assert [t for t, _ in sent] == [0.5, 4.5, 8.5, 12.5, 16.5]


def test_reliable_transport_never_retransmits() -> None:
    stack, _ = uac("tcp")
    assert advance(stack, 100.0) == []
    (event,) = stack.events_received()
    assert isinstance(event, CallFailed) and event.code == 408  # Timer B still applies


def test_custom_timers() -> None:
    stack = make_stack(5070, "a", t1=0.1, t2=0.4)
    stack.register("alice", ACC, "sip:127.0.0.1:5099", 300, 0.0)
    stack.messages_to_send()
    times = [round(t, 3) for t, _ in advance(stack, 100.0)]
    assert times[:5] == [0.1, 0.3, 0.7, 1.1, 1.5]
    assert times[-1] <= 6.4  # Timer F = 64*T1


def test_non_2xx_final_is_acked_by_transaction_and_retransmission_reacked() -> None:
    stack, invite = uac()
    busy = reply(invite, 486, "Busy Here", to_tag="peer")
    stack.receive_message(busy, PEER, 0.1)
    ((ack, _),) = stack.messages_to_send()
    assert start_line(ack) == "ACK sip:bob@127.0.0.1:5099 SIP/2.0"
    assert header(ack, "Via") == header(invite, "Via")  # same branch (17.1.1.3)
    assert header(ack, "To").endswith(";tag=peer")
    assert header(ack, "CSeq") == "1 ACK"
    (event,) = stack.events_received()
    assert isinstance(event, CallFailed) and event.code == 486 and event.by == "remote"
    stack.receive_message(busy, PEER, 1.0)  # retransmitted 486: ACK again, no event
    assert [d for d, _ in stack.messages_to_send()] == [ack]
    assert stack.events_received() == []
    advance(stack, 40.0)  # Timer D (32 s) ends the transaction
    stack.receive_message(busy, PEER, 41.0)
    assert stack.messages_to_send() == []
    assert stack.counters["stray_responses"] == 1


def test_2xx_retransmission_gets_the_same_ack() -> None:
    stack, invite = uac()
    ok = reply(invite, 200, "OK", to_tag="peer", extra="Contact: <sip:bob@127.0.0.1:5099>\r\n")
    stack.receive_message(ok, PEER, 0.1)
    ((ack, _),) = stack.messages_to_send()
    assert header(ack, "Via") != header(invite, "Via")  # 2xx ACK: new transaction (13.2.2.4)
    stack.receive_message(ok, PEER, 0.6)
    stack.receive_message(ok, PEER, 1.6)
    assert [d for d, _ in stack.messages_to_send()] == [ack, ack]
    events = stack.events_received()
    assert len(events) == 1 and isinstance(events[0], CallAnswered)
    assert stack.counters["ack_retransmissions"] == 2


def uas(transport: str = "udp") -> tuple[SipStack, bytes, IncomingCall]:
    stack = make_stack(5070, "b", transport)
    stack.listen("bob", "bob")
    invite = request(
        "INVITE",
        "sip:bob@127.0.0.1:5070",
        branch="z9hG4bKinv1",
        extra="Contact: <sip:carol@127.0.0.1:5099>\r\nContent-Type: application/sdp\r\n",
        body=SDP,
    )
    stack.receive_message(invite, PEER, 0.0)
    ((trying, _),) = stack.messages_to_send()
    assert status_of(trying) == 100
    (event,) = stack.events_received()
    assert isinstance(event, IncomingCall)
    return stack, invite, event


def test_server_absorbs_invite_retransmission_and_resends_last_provisional() -> None:
    stack, invite, event = uas()
    stack.receive_message(invite, PEER, 0.5)
    assert [status_of(d) for d, _ in stack.messages_to_send()] == [100]
    stack.ring(event.call, 0.6)
    stack.messages_to_send()
    stack.receive_message(invite, PEER, 1.0)
    assert [status_of(d) for d, _ in stack.messages_to_send()] == [180]
    assert stack.events_received() == []  # no second IncomingCall
    assert stack.counters["request_retransmissions"] == 2


def test_server_timer_g_until_ack_then_timer_i() -> None:
    stack, _invite, event = uas()
    stack.reject(event.call, 486, 1.0)
    ((busy, _),) = stack.messages_to_send()
    sent = advance(stack, 9.0)
    # RFC 3261 17.2.1: Timer G at T1 doubling up to T2.
    assert [t for t, _ in sent] == [1.5, 2.5, 4.5, 8.5]
    assert all(d == busy for _, d in sent)
    ack = request("ACK", "sip:bob@127.0.0.1:5070", branch="z9hG4bKinv1", to=header(busy, "To"))
    stack.receive_message(ack, PEER, 9.5)
    assert advance(stack, 40.0) == []
    assert stack.counters["ack_timeouts"] == 0
    (failed,) = stack.events_received()
    assert isinstance(failed, CallFailed) and failed.code == 486 and failed.by == "local"


def test_server_timer_h_without_ack() -> None:
    stack, _, event = uas()
    stack.reject(event.call, 603, 0.0)
    stack.messages_to_send()
    advance(stack, 40.0)
    assert stack.counters["ack_timeouts"] == 1
    assert stack.get_timer() is None


def test_uas_retransmits_2xx_until_ack() -> None:
    stack, invite, event = uas()
    stack.answer(event.call, b"v=0 answer\r\n", 0.0)
    ((ok, _),) = stack.messages_to_send()
    sent = advance(stack, 12.0)
    # RFC 3261 13.3.1.4: T1, 2*T1 ... capped at T2.
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert all(d == ok for _, d in sent)
    stack.receive_message(invite, PEER, 12.0)  # RFC 6026 Accepted: absorbed, not resent
    assert stack.messages_to_send() == []
    ack = request("ACK", "sip:bob@127.0.0.1:5070", branch="z9hG4bKack1", to=header(ok, "To"))
    stack.receive_message(ack, PEER, 12.1)
    (confirmed,) = stack.events_received()
    assert isinstance(confirmed, CallConfirmed) and event.call.ack_ts == 12.1
    assert advance(stack, 60.0) == []
    assert event.call.state is CallState.CONFIRMED


def test_uas_gives_up_without_ack_and_sends_bye() -> None:
    stack, _, event = uas()
    stack.answer(event.call, b"v=0 answer\r\n", 0.0)
    stack.messages_to_send()
    sent = advance(stack, 32.0)
    assert start_line(sent[-1][1]).startswith("BYE sip:carol@127.0.0.1:5099")
    assert sent[-1][0] == 32.0
    (failed,) = stack.events_received()
    assert isinstance(failed, CallFailed) and failed.code == 408
    bye = sent[-1][1]
    stack.receive_message(reply(bye, 200, "OK"), PEER, 32.1)
    assert stack.events_received() == []  # one terminal event per call
    assert event.call.state is CallState.TERMINATED


def test_non_invite_server_absorbs_retransmission_until_timer_j() -> None:
    stack = make_stack(5070, "b")
    options = request("OPTIONS", "sip:bob@127.0.0.1:5070", branch="z9hG4bKopt1")
    stack.receive_message(options, PEER, 0.0)
    stack.receive_message(options, PEER, 0.5)
    first, second = (d for d, _ in stack.messages_to_send())
    assert first == second and status_of(first) == 200
    assert stack.counters["request_retransmissions"] == 1
    advance(stack, 32.0)  # Timer J = 64*T1
    assert stack.get_timer() is None


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_reliable_server_terminates_at_once(transport: str) -> None:
    stack = make_stack(5070, "b", transport)
    options = request("OPTIONS", "sip:bob@127.0.0.1:5070", branch="z9hG4bKopt2")
    stack.receive_message(options, PEER, 0.0)
    assert stack.get_timer() is None  # Timer J = 0 for reliable transports


def test_bye_is_answered_and_ends_call() -> None:
    stack, _invite, event = uas()
    stack.answer(event.call, b"v=0 answer\r\n", 0.0)
    ((ok, _),) = stack.messages_to_send()
    to = header(ok, "To")
    stack.receive_message(
        request("ACK", "sip:bob@127.0.0.1:5070", branch="z9hG4bKa", to=to), PEER, 0.1
    )
    bye = request("BYE", "sip:bob@127.0.0.1:5070", branch="z9hG4bKbye", cseq=2, to=to)
    stack.receive_message(bye, PEER, 5.0)
    stack.receive_message(bye, PEER, 5.5)  # retransmission absorbed, 200 resent
    assert [status_of(d) for d, _ in stack.messages_to_send()] == [200, 200]
    events = stack.events_received()
    assert [type(e) for e in events] == [CallConfirmed, CallEnded]
    assert events[1].by == "remote" and event.call.bye_ts == 5.0  # type: ignore[union-attr]
