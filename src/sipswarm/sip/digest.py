"""HTTP digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760).

Theory of operation
-------------------
:func:`parse_challenge` reads a ``WWW-Authenticate``/``Proxy-Authenticate``
value (its own quoted-string aware splitter: sipmessage's splits
``qop="auth,auth-int"`` at the comma). :func:`authorization` computes the
``Authorization``/``Proxy-Authorization`` value for one request.

The round trip is a generator (STYLE.md rule 6), driven by the stack::

    flow = digest_flow(account, cnonce_factory, render)
    request = next(flow)                      # first attempt, no credentials
    while True:
        response = <send request, wait for its final response>
        try:
            request = flow.send(response)     # 401/407: the same request with credentials
        except StopIteration as done:
            final = done.value                # the response the caller acts on
            break

``render(header_name, header_value)`` builds the request (a fresh branch and
the next CSeq each time); ``digest_flow`` never sends anything itself.
Rules: the realm comes from the account if set (a challenge for another realm
is not answered), else from the challenge; a second challenge after
credentials were sent fails the flow unless it says ``stale=true``
(RFC 7616 §3.3: the nonce expired, the credentials were right), and stale
retries are bounded too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from sipswarm.sip.config import Account

__all__ = [
    "ALGORITHMS",
    "DigestCache",
    "DigestChallenge",
    "authorization",
    "digest_flow",
    "digest_response",
    "parse_challenge",
]

MAX_STALE_RETRIES = 3


def _hasher(name: str) -> Callable[[bytes], str]:
    def digest(data: bytes) -> str:
        return hashlib.new(name, data).hexdigest()

    return digest


# RFC 7616 3.2 / RFC 8760 2.1: algorithm token -> hash; "-sess" variants share the hash.
ALGORITHMS: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
}
if "sha512_256" in hashlib.algorithms_available:
    ALGORITHMS["SHA-512-256"] = _hasher("sha512_256")

# A quoted-string is matched "unrolled" (runs of plain characters between quoted-pairs):
# the same language as ("(?:[^"\\]|\\.)*"), twice as fast as one alternation per character.
_PARAM = re.compile(r'\s*([A-Za-z0-9\-_.]+)\s*=\s*("[^"\\]*(?:\\.[^"\\]*)*"|[^\s,]*)\s*(?:,|$)')


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """One parsed Digest challenge."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    params: dict[str, str] = field(default_factory=dict)

    @property
    def supported(self) -> bool:
        """True if the algorithm is one we can compute and qop allows auth or none."""
        base = self.algorithm.upper().removesuffix("-SESS")
        return base in ALGORITHMS and (not self.qop or "auth" in self.qop)


def parse_challenge(value: str) -> DigestChallenge | None:
    """Parse a challenge header value; None if it is not a usable Digest challenge."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            return None
        raw = m.group(2)
        if raw.startswith('"'):
            raw = raw[1:-1]
            if "\\" in raw:  # RFC 3261 25.1 quoted-pair; most values have none
                raw = re.sub(r"\\(.)", r"\1", raw)
        params[m.group(1).lower()] = raw
        pos = m.end()
    if "nonce" not in params or "realm" not in params:
        return None
    qop = params.get("qop")
    return DigestChallenge(
        params["realm"],
        params["nonce"],
        params.get("algorithm", "MD5"),
        (_QOPS.get(qop) or _qop_options(qop)) if qop else (),
        params.get("opaque"),
        params.get("stale", "").lower() == "true",
        params,
    )


_QOPS = {"auth": ("auth",), "auth,auth-int": ("auth", "auth-int")}
"""qop values as servers send them (Kamailio: "auth"), already split."""


def _qop_options(value: str) -> tuple[str, ...]:
    return tuple(q.strip() for q in value.split(",") if q.strip())


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str = "",
    cnonce: str = "",
    qop: str = "",
) -> str:
    """The ``response`` value (RFC 7616 3.4.1; RFC 2617 3.2.2.1 without qop)."""
    algo = algorithm.upper()
    sess = algo.endswith("-SESS")
    h = ALGORITHMS[algo.removesuffix("-SESS")]
    ha1 = h(f"{username}:{realm}:{password}".encode())
    if sess:  # RFC 7616 3.4.2
        ha1 = h(f"{ha1}:{nonce}:{cnonce}".encode())
    ha2 = h(f"{method}:{uri}".encode())  # qop=auth (auth-int is not offered)
    if qop:
        return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())
    return h(f"{ha1}:{nonce}:{ha2}".encode())


def authorization(
    challenge: DigestChallenge,
    account: Account,
    method: str,
    uri: str,
    cnonce: str,
    nc: int = 1,
) -> str:
    """Credentials header value answering ``challenge`` for one request (RFC 3261 22.4)."""
    username = account.auth_username or account.username
    qop = "auth" if "auth" in challenge.qop else ""
    nc_text = f"{nc:08x}" if qop else ""
    response = digest_response(
        algorithm=challenge.algorithm,
        username=username,
        realm=challenge.realm,
        password=account.password,
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        nc=nc_text,
        cnonce=cnonce if qop else "",
        qop=qop,
    )
    parts = [
        f'Digest username="{_q(username)}"',
        f'realm="{_q(challenge.realm)}"',
        f'nonce="{_q(challenge.nonce)}"',
        f'uri="{_q(uri)}"',
        f'response="{response}"',
        f"algorithm={challenge.algorithm}",
    ]
    if qop:
        parts += [f"qop={qop}", f"nc={nc_text}", f'cnonce="{_q(cnonce)}"']
    if challenge.opaque is not None:
        parts.append(f'opaque="{_q(challenge.opaque)}"')
    return ", ".join(parts)


def _q(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class ChallengeResponse(Protocol):
    """What the flow needs from a response: its status and challenge headers."""

    @property
    def status(self) -> int: ...

    def header_values(self, name: str) -> list[str]: ...


R = TypeVar("R")
Resp = TypeVar("Resp", bound=ChallengeResponse)

_CHALLENGE_HEADER = {
    401: ("www-authenticate", "Authorization"),
    407: ("proxy-authenticate", "Proxy-Authorization"),
}


def pick_challenge(
    response: ChallengeResponse, account: Account
) -> tuple[str, DigestChallenge] | None:
    """(credentials header name, challenge) to answer, or None if none is usable."""
    names = _CHALLENGE_HEADER.get(response.status)
    if names is None:
        return None
    # RFC 8760 2.4: several challenges may be offered, preferred first; take the
    # first one we can compute for the account's realm.
    for value in response.header_values(names[0]):
        challenge = parse_challenge(value)
        if challenge is None or not challenge.supported:
            continue
        if account.realm and account.realm != challenge.realm:
            continue
        return names[1], challenge
    return None


@dataclass(slots=True)
class DigestCache:
    """The last challenge answered in a series of requests to one server (a
    registration's REGISTERs): the next request of the series carries credentials
    up front, same nonce and nc + 1 (RFC 7616 3.4: the server may accept a nonce
    several times), so a refresh is one round trip as on real phones. Emptied by
    :meth:`clear` when an outcome says the cached credentials are no good."""

    header: str = ""
    challenge: DigestChallenge | None = None
    nc: int = 0

    def clear(self) -> None:
        self.header, self.challenge, self.nc = "", None, 0


def digest_flow(
    account: Account,
    cnonce: Callable[[], str],
    render: Callable[[str | None, str | None], R],
    method: str,
    uri: str,
    cache: DigestCache | None = None,
) -> Generator[R, Resp, Resp]:
    """Yield requests, receive their final responses; return the final response to act on.

    ``render(None, None)`` is the first attempt; ``render(name, value)`` adds
    the credentials header. The returned response is a 2xx, a non-auth
    failure, or the 401/407 that could not (or may no longer) be answered.
    With a ``cache`` holding a challenge, the first attempt already carries
    credentials for it; a 401/407 to that attempt is answered as a first
    challenge (the normal flow), and every challenge answered is cached.
    """
    if cache is not None and cache.challenge is not None:
        cache.nc += 1
        value = authorization(cache.challenge, account, method, uri, cnonce(), cache.nc)
        response = yield render(cache.header, value)
    else:
        response = yield render(None, None)
    answered = False
    stale_retries = 0
    while response.status in _CHALLENGE_HEADER:
        picked = pick_challenge(response, account)
        if picked is None:
            return response
        header, challenge = picked
        if answered:
            # RFC 7616 3.3: only stale=true means "right credentials, old nonce".
            if not challenge.stale or stale_retries >= MAX_STALE_RETRIES:
                return response
            stale_retries += 1
        answered = True
        nc = 1
        if cache is not None:
            cache.header, cache.challenge, cache.nc = header, challenge, 1
        value = authorization(challenge, account, method, uri, cnonce(), nc)
        response = yield render(header, value)
    return response
