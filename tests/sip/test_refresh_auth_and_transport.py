"""Pre-emptive digest on REGISTER refreshes and unregister (one round trip), and
transport errors as input (RFC 3261 8.1.3.1: 503 at once instead of Timer B/F)."""

from __future__ import annotations

from sipwire import Net, advance, header, make_stack, reply

from sipswarm.sip.config import Account
from sipswarm.sip.events import (
    CallAnswered,
    CallConfirmed,
    CallFailed,
    CallTeardownFailed,
    IncomingCall,
    RegistrationFailed,
    RegistrationSucceeded,
    ReInviteFailed,
    Unregistered,
)
from sipswarm.sip.stack import SipStack

REG = ("127.0.0.1", 5099)
ACC = Account("1000", "sip.test", "secret1000")


def challenge(nonce: str, stale: bool = False) -> str:
    return (
        f'WWW-Authenticate: Digest realm="sip.test", nonce="{nonce}", qop="auth", '
        f"algorithm=MD5{', stale=true' if stale else ''}\r\n"
    )


def param(value: str, name: str) -> str:
    for part in value.removeprefix("Digest ").split(","):
        key, _, val = part.strip().partition("=")
        if key == name:
            return val.strip('"')
    raise KeyError(name)


def registered_with_auth(stack: SipStack) -> None:
    stack.register("ep", ACC, "sip:sip.test", 120, 0.0, destination=REG)
    ((first, _),) = stack.messages_to_send()
    stack.receive_message(reply(first, 401, "U", to_tag="r", extra=challenge("n1")), REG, 0.0)
    ((second, _),) = stack.messages_to_send()
    assert param(header(second, "Authorization"), "nc") == "00000001"
    stack.receive_message(reply(second, 200, "OK", to_tag="r", extra="Expires: 120\r\n"), REG, 0)
    assert isinstance(stack.events_received()[0], RegistrationSucceeded)


def refresh(stack: SipStack, until: float) -> bytes:
    (refresh_msg,) = [d for _, d in advance(stack, until) if d.startswith(b"REGISTER")]
    return refresh_msg


def test_refresh_and_unregister_carry_credentials_up_front() -> None:
    stack = make_stack(5070, "a")
    registered_with_auth(stack)
    first_refresh = refresh(stack, 90.1)
    auth = header(first_refresh, "Authorization")
    assert (param(auth, "nonce"), param(auth, "nc")) == ("n1", "00000002")
    assert header(first_refresh, "CSeq") == "3 REGISTER"  # one request, no extra CSeq
    stack.receive_message(reply(first_refresh, 200, "OK", extra="Expires: 120\r\n"), REG, 90.01)
    (event,) = stack.events_received()
    assert isinstance(event, RegistrationSucceeded) and event.refresh
    assert stack.messages_to_send() == []  # one round trip
    stack.unregister("ep", 100.0)
    ((unreg, _),) = stack.messages_to_send()
    assert header(unreg, "Expires") == "0"
    assert param(header(unreg, "Authorization"), "nc") == "00000003"
    stack.receive_message(reply(unreg, 200, "OK"), REG, 100.01)
    assert isinstance(stack.events_received()[0], Unregistered)


def test_stale_nonce_on_a_preemptive_refresh_falls_back_to_the_challenge() -> None:
    stack = make_stack(5070, "a")
    registered_with_auth(stack)
    first_refresh = refresh(stack, 90.1)
    stale = reply(first_refresh, 401, "U", extra=challenge("n2", stale=True))
    stack.receive_message(stale, REG, 90.01)
    ((retry, _),) = stack.messages_to_send()
    auth = header(retry, "Authorization")
    assert (param(auth, "nonce"), param(auth, "nc")) == ("n2", "00000001")
    assert header(retry, "CSeq") == "4 REGISTER"
    stack.receive_message(reply(retry, 200, "OK", extra="Expires: 120\r\n"), REG, 90.02)
    assert isinstance(stack.events_received()[0], RegistrationSucceeded)
    next_refresh = refresh(stack, 180.1)
    auth = header(next_refresh, "Authorization")
    assert (param(auth, "nonce"), param(auth, "nc")) == ("n2", "00000002")


def test_rejected_credentials_are_not_reused() -> None:
    stack = make_stack(5070, "a")
    registered_with_auth(stack)
    first_refresh = refresh(stack, 90.1)
    stack.receive_message(reply(first_refresh, 403, "Forbidden"), REG, 90.01)
    (failed,) = stack.events_received()
    assert isinstance(failed, RegistrationFailed) and failed.status_code == 403
    stack.register("ep", ACC, "sip:sip.test", 120, 91.0, destination=REG)
    ((again, _),) = stack.messages_to_send()
    assert b"Authorization" not in again


def test_transport_error_fails_register_at_once_with_503() -> None:
    stack = make_stack(5070, "a")
    stack.register("ep", ACC, "sip:sip.test", 120, 0.0, destination=REG)
    stack.messages_to_send()
    assert stack.transport_error(("127.0.0.1", 1), 0.1, "other") == 0
    assert stack.transport_error(REG, 0.2, "ICMP port unreachable") == 1
    (failed,) = stack.events_received()
    assert isinstance(failed, RegistrationFailed) and failed.status_code == 503
    assert "ICMP port unreachable" in failed.reason and failed.register_ms == 200.0
    assert advance(stack, 40.0) == []  # no retransmissions left
    assert stack.counters["transport_failures"] == 1


def test_transport_error_fails_invite_bye_and_reinvite() -> None:
    a = make_stack(5001, "a")
    b = make_stack(5002, "b")
    b.listen("bob", "2000")
    net = Net([a, b])
    out = a.invite("alice", ACC, "sip:2000@127.0.0.1:5002", b"v=0\r\n", 0.0)
    a.messages_to_send()  # lost
    assert a.transport_error(("127.0.0.1", 5002), 0.5, "connection refused") == 1
    (failed,) = a.events_received()
    assert isinstance(failed, CallFailed) and (failed.code, failed.by) == (503, "local")
    assert failed.call is out and a.get_timer() is None
    out = a.invite("alice", ACC, "sip:2000@127.0.0.1:5002", b"v=0\r\n", 1.0)
    net.run(1.0)
    (incoming,) = net.ev(b)
    assert isinstance(incoming, IncomingCall)
    b.answer(incoming.call, b"v=0\r\n", 1.1)
    net.run(1.1)
    assert [type(e) for e in net.ev(a)] == [CallAnswered]
    assert [type(e) for e in net.ev(b)] == [CallConfirmed]
    a.reinvite(out, b"v=0\r\na=sendonly\r\n", 2.0)
    a.messages_to_send()
    a.transport_error(("127.0.0.1", 5002), 2.1, "reset")
    (re_failed,) = a.events_received()
    assert isinstance(re_failed, ReInviteFailed) and re_failed.code == 503
    a.bye(out, 3.0)
    a.messages_to_send()
    a.transport_error(("127.0.0.1", 5002), 3.1, "reset")
    (torn,) = a.events_received()
    assert isinstance(torn, CallTeardownFailed) and torn.code == 503
    assert a.counters["internal_errors"] == 0
