"""Record-Route -> route set (RFC 3261 12.1.1/12.1.2): the fast path gives what sipmessage gives."""

from __future__ import annotations

import pytest

from sipswarm.sip.fastparse import _route_set, route_set

CASES = [
    ["<sip:127.0.0.1:5060;lr>"],
    ["<sip:127.0.0.1:5060;lr=on;ftag=abc;did=x.y>, <sip:10.0.0.1;lr>"],
    ["<sip:127.0.0.1;transport=tcp;r2=on;lr>", "<sip:127.0.0.1;transport=udp;r2=on;lr>"],
    ["<sip:[::1]:5060;lr>"],
    [" <sip:a@b:5;lr>  ,<sip:c;lr>"],
    ["<sip:127.0.0.1:5060;lr>;foo=bar"],  # header parameter: sipmessage's path
    ['"Proxy" <sip:p.example.com;lr>'],  # display name: sipmessage's path
    ["<sips:h:1;maddr=1.2.3.4>"],
]


@pytest.mark.parametrize("values", CASES)
def test_route_set_matches_sipmessage(values: list[str]) -> None:
    assert route_set(values) == _route_set(values)


def test_route_set_entries_in_order_as_uris_in_angle_brackets() -> None:
    got = route_set(["<sip:p1;lr>, <sip:p2:5070;lr>", "<sip:p3;lr>"])
    assert got == ["<sip:p1;lr>", "<sip:p2:5070;lr>", "<sip:p3;lr>"]
    assert route_set([]) == []


def test_route_set_bad_syntax_raises_value_error() -> None:
    with pytest.raises(ValueError):
        route_set(["<sip:a;lr"])
