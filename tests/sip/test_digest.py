"""Digest authentication: RFC 7616 / RFC 2617 vectors, challenge parsing, the generator flow."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sipswarm.sip.config import Account
from sipswarm.sip.digest import (
    ALGORITHMS,
    authorization,
    digest_flow,
    digest_response,
    parse_challenge,
)

# RFC 7616 3.9.1 (HTTP example, same computation as SIP): user Mufasa.
RFC7616 = dict(
    username="Mufasa",
    realm="http-auth@example.org",
    password="Circle of Life",
    method="GET",
    uri="/dir/index.html",
    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    nc="00000001",
    cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    qop="auth",
)


def test_rfc7616_md5_vector() -> None:
    assert digest_response(algorithm="MD5", **RFC7616) == "8ca523f5e9506fed4657c9700eebdbec"


def test_rfc7616_sha256_vector() -> None:
    assert (
        digest_response(algorithm="SHA-256", **RFC7616)
        == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    )


def test_rfc2617_vector() -> None:
    # RFC 2617 3.5: qop=auth, MD5.
    assert (
        digest_response(
            algorithm="MD5",
            username="Mufasa",
            realm="testrealm@host.com",
            password="Circle Of Life",
            method="GET",
            uri="/dir/index.html",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            nc="00000001",
            cnonce="0a4f113b",
            qop="auth",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


def test_no_qop_and_sess_differ() -> None:
    base = dict(RFC7616, qop="", nc="", cnonce="")
    plain = digest_response(algorithm="MD5", **base)
    sess = digest_response(algorithm="MD5-sess", **dict(RFC7616))
    assert len(plain) == 32 and plain != sess
    assert len(digest_response(algorithm="SHA-256-sess", **RFC7616)) == 64


def test_parse_challenge_quoted_qop_list() -> None:
    ch = parse_challenge(
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS", stale=TRUE'
    )
    assert ch is not None
    assert ch.qop == ("auth", "auth-int")
    assert ch.algorithm == "SHA-256" and ch.stale and ch.supported
    assert ch.opaque == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


@pytest.mark.parametrize(
    "value",
    ["Basic realm=x", 'Digest realm="r"', "Digest nonce=", 'Digest realm="r", nonce="n", ,,=', ""],
)
def test_parse_challenge_rejects(value: str) -> None:
    assert parse_challenge(value) is None


def test_unsupported_algorithm_is_not_answered() -> None:
    ch = parse_challenge('Digest realm="r", nonce="n", algorithm=AKAv1-MD5')
    assert ch is not None and not ch.supported


def test_authorization_header_matches_rfc7616() -> None:
    ch = parse_challenge(
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe"'
    )
    assert ch is not None
    acc = Account("someone", "example.org", "Circle of Life", auth_username="Mufasa")
    value = authorization(ch, acc, "GET", "/dir/index.html", RFC7616["cnonce"])
    assert 'username="Mufasa"' in value  # auth_username, not username
    assert 'response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"' in value
    assert "qop=auth, nc=00000001" in value and 'opaque="FQhe"' in value


def test_sha512_256_available_when_hashlib_has_it() -> None:
    import hashlib

    assert ("SHA-512-256" in ALGORITHMS) == ("sha512_256" in hashlib.algorithms_available)


@dataclass
class Resp:
    status: int
    values: dict[str, list[str]] = field(default_factory=dict)

    def header_values(self, name: str) -> list[str]:
        return self.values.get(name, [])


def challenge(status: int, nonce: str, stale: bool = False, realm: str = "sip.test") -> Resp:
    name = "www-authenticate" if status == 401 else "proxy-authenticate"
    extra = ", stale=true" if stale else ""
    return Resp(status, {name: [f'Digest realm="{realm}", nonce="{nonce}", qop="auth"{extra}']})


def flow(account: Account):  # type: ignore[no-untyped-def]
    counter = iter(range(1, 100))
    return digest_flow(
        account,
        lambda: f"cn{next(counter)}",
        lambda name, value: (name, value),
        "REGISTER",
        "sip:sip.test",
    )


ACC = Account("1000", "sip.test", "secret")


def test_flow_401_then_200() -> None:
    f = flow(ACC)
    assert next(f) == (None, None)
    name, value = f.send(challenge(401, "n1"))
    assert name == "Authorization" and 'nonce="n1"' in value and 'cnonce="cn1"' in value
    with pytest.raises(StopIteration) as done:
        f.send(Resp(200))
    assert done.value.value.status == 200


def test_flow_407_uses_proxy_authorization() -> None:
    f = flow(ACC)
    next(f)
    name, _ = f.send(challenge(407, "n1"))
    assert name == "Proxy-Authorization"


def test_flow_second_challenge_fails() -> None:
    f = flow(ACC)
    next(f)
    f.send(challenge(401, "n1"))
    with pytest.raises(StopIteration) as done:
        f.send(challenge(401, "n2"))
    assert done.value.value.status == 401


def test_flow_stale_retries_with_new_nonce_then_bounded() -> None:
    f = flow(ACC)
    next(f)
    f.send(challenge(401, "n1"))
    _, value = f.send(challenge(401, "n2", stale=True))
    assert 'nonce="n2"' in value
    f.send(challenge(401, "n3", stale=True))
    f.send(challenge(401, "n4", stale=True))
    with pytest.raises(StopIteration):
        f.send(challenge(401, "n5", stale=True))


def test_flow_realm_from_account_must_match() -> None:
    f = flow(Account("1000", "sip.test", "secret", realm="other"))
    next(f)
    with pytest.raises(StopIteration) as done:
        f.send(challenge(401, "n1"))
    assert done.value.value.status == 401


def test_flow_picks_first_supported_challenge() -> None:
    f = flow(ACC)
    next(f)
    resp = Resp(
        401,
        {
            "www-authenticate": [
                'Digest realm="sip.test", nonce="a", algorithm=AKAv1-MD5',
                'Digest realm="sip.test", nonce="b", algorithm=SHA-256, qop="auth"',
            ]
        },
    )
    _, value = f.send(resp)
    assert 'nonce="b"' in value and "algorithm=SHA-256" in value
