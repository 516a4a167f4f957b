"""Registration and call flows: against hand-written peer messages and between two stacks."""

from __future__ import annotations

import hashlib

import pytest
from sipwire import Net, advance, header, make_stack, reply, request, start_line, status_of

from sipswarm.errors import ConfigError, InvalidState
from sipswarm.sip.call import CallState
from sipswarm.sip.config import Account
from sipswarm.sip.events import (
    CallAnswered,
    CallConfirmed,
    CallEnded,
    CallFailed,
    CallProgress,
    CallTeardownFailed,
    IncomingCall,
    RegistrationFailed,
    RegistrationSucceeded,
    ReInviteAnswered,
    Unregistered,
)
from sipswarm.sip.stack import SipStack

REG = ("127.0.0.1", 5099)
ACC = Account("1000", "sip.test", "secret1000")
OFFER = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
ANSWER = b"v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\n"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def param(value: str, name: str) -> str:
    for part in value.split(","):
        key, _, val = part.strip().removeprefix("Digest ").partition("=")
        if key == name:
            return val.strip('"')
    raise KeyError(name)


def challenge(status: int = 401, nonce: str = "abc", stale: bool = False) -> str:
    name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    return (
        f'{name}: Digest realm="sip.test", nonce="{nonce}", qop="auth", '
        f"algorithm=MD5{', stale=true' if stale else ''}\r\n"
    )


def registered(stack: SipStack, now: float = 0.0) -> bytes:
    stack.register("ep", ACC, "sip:sip.test", 300, now, destination=REG)
    ((first, dest),) = stack.messages_to_send()
    assert dest == REG
    return first


def test_register_401_retry_200() -> None:
    stack = make_stack(5070, "a")
    first = registered(stack)
    assert start_line(first) == "REGISTER sip:sip.test SIP/2.0"
    assert header(first, "Contact") == "<sip:1000@127.0.0.1:5070>"
    assert header(first, "Expires") == "300" and header(first, "Max-Forwards") == "70"
    assert header(first, "User-Agent").startswith("sipswarm/")
    assert ";rport;branch=z9hG4bK" in header(first, "Via")
    stack.receive_message(
        reply(first, 401, "Unauthorized", to_tag="r", extra=challenge()), REG, 0.01
    )
    ((second, _),) = stack.messages_to_send()
    assert header(second, "Call-ID") == header(first, "Call-ID")
    assert header(second, "CSeq") == "2 REGISTER" and header(second, "Via") != header(first, "Via")
    auth = header(second, "Authorization")
    ha1 = md5("1000:sip.test:secret1000")
    ha2 = md5("REGISTER:sip:sip.test")
    expect = md5(f"{ha1}:abc:00000001:{param(auth, 'cnonce')}:auth:{ha2}")
    assert param(auth, "response") == expect and param(auth, "uri") == "sip:sip.test"
    ok = reply(
        second, 200, "OK", to_tag="r", extra="Contact: <sip:1000@127.0.0.1:5070>;expires=120\r\n"
    )
    ok = ok.replace(b";branch=", b";received=10.0.0.1;rport=6000;branch=", 1)
    stack.receive_message(ok, REG, 0.03)
    (event,) = stack.events_received()
    assert isinstance(event, RegistrationSucceeded)
    assert (event.expires_granted, event.refresh, event.status_code) == (120, False, 200)
    assert event.register_ms == pytest.approx(30.0)
    assert (event.received, event.rport) == ("10.0.0.1", 6000)
    # refresh at max(granted/2, granted - 30) after the REGISTER was sent: 90 s
    sent = [(t, d) for t, d in advance(stack, 100.0) if d.startswith(b"REGISTER")]
    assert sent[0][0] == pytest.approx(90.0)
    assert header(sent[0][1], "CSeq") == "3 REGISTER"
    stack.receive_message(
        reply(sent[0][1], 200, "OK", to_tag="r", extra="Expires: 60\r\n"), REG, 90.1
    )
    (refresh,) = stack.events_received()
    assert isinstance(refresh, RegistrationSucceeded) and refresh.refresh
    assert refresh.expires_granted == 60


def test_unregister_sends_expires_zero() -> None:
    stack = make_stack(5070, "a")
    first = registered(stack)
    stack.receive_message(reply(first, 200, "OK", to_tag="r"), REG, 0.01)
    stack.events_received()
    stack.unregister("ep", 1.0)
    ((unreg, _),) = stack.messages_to_send()
    assert header(unreg, "Expires") == "0" and header(unreg, "CSeq") == "2 REGISTER"
    stack.receive_message(reply(unreg, 200, "OK", to_tag="r"), REG, 1.01)
    (event,) = stack.events_received()
    assert isinstance(event, Unregistered) and event.status_code == 200
    assert advance(stack, 1000.0) == []  # no refresh after unregister


def test_second_challenge_is_a_failure_not_a_loop() -> None:
    stack = make_stack(5070, "a")
    first = registered(stack)
    stack.receive_message(reply(first, 401, "Unauthorized", extra=challenge(nonce="1")), REG, 0)
    ((second, _),) = stack.messages_to_send()
    stack.receive_message(reply(second, 401, "Unauthorized", extra=challenge(nonce="2")), REG, 0)
    assert stack.messages_to_send() == []
    (event,) = stack.events_received()
    assert isinstance(event, RegistrationFailed) and event.status_code == 401


def test_stale_nonce_is_retried() -> None:
    stack = make_stack(5070, "a")
    first = registered(stack)
    stack.receive_message(reply(first, 401, "U", extra=challenge(nonce="1")), REG, 0)
    ((second, _),) = stack.messages_to_send()
    stack.receive_message(reply(second, 401, "U", extra=challenge(nonce="2", stale=True)), REG, 0)
    ((third, _),) = stack.messages_to_send()
    assert param(header(third, "Authorization"), "nonce") == "2"
    stack.receive_message(reply(third, 200, "OK"), REG, 0)
    assert isinstance(stack.events_received()[0], RegistrationSucceeded)


def test_423_retries_with_min_expires() -> None:
    stack = make_stack(5070, "a")
    first = registered(stack)
    stack.receive_message(
        reply(first, 423, "Interval Too Brief", extra="Min-Expires: 600\r\n"), REG, 0
    )
    ((second, _),) = stack.messages_to_send()
    assert header(second, "Expires") == "600"


def test_invite_407_acked_then_retried_with_proxy_authorization() -> None:
    stack = make_stack(5070, "a")
    stack.invite("ep", ACC, "sip:2000@sip.test", OFFER, 0.0, route="sip:127.0.0.1:5099")
    ((invite, dest),) = stack.messages_to_send()
    assert dest == REG and header(invite, "Route") == "<sip:127.0.0.1:5099;lr>"
    stack.receive_message(
        reply(invite, 407, "Proxy Auth", to_tag="px", extra=challenge(407)), REG, 0.01
    )
    ack, retry = (d for d, _ in stack.messages_to_send())
    assert start_line(ack).startswith("ACK ") and header(ack, "CSeq") == "1 ACK"
    assert header(retry, "CSeq") == "2 INVITE" and header(retry, "Call-ID") == header(
        invite, "Call-ID"
    )
    auth = header(retry, "Proxy-Authorization")
    assert param(auth, "uri") == "sip:2000@sip.test" and param(auth, "username") == "1000"
    assert header(retry, "From") == header(invite, "From")
    assert stack.events_received() == []


def pair() -> tuple[SipStack, SipStack, Net]:
    a = make_stack(5001, "a")
    b = make_stack(5002, "b")
    b.listen("bob", "2000")
    return a, b, Net([a, b])


def call(a: SipStack, b: SipStack, net: Net, **kw: float) -> tuple:  # type: ignore[type-arg]
    out = a.invite("alice", ACC, "sip:2000@127.0.0.1:5002", OFFER, 0.0, **kw)  # type: ignore[arg-type]
    net.run(0.0)
    (incoming,) = net.ev(b)
    assert isinstance(incoming, IncomingCall) and incoming.sdp_offer == OFFER
    return out, incoming.call


def test_full_call_uac_hangs_up() -> None:
    a, b, net = pair()
    out, inc = call(a, b, net)
    b.ring(inc, 0.1)
    net.run(0.1)
    (progress,) = net.ev(a)
    assert isinstance(progress, CallProgress) and progress.code == 180
    b.answer(inc, ANSWER, 0.5)
    net.run(0.5)
    (answered,) = net.ev(a)
    assert isinstance(answered, CallAnswered) and answered.sdp_answer == ANSWER
    (confirmed,) = net.ev(b)
    assert isinstance(confirmed, CallConfirmed)
    a.bye(out, 10.0)
    net.run(10.0)
    (ended_a,) = net.ev(a)
    (ended_b,) = net.ev(b)
    assert isinstance(ended_a, CallEnded) and ended_a.by == "local"
    assert isinstance(ended_b, CallEnded) and ended_b.by == "remote"
    assert (out.invite_ts, out.ringing_ts, out.answer_ts, out.ack_ts, out.bye_ts) == (
        0.0,
        0.1,
        0.5,
        0.5,
        10.0,
    )
    assert (inc.invite_ts, inc.ringing_ts, inc.answer_ts, inc.ack_ts, inc.bye_ts) == (
        0.0,
        0.1,
        0.5,
        0.5,
        10.0,
    )
    assert out.final_code == inc.final_code == 200
    assert out.state is inc.state is CallState.TERMINATED
    net.tick(100.0)
    assert a.get_timer() is None and b.get_timer() is None
    assert a.counters["internal_errors"] == b.counters["internal_errors"] == 0


def test_callee_hangs_up() -> None:
    a, b, net = pair()
    out, inc = call(a, b, net)
    b.answer(inc, ANSWER, 0.2)
    net.run(0.2)
    net.ev(a), net.ev(b)
    b.bye(inc, 3.0)
    net.run(3.0)
    assert [type(e) for e in net.ev(a)] == [CallEnded]
    assert [type(e) for e in net.ev(b)] == [CallEnded]
    assert out.ended_by == "remote" and inc.ended_by == "local"


def test_busy_486() -> None:
    a, b, net = pair()
    out, inc = call(a, b, net)
    b.reject(inc, 486, 0.3)
    net.run(0.3)
    (failed,) = net.ev(a)
    assert isinstance(failed, CallFailed) and (failed.code, failed.by) == (486, "remote")
    assert out.final_code == 486 and out.reason == "Busy Here"
    assert [type(e) for e in net.ev(b)] == [CallFailed]


def test_cancel_then_487() -> None:
    a, b, net = pair()
    out, inc = call(a, b, net)
    b.ring(inc, 0.1)
    net.run(0.1)
    net.ev(a)
    a.cancel(out, 1.0)
    net.run(1.0)
    methods = [start_line(d).split()[0] for _, _, d in net.log if not d.startswith(b"SIP/")]
    assert methods == ["INVITE", "CANCEL", "ACK"]
    (failed,) = net.ev(a)
    assert isinstance(failed, CallFailed) and (failed.code, failed.by) == (487, "local")
    (cancelled,) = net.ev(b)
    assert isinstance(cancelled, CallFailed) and (cancelled.code, cancelled.by) == (487, "remote")


def test_ring_timeout_cancels() -> None:
    a, b, net = pair()
    out, inc = call(a, b, net, ring_timeout=5.0)
    b.ring(inc, 0.1)
    net.run(0.1)
    net.ev(a)
    net.tick(5.0)
    (failed,) = net.ev(a)
    assert (
        isinstance(failed, CallFailed) and failed.code == 487 and out.reason == "Request Terminated"
    )


def test_cancel_before_provisional_waits_for_it() -> None:
    a = make_stack(5001, "a")
    out = a.invite("alice", ACC, "sip:2000@127.0.0.1:5099", OFFER, 0.0)
    ((invite, _),) = a.messages_to_send()
    a.cancel(out, 0.1)
    assert a.messages_to_send() == []  # RFC 3261 9.1: not before a provisional
    a.receive_message(reply(invite, 100, "Trying"), REG, 0.2)
    ((cancel, _),) = a.messages_to_send()
    assert start_line(cancel).startswith("CANCEL ") and header(cancel, "Via") == header(
        invite, "Via"
    )
    assert header(cancel, "CSeq") == "1 CANCEL"


def test_407_after_ring_timeout_ends_the_call_locally_without_retry() -> None:
    # Seen at 1000 cps on a starved shard: the 407 was read 13 s late, after the ring
    # timeout; it ends the INVITE we gave up on (RFC 3261 9.1), no credentials are sent.
    a = make_stack(5001, "a")
    out = a.invite("alice", ACC, "sip:2000@127.0.0.1:5099", OFFER, 0.0, ring_timeout=10.0)
    ((invite, _),) = a.messages_to_send()
    advance(a, 10.0)
    a.messages_to_send()  # Timer A retransmissions of the INVITE
    a.events_received()
    assert out.cancel_reason == "ring timeout"
    a.receive_message(
        reply(invite, 407, "Proxy Auth", to_tag="px", extra=challenge(407)), REG, 12.9
    )
    (ack,) = (d for d, _ in a.messages_to_send())
    assert start_line(ack).startswith("ACK ") and header(ack, "CSeq") == "1 ACK"
    (failed,) = a.events_received()
    assert isinstance(failed, CallFailed) and (failed.code, failed.by) == (407, "local")


def test_answer_after_cancel_is_acked_and_hung_up() -> None:
    a = make_stack(5001, "a")
    out = a.invite("alice", ACC, "sip:2000@127.0.0.1:5099", OFFER, 0.0)
    ((invite, _),) = a.messages_to_send()
    a.receive_message(reply(invite, 180, "Ringing", to_tag="t"), REG, 0.1)
    a.cancel(out, 0.2)
    a.messages_to_send()
    ok = reply(invite, 200, "OK", to_tag="t", extra="Contact: <sip:2000@127.0.0.1:5099>\r\n")
    a.receive_message(ok, REG, 0.3)
    ack, bye = (d for d, _ in a.messages_to_send())
    assert start_line(ack).startswith("ACK ") and start_line(bye).startswith("BYE ")
    a.receive_message(reply(bye, 200, "OK"), REG, 0.4)
    events = a.events_received()
    assert [type(e) for e in events] == [CallProgress, CallEnded]


def test_options_answered_with_allow() -> None:
    b = make_stack(5002, "b")
    b.receive_message(request("OPTIONS", "sip:x@127.0.0.1:5002", branch="z9hG4bKo"), REG, 0)
    ((ok, dest),) = b.messages_to_send()
    assert status_of(ok) == 200 and "BYE" in header(ok, "Allow") and dest == REG
    assert header(ok, "Accept") == "application/sdp"


def test_481_for_request_outside_dialog() -> None:
    b = make_stack(5002, "b")
    b.receive_message(
        request("BYE", "sip:x@127.0.0.1:5002", branch="z9hG4bKb", to="<sip:x@h>"), REG, 0
    )
    ((resp, _),) = b.messages_to_send()
    assert status_of(resp) == 481


def test_record_route_builds_route_set() -> None:
    a = make_stack(5001, "a")
    out = a.invite("alice", ACC, "sip:2000@127.0.0.1:5099", OFFER, 0.0)
    ((invite, _),) = a.messages_to_send()
    rr = "Record-Route: <sip:127.0.0.2:5060;lr;ftag=x>\r\nRecord-Route: <sip:127.0.0.3:5060;lr>\r\n"
    ok = reply(invite, 200, "OK", to_tag="t", extra=rr + "Contact: <sip:2000@127.0.0.9:7000>\r\n")
    a.receive_message(ok, REG, 0.1)
    ((ack, dest),) = a.messages_to_send()
    # RFC 3261 12.1.2: UAC route set = Record-Route reversed; first hop = first Route.
    assert dest == ("127.0.0.3", 5060)
    assert start_line(ack) == "ACK sip:2000@127.0.0.9:7000 SIP/2.0"
    routes = [ln for ln in ack.decode().split("\r\n") if ln.startswith("Route:")]
    assert routes == ["Route: <sip:127.0.0.3:5060;lr>", "Route: <sip:127.0.0.2:5060;lr;ftag=x>"]
    a.bye(out, 1.0)
    ((bye, dest),) = a.messages_to_send()
    assert dest == ("127.0.0.3", 5060) and header(bye, "CSeq") == "2 BYE"


def test_uas_copies_record_route_and_uses_it_for_bye() -> None:
    b = make_stack(5002, "b")
    b.listen("bob", "2000")
    rr = "Record-Route: <sip:127.0.0.2:5060;lr>\r\n"
    invite = request(
        "INVITE",
        "sip:2000@127.0.0.1:5002",
        branch="z9hG4bKi",
        extra=rr + "Contact: <sip:carol@127.0.0.9:7000>\r\n",
        body=OFFER,
    )
    b.receive_message(invite, REG, 0.0)
    (incoming,) = b.events_received()
    b.messages_to_send()
    b.answer(incoming.call, ANSWER, 0.1)  # type: ignore[attr-defined]
    ((ok, _),) = b.messages_to_send()
    assert header(ok, "Record-Route") == "<sip:127.0.0.2:5060;lr>"
    b.receive_message(
        request("ACK", "sip:2000@127.0.0.1:5002", branch="z9hG4bKa", to=header(ok, "To")), REG, 0.2
    )
    b.bye(incoming.call, 1.0)  # type: ignore[attr-defined]
    ((bye, dest),) = b.messages_to_send()
    assert dest == ("127.0.0.2", 5060) and start_line(bye) == "BYE sip:carol@127.0.0.9:7000 SIP/2.0"
    assert header(bye, "To") == "<sip:carol@127.0.0.1>;tag=peer1"
    assert header(bye, "CSeq") == "1 BYE"


def test_bye_before_ack_race() -> None:
    a, b, net = pair()
    out, inc = call(a, b, net)
    b.answer(inc, ANSWER, 0.1)
    net.drop = lambda d: d.startswith(b"ACK")
    net.run(0.1)
    net.drop = lambda d: False
    a.bye(out, 0.2)
    net.run(0.2)
    assert [type(e) for e in net.ev(b)] == [CallEnded]
    net.tick(40.0)
    assert not any(d.startswith(b"BYE") for s, _, d in net.log if s == ("127.0.0.1", 5002))


def test_bye_non_2xx_is_teardown_failure() -> None:
    a = make_stack(5001, "a")
    out = a.invite("alice", ACC, "sip:2000@127.0.0.1:5099", OFFER, 0.0)
    ((invite, _),) = a.messages_to_send()
    a.receive_message(
        reply(invite, 200, "OK", to_tag="t", extra="Contact: <sip:2000@127.0.0.1:5099>\r\n"),
        REG,
        0.1,
    )
    a.messages_to_send()
    a.bye(out, 1.0)
    ((bye, _),) = a.messages_to_send()
    a.receive_message(reply(bye, 481, "Call Does Not Exist"), REG, 1.1)
    events = a.events_received()
    assert [type(e) for e in events] == [CallAnswered, CallTeardownFailed]
    assert events[1].code == 481  # type: ignore[union-attr]


def test_reinvite_answered_with_same_sdp() -> None:
    a, b, net = pair()
    _out, inc = call(a, b, net)
    b.answer(inc, ANSWER, 0.1)
    net.run(0.1)
    net.ev(a), net.ev(b)
    assert inc.dialog is not None
    reinvite = request(
        "INVITE",
        "sip:2000@127.0.0.1:5002",
        branch="z9hG4bKre",
        call_id=inc.call_id,
        cseq=2,
        from_tag=inc.dialog.remote_tag,
        to=f"<sip:2000@127.0.0.1:5002>;tag={inc.local_tag}",
        extra="Contact: <sip:1000@127.0.0.1:5001>\r\nContent-Type: application/sdp\r\n",
        body=OFFER,
    )
    b.receive_message(reinvite, ("127.0.0.1", 5001), 1.0)
    ((ok, _),) = b.messages_to_send()
    assert status_of(ok) == 200 and ok.endswith(ANSWER)
    assert isinstance(b.events_received()[0], ReInviteAnswered)
    old = request(
        "INFO",
        "sip:2000@127.0.0.1:5002",
        branch="z9hG4bKold",
        call_id=inc.call_id,
        cseq=1,
        from_tag=inc.dialog.remote_tag,
        to=f"<sip:2000@127.0.0.1:5002>;tag={inc.local_tag}",
    )
    b.receive_message(old, ("127.0.0.1", 5001), 1.1)
    assert [status_of(d) for d, _ in b.messages_to_send()] == [500]  # 12.2.2 out of order


def test_forked_second_2xx_is_acked_and_byed() -> None:
    a = make_stack(5001, "a")
    a.invite("alice", ACC, "sip:2000@127.0.0.1:5099", OFFER, 0.0)
    ((invite, _),) = a.messages_to_send()
    contact = "Contact: <sip:2000@127.0.0.1:5099>\r\n"
    a.receive_message(reply(invite, 200, "OK", to_tag="f1", extra=contact), REG, 0.1)
    a.receive_message(reply(invite, 200, "OK", to_tag="f2", extra=contact), REG, 0.2)
    msgs = [d for d, _ in a.messages_to_send()]
    assert [start_line(d).split()[0] for d in msgs] == ["ACK", "ACK", "BYE"]
    assert header(msgs[2], "To").endswith("tag=f2")
    assert len(a.events_received()) == 1


def test_tracing_only_for_traced_owner() -> None:
    a, b, net = pair()
    b.set_trace("bob")
    _out, _inc = call(a, b, net)
    assert a.traces_to_send() == []
    records = b.traces_to_send()
    assert [(r.dir, status_of(r.message) if r.dir == "out" else 0) for r in records] == [
        ("in", 0),
        ("out", 100),
    ]
    assert all(r.owner == "bob" and r.remote == ("127.0.0.1", 5001) for r in records)


def test_illegal_actions_raise_invalid_state() -> None:
    a, b, net = pair()
    out, inc = call(a, b, net)
    with pytest.raises(InvalidState):
        b.bye(inc, 0.1)  # not answered yet
    with pytest.raises(InvalidState):
        a.answer(out, ANSWER, 0.1)  # outgoing call
    b.reject(inc, 603, 0.2)
    with pytest.raises(InvalidState):
        b.answer(inc, ANSWER, 0.3)
    with pytest.raises(InvalidState):
        b.listen("someone-else", "2000")
    with pytest.raises(ConfigError):
        a.invite("alice", ACC, "sip:2000@pbx.example.com", OFFER, 1.0)  # needs DNS
    with pytest.raises(ConfigError):
        a.invite("alice", ACC, "not a uri", OFFER, 1.0)
    with pytest.raises(InvalidState):
        a.unregister("nobody", 1.0)


def test_hangup_picks_the_right_request() -> None:
    a, b, net = pair()
    out, inc = call(a, b, net)
    b.ring(inc, 0.1)
    net.run(0.1)
    a.hangup(out, 0.2)  # ringing: CANCEL
    net.run(0.2)
    assert out.final_code == 487
    a.hangup(out, 0.3)  # already over: nothing
    assert a.messages_to_send() == []
