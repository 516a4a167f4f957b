"""The set-up of an :class:`~sipswarm.engine.endpoint.Endpoint`: its server, its SIP runtime.

Functions of the endpoint they act on (as :mod:`~sipswarm.engine.registration`
and :mod:`~sipswarm.engine.receiver` are), called from ``Endpoint.start``
once it is INITIALIZING::

    start(ep, now)        the server and the runtime at once if no await is needed,
                          else the task _start; then attached
    _start(ep, target)    (task) DNS (RFC 3263) and/or opening a socket
    attached(ep, rt, now) REGISTER (its 2xx makes it REGISTERED) or listen (REGISTERED now)

Why two paths: nearly every endpoint of a load test sends to an IP literal
(or localhost) over a transport whose shared socket is open already. Then
:meth:`~sipswarm.engine.resolver.SipResolver.resolve_now` and the host's
``runtime_now`` answer without awaiting, and INITIALIZING, REGISTERED and the
INVITE all happen in the one scheduler callback of the start time: no
asyncio task, coroutine steps or runtime lock per endpoint. A DNS name, an
own socket (``socket_per_endpoint``) or a transport's first socket await.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from sipswarm.engine.resolver import ServerTarget
from sipswarm.engine.sip_runtime import SipRuntime
from sipswarm.errors import InvalidState, ResolutionError, ResourceError, SipswarmError
from sipswarm.protocol import Outcome, TraceMode

if TYPE_CHECKING:
    from sipswarm.engine.endpoint import Endpoint

__all__ = ["attached", "start"]

T = TypeVar("T")


def start(ep: Endpoint, now: float) -> None:
    """Find the server and the runtime; attach at once, or in a task when one must await."""
    try:
        target = _resolve_now(ep)
        runtime = None
        if target is not None:
            ep.target = target  # runtime_now names a WebSocket server by it
            runtime = ep.host.runtime_now(ep, target.transport.lower())
    except SipswarmError as exc:
        return _failed(ep, exc)
    if runtime is None:
        ep._task = ep.host.spawn(ep._guard(_start(ep, target)))
        return
    try:
        attached(ep, runtime, now)
    except Exception as exc:  # as Endpoint._guard does for the task: close it, count it
        ep._internal_error(exc)
        raise


async def _start(ep: Endpoint, target: ServerTarget | None) -> None:
    """The awaited set-up: DNS (RFC 3263) and/or opening a socket, then :func:`attached`."""
    try:
        ep.target = target or await _resolve(ep)
        runtime = await ep.host.runtime_for(ep, ep.target.transport.lower())
    except (SipswarmError, OSError) as exc:
        return _failed(ep, exc)
    if ep.cancelled:
        ep.host.release_runtime(ep, runtime)
        return ep._closed(ep.host.loop.time())
    attached(ep, runtime, ep.host.loop.time())


def _failed(ep: Endpoint, exc: SipswarmError | OSError) -> None:
    """The set-up failed: the outcome says which step (server, socket, settings)."""
    if isinstance(exc, ResolutionError):
        register = ep.spec.registrar.register
        ep._abort(Outcome.REGISTRATION_FAILED if register else Outcome.CALL_FAILED, str(exc))
    elif isinstance(exc, ResourceError | OSError):
        ep._abort(Outcome.OSERROR, f"cannot open a SIP socket: {exc}")
    else:
        ep._abort(Outcome.CALL_FAILED, str(exc))


def attached(ep: Endpoint, runtime: SipRuntime, now: float) -> None:
    """Use ``runtime``: register (the 2xx makes it REGISTERED) or listen (REGISTERED now)."""
    spec = ep.spec
    ep.runtime = runtime
    runtime.attach(ep.key, ep)
    stack = ep._stack()
    stack.take_reinvites(ep.key)  # answered by engine/actions.py (hold/resume)
    if ep.trace is not TraceMode.NONE:
        stack.set_trace(ep.key)
    if spec.registrar.register:
        _with_contact_user(
            ep,
            lambda user: stack.register(
                ep.key,
                ep.account,
                None,
                spec.registrar.expires_s,
                now,
                destination=ep.target.address if ep.target else None,
                route=ep._proxy_uri(),
                contact_user=user,
            ),
        )
        runtime.flush()
        return
    ep._reachable(_with_contact_user(ep, lambda user: stack.listen(ep.key, user)), now)


def _with_contact_user(ep: Endpoint, action: Callable[[str], T]) -> T:
    """Run ``action(contact user)``: the account name, or a unique variant when
    another endpoint of this stack already listens on it (shared accounts)."""
    try:
        return action(ep.account.username)
    except InvalidState:
        ep._stack().forget(ep.key)  # drop the half-made record, keep tracing
        if ep.trace is not TraceMode.NONE:
            ep._stack().set_trace(ep.key)
        return action(f"{ep.account.username}-{id(ep):x}")


async def _resolve(ep: Endpoint) -> ServerTarget:
    """The server to send to, through DNS (RFC 3263); see :func:`_server`."""
    resolver = ep.host.resolver
    uri, host = _server(ep)
    if uri is not None:
        return (await resolver.resolve_uri(uri))[0]
    r = ep.spec.registrar
    return (await resolver.resolve(host, r.port, r.transport.value))[0]


def _resolve_now(ep: Endpoint) -> ServerTarget | None:
    """:func:`_resolve` when no DNS is needed (an IP literal), else None."""
    resolver = ep.host.resolver
    uri, host = _server(ep)
    if uri is not None:
        targets = resolver.resolve_uri_now(uri)
    else:
        r = ep.spec.registrar
        targets = resolver.resolve_now(host, r.port, r.transport.value)
    return None if targets is None else targets[0]


def _server(ep: Endpoint) -> tuple[str | None, str]:
    """Where requests go: (a URI to resolve, "") for an outbound proxy or a direct
    call (to the target's host, RFC 3263), else (None, the registrar's host)."""
    r = ep.spec.registrar
    proxy = ep._proxy_uri()
    if proxy is not None:
        return proxy, ""
    if r.register or r.host:
        return None, r.host or r.domain
    return ep.call_spec.target or f"sip:{r.domain}", ""
