"""The endpoint engine of one process: the agent's Backend, and the CLI's one-call engine.

Theory of operation
-------------------
One :class:`EndpointEngine` per engine shard (one process, one event loop)
implements :class:`~sipswarm.agent.backend.Backend`. It owns:

* the SIP runtimes (:class:`~sipswarm.engine.sip_runtime.SipRuntime`): one
  shared socket per transport (``udp``/``tcp``/``tls``/``ws``/``wss``; for
  WebSocket one connection per server), opened on first use,
  or with ``socket_per_endpoint`` one socket per endpoint, as real phones have;
* the :class:`~sipswarm.engine.media_engine.MediaEngine` (RTP port pool, the
  one media clock) and the RFC 3263 :class:`~sipswarm.engine.resolver.SipResolver`;
* one :class:`~sipswarm.engine.scheduler.Scheduler` heap for every endpoint
  timer, start times included, and per run a metrics tick on it.

``start_assignment(spec)`` builds one :class:`~sipswarm.engine.endpoint.Endpoint`
per endpoint spec and schedules its start at ``start_at + start_offset_ms``
(epoch ms converted to the loop clock with one offset taken at start-up),
then returns. Items go to ``emit`` as PROTOCOL.md dicts; the engine adds the
``metrics`` item per run per interval and one ``finished`` per assignment
after its last ``outcome``. Times of SIP events are the loop's monotonic
``time()``, turned into epoch ms by :meth:`EndpointEngine.epoch_ms`.

``sipswarm call``/``answer`` run the same engine with one endpoint (a
*service* endpoint for ``answer``: :meth:`EndpointEngine.start_service`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipswarm.agent.assignment import AssignmentSpec, EndpointSpec
from sipswarm.agent.backend import EmitItem
from sipswarm.agent.config import AgentConfig
from sipswarm.engine.endpoint import Endpoint
from sipswarm.engine.media_engine import MediaEngine
from sipswarm.engine.metrics_build import MetricsBuilder
from sipswarm.engine.overload import GeneratorHealth
from sipswarm.engine.ports import PortPool
from sipswarm.engine.resolver import ResolverSettings, SipResolver
from sipswarm.engine.rtp_session import RtpSession
from sipswarm.engine.scheduler import ScheduledCall, Scheduler
from sipswarm.engine.sip_runtime import RuntimeSettings, SipRuntime
from sipswarm.engine.switchable import SwitchableCodec, SwitchableSource
from sipswarm.engine.tls import TlsSettings, client_context, server_context
from sipswarm.engine.ws_transport import WsTransport
from sipswarm.errors import ConfigError, ResourceError
from sipswarm.media.codecs import Codec
from sipswarm.media.sources import EncodedSource, get_source
from sipswarm.protocol import Outcome, Phase, SourceKind, TraceMode
from sipswarm.sip.config import TimerConfig
from sipswarm.sip.events import IncomingCall
from sipswarm.sip.ids import RandomIdFactory

__all__ = ["CANCEL_DEADLINE_S", "EndpointEngine", "EngineSettings", "engine_backend_factory"]

#: PROTOCOL.md: a cancelled run's endpoints are closed within 5 s; force what is left by then.
CANCEL_DEADLINE_S = 4.5
_WILDCARD = ("0.0.0.0", "::", "")
_TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Settings of one engine process.

    ``bind_host``: address of SIP and RTP sockets; ``public_host`` goes into
    Via/Contact/SDP instead (NAT). ``sip_port`` 0 = any free port (shared
    sockets only). ``socket_per_endpoint`` gives each endpoint its own SIP
    socket and port. ``tls`` verifies servers for ``tls`` transport;
    ``tls_cert``/``tls_key`` let a TLS listener accept connections.
    ``ws_path`` is the URL path of the server's SIP WebSocket endpoint
    (``ws``/``wss``, RFC 7118); ``tls.server_name`` is also its Host name.
    """

    bind_host: str = "127.0.0.1"
    public_host: str | None = None
    sip_port: int = 0
    socket_per_endpoint: bool = False
    rtp_port_range: tuple[int, int] = (20000, 39999)
    max_endpoints: int = 500
    tls: TlsSettings = field(default_factory=TlsSettings)
    tls_cert: str | None = None
    tls_key: str | None = None
    resolver: ResolverSettings | None = None
    media_dir: Path | None = None
    timers: TimerConfig = field(default_factory=TimerConfig)
    ws_path: str = "/"

    def __post_init__(self) -> None:
        if not self.ws_path.startswith("/"):
            raise ConfigError(f"ws_path must start with '/', got {self.ws_path!r}")
        if self.max_endpoints < 1:
            raise ConfigError(f"max_endpoints must be >= 1, got {self.max_endpoints}")
        if not 0 <= self.sip_port < 65536:
            raise ConfigError(f"sip_port must be 0-65535, got {self.sip_port}")


@dataclass(slots=True)
class _Run:
    run_id: str
    interval_s: float
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    tick: ScheduledCall | None = None


@dataclass(slots=True)
class _Assignment:
    assignment_id: str
    run_id: str
    total: int
    remaining: int
    outcomes: Counter[str] = field(default_factory=Counter)


class EndpointEngine:
    """Backend of one process. Next: ``await start_assignment(spec)``, ``cancel_run``,
    ``wait_idle``, ``close``; or ``start_service`` for ``sipswarm answer``."""

    def __init__(
        self,
        settings: EngineSettings,
        emit: EmitItem,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._emit = emit
        self.loop = loop or asyncio.get_running_loop()
        self._rng = rng or random.Random()
        self._ids = RandomIdFactory(self._rng)
        self.scheduler = Scheduler(self.loop, on_error=self._callback_failed)
        self.resolver = SipResolver(settings.resolver)
        self._offset = time.time() - self.loop.time()
        self.media: MediaEngine | None = None
        self._runtimes: dict[str, SipRuntime] = {}
        self._own_runtimes: dict[tuple[str, str], SipRuntime] = {}
        self._runtime_locks: dict[str, asyncio.Lock] = {}
        self._runs: dict[str, _Run] = {}
        self._assignments: dict[str, _Assignment] = {}
        self._assignment_of: dict[tuple[str, str], _Assignment] = {}
        self._starts: dict[tuple[str, str], ScheduledCall] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._active = 0
        self._children = 0
        self._counters: Counter[str] = Counter()
        self.health: GeneratorHealth | None = None  # judges loop lag / send lateness
        self.sdp_address = settings.public_host or settings.bind_host
        self.errors: list[str] = []
        self._metrics_builder: MetricsBuilder[Endpoint] = MetricsBuilder(
            self.loop, self.emit, lambda ep: ep.phase is not Phase.CLOSED
        )

    # -- host API for endpoints ---------------------------------------------------------
    def emit(self, item: dict[str, Any]) -> None:
        """Forward an item; count calls and outcomes on the way (for /metrics)."""
        kind = item["kind"]
        if kind == "call":
            self._counters["calls_total"] += 1
            self._counters[f"calls_{item['result']}_total"] += 1
        elif kind == "outcome":
            self._counters[f"outcomes_{item['outcome']}_total"] += 1
        self._emit(item)

    def epoch_ms(self, t: float | None) -> int | None:
        """Loop time -> Unix epoch milliseconds (None stays None)."""
        return None if t is None else round((t + self._offset) * 1000)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a short set-up coroutine of an endpoint; failures are logged, not raised."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._callback_failed(task.exception())  # type: ignore[arg-type]

    def _callback_failed(self, exc: BaseException) -> None:
        self._counters["internal_errors_total"] += 1
        self.errors.append(f"{type(exc).__name__}: {exc}")
        del self.errors[:-20]

    def runtime_now(self, endpoint: Endpoint, transport: str) -> SipRuntime | None:
        """The shared runtime of ``transport`` when it is open already (no await);
        None when a socket must be opened first: then ``await runtime_for(...)``."""
        if transport not in _TRANSPORTS:
            raise ConfigError(
                f"registrar.transport {transport!r} is not supported; use udp/tcp/tls/wss"
            )
        if self.settings.socket_per_endpoint:
            return None
        shared = self._runtimes.get(transport)  # set only once fully open (runtime_for)
        if shared is not None:
            _name_server(shared, endpoint)
        return shared

    async def runtime_for(self, endpoint: Endpoint, transport: str) -> SipRuntime:
        """The SIP runtime an endpoint uses: shared per transport or its own socket."""
        shared = self.runtime_now(endpoint, transport)
        if shared is not None:
            return shared
        target = endpoint.target.address if endpoint.target is not None else None
        if self.settings.socket_per_endpoint:
            runtime = await self._open_runtime(transport, 0, target)
            runtime.exclusive_owner = endpoint
            self._own_runtimes[endpoint.key] = runtime
        else:
            lock = self._runtime_locks.setdefault(transport, asyncio.Lock())
            async with lock:
                shared = self._runtimes.get(transport)
                if shared is None:
                    shared = await self._open_runtime(transport, self.settings.sip_port, target)
                    self._runtimes[transport] = shared
            runtime = shared
        _name_server(runtime, endpoint)
        return runtime

    async def _open_runtime(
        self, transport: str, port: int, target: tuple[str, int] | None
    ) -> SipRuntime:
        s = self.settings
        advertised = None
        if s.bind_host in _WILDCARD and s.public_host is None:
            advertised = source_address_towards(target)
            self.sdp_address = advertised
        client_tls = server_tls = None
        if transport in ("tls", "wss"):
            client_tls = client_context(s.tls)
        if transport == "tls" and s.tls_cert and s.tls_key:
            server_tls = server_context(s.tls_cert, s.tls_key)
        settings = RuntimeSettings(
            transport,
            s.bind_host,
            port,
            s.public_host,
            advertised,
            client_tls,
            server_tls,
            s.timers,
            # RFC 7118 §5: a random .invalid host in Via and Contact of a WebSocket client.
            contact_host=f"{self._rng.getrandbits(48):012x}.invalid",
            ws_path=s.ws_path,
            server_name=s.tls.server_name,
        )
        return await SipRuntime.open(self.loop, settings, self._ids)

    def release_runtime(self, endpoint: Endpoint, runtime: SipRuntime) -> None:
        """An endpoint is done with its runtime: close it if it was its own socket."""
        own = self._own_runtimes.pop(endpoint.key, None)
        if own is not None:
            self._fold_sip_counters(own)
            own.close()

    def _media_engine(self) -> MediaEngine:
        if self.media is None:
            host = self.settings.bind_host
            self.media = MediaEngine(self.settings.rtp_port_range, host, loop=self.loop)
            self.media.start()
            self.health = GeneratorHealth(
                self.scheduler, self.media.take_clock_stats, self.loop.time
            )
            self.health.start()
        return self.media

    async def open_media(
        self, endpoint: Endpoint, codec: SwitchableCodec, source: SwitchableSource
    ) -> RtpSession:
        """Bind an RTP/RTCP port pair for ``endpoint`` (ResourceError when exhausted)."""
        m = endpoint.spec.media
        return await self._media_engine().open_session(codec, m.ptime_ms, source, dscp=m.dscp)

    def close_media(self, session: RtpSession) -> None:
        """Stop the session (RTCP BYE) and return its ports; count its packets."""
        self._counters["rtp_packets_sent_closed"] += session.send_stats.packets_sent
        self._counters["rtp_packets_received_closed"] += session.recv_stats.packets_received
        self._counters["rtp_dtmf_packets_sent_total"] += session.dtmf_packets_sent
        if self.media is not None:
            self.media.close_session(session)

    def source_for(self, endpoint: Endpoint, codec: Codec) -> EncodedSource:
        """The encoded source of ``endpoint``'s media spec for ``codec`` (cached per process)."""
        m = endpoint.spec.media
        src = m.source
        if src.kind is SourceKind.TONE:
            return get_source(
                "tone", {"frequency_hz": src.frequency_hz or 1000.0}, codec, m.ptime_ms
            )
        if src.kind is SourceKind.FILE:
            if self.settings.media_dir is None or src.sha256 is None:
                raise ConfigError("media.source file needs the worker's media directory")
            path = self.settings.media_dir / f"{src.sha256}.wav"
            return get_source("file", {"path": str(path)}, codec, m.ptime_ms)
        return get_source("silence", {}, codec, m.ptime_ms)

    def adopt_call(self, service: Endpoint, event: IncomingCall) -> None:
        """A service endpoint got an INVITE: a child endpoint takes this one call."""
        runtime = service.runtime
        if runtime is None or runtime.stack is None:
            return
        self._children += 1
        s = service.spec  # the child: the service's spec, its own id, never registers
        registrar = s.registrar
        if registrar.register:
            registrar = dataclasses.replace(registrar, register=False)
        spec = EndpointSpec(
            f"{s.endpoint_id}/{self._children}",
            s.group,
            s.role,
            s.start_offset_ms,
            s.account,
            registrar,
            s.call,
            s.media,
            s.actions,
        )  # positional: dataclasses.replace walks fields() on every call
        child = Endpoint(self, spec, service.run_id, service.trace)
        child.runtime = runtime
        runtime.stack.adopt(event.call, child.key, service.account.username)
        if child.trace is not TraceMode.NONE:
            runtime.stack.set_trace(child.key)
        runtime.attach(child.key, child)
        self._add_endpoint(child)
        child.take_call(event, self.loop.time())

    def endpoint_closed(self, endpoint: Endpoint) -> None:
        """Bookkeeping once an endpoint reached CLOSED (its outcome item is out)."""
        run = self._runs.get(endpoint.run_id)
        if run is not None:
            run.endpoints.pop(endpoint.endpoint_id, None)
        self._starts.pop(endpoint.key, None)
        self._active -= 1
        for name, count in endpoint.action_counts.items():  # docs/protocol.md "Actions"
            self._counters[f"actions_{name}_total"] += count
        if self._active == 0:
            self._idle.set()
        entry = self._assignment_of.pop(endpoint.key, None)
        if entry is None:
            return
        entry.outcomes[endpoint.result.final()[0].value] += 1
        entry.remaining -= 1
        if entry.remaining == 0:
            self._assignments.pop(entry.assignment_id, None)
            self._metrics_builder.complete(entry.run_id)  # its last metrics before finished
            self.emit(
                {
                    "kind": "finished",
                    "run_id": entry.run_id,
                    "assignment_id": entry.assignment_id,
                    "ts": self.epoch_ms(self.loop.time()),
                    "endpoints": entry.total,
                    "outcomes": dict(entry.outcomes),
                }
            )

    # -- Backend ------------------------------------------------------------------------
    def free_endpoints(self) -> int:
        """Endpoints that could start now: bounded by max endpoints and RTP port pairs."""
        low, high = self.settings.rtp_port_range
        pairs = self.media.pool.capacity if self.media is not None else (high - low + 1) // 2
        return max(0, min(self.settings.max_endpoints, pairs) - self._active)

    def active_endpoints(self) -> int:
        return self._active

    def problem(self) -> str | None:
        """Why no endpoint can start now (the worker turns ERROR with it), else None."""
        if self.free_endpoints() == 0:
            return None  # full of its own endpoints: busy, not broken
        if self.media is not None:
            return self.media.pool.probe()
        low, high = self.settings.rtp_port_range
        return PortPool(low, high, self.settings.bind_host).probe()

    def phase_counts(self) -> dict[str, int]:
        # counted by member (C-level), named once per phase: this runs per status frame
        counts: Counter[Phase | None] = Counter()
        for run in self._runs.values():
            counts.update(ep.phase for ep in run.endpoints.values())
        named: Counter[str] = Counter()
        for phase, n in counts.items():
            named[(phase or Phase.INITIALIZING).value] += n
        return dict(named)

    def counters(self) -> dict[str, float]:
        """Calls, outcomes, RTP packets, SIP counters of every stack, loop lag p99."""
        out: dict[str, float] = {k: float(v) for k, v in self._counters.items()}
        sent = out.pop("rtp_packets_sent_closed", 0.0)
        received = out.pop("rtp_packets_received_closed", 0.0)
        if self.media is not None:
            for s in self.media.sessions:
                sent += s.send_stats.packets_sent
                received += s.recv_stats.packets_received
        out["rtp_packets_sent_total"] = sent
        out["rtp_packets_received_total"] = received
        out["loop_lag_ms_p99"] = self.health.loop_lag_p99_ms if self.health else 0.0
        sip: Counter[str] = Counter()
        for runtime in [*self._runtimes.values(), *self._own_runtimes.values()]:
            sip.update(runtime.counters())
        for name, value in sip.items():
            out[f"sip_{name}_total"] = out.get(f"sip_{name}_total", 0.0) + float(value)
        return out

    def _fold_sip_counters(self, runtime: SipRuntime) -> None:
        for name, value in runtime.counters().items():
            self._counters[f"sip_{name}_total"] += value

    async def start_assignment(self, spec: AssignmentSpec) -> None:
        """Schedule every endpoint at ``start_at + start_offset_ms`` and return."""
        if spec.assignment_id in self._assignments:
            return
        if len(spec.endpoints) > self.free_endpoints():
            raise ResourceError(
                f"{self.free_endpoints()} endpoints free, {len(spec.endpoints)} requested"
            )
        self._media_engine()
        run = self._run(spec.run_id, spec.metrics_interval_ms)
        entry = _Assignment(
            spec.assignment_id, spec.run_id, len(spec.endpoints), len(spec.endpoints)
        )
        self._assignments[spec.assignment_id] = entry
        now_ms = time.time() * 1000
        base = spec.start_at_ms if spec.start_at_ms is not None else now_ms
        for ep_spec in spec.endpoints:
            endpoint = Endpoint(self, ep_spec, spec.run_id, spec.trace)
            self._assignment_of[endpoint.key] = entry
            self._add_endpoint(endpoint, run)
            delay = (base + ep_spec.start_offset_ms - now_ms) / 1000
            self._starts[endpoint.key] = self.scheduler.call_later(delay, endpoint.start)

    def start_service(self, spec: EndpointSpec, run_id: str, trace: TraceMode) -> Endpoint:
        """Start one endpoint now that answers every call through child endpoints."""
        self._media_engine()
        endpoint = Endpoint(self, spec, run_id, trace, service=True)
        self._add_endpoint(endpoint, self._run(run_id, 1000))
        endpoint.start(self.loop.time())
        return endpoint

    def start_endpoint(self, spec: EndpointSpec, run_id: str, trace: TraceMode) -> Endpoint:
        """Start one endpoint now, outside any assignment (``sipswarm call``)."""
        self._media_engine()
        endpoint = Endpoint(self, spec, run_id, trace)
        self._add_endpoint(endpoint, self._run(run_id, 1000))
        endpoint.start(self.loop.time())
        return endpoint

    def _run(self, run_id: str, interval_ms: int) -> _Run:
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = _Run(run_id, interval_ms / 1000)
            run.tick = self.scheduler.call_later(
                run.interval_s, lambda now: self._metrics(run, now)
            )
        return run

    def _add_endpoint(self, endpoint: Endpoint, run: _Run | None = None) -> None:
        run = run or self._runs[endpoint.run_id]
        run.endpoints[endpoint.endpoint_id] = endpoint
        self._active += 1
        self._idle.clear()

    def _metrics(self, run: _Run, now: float) -> None:
        """One ``metrics`` item for the run: every started, not yet closed endpoint.

        Built a slice at a time (``engine/metrics_build.py``) so that the media
        clock keeps sending while a thousand entries are put together.
        """
        self._metrics_builder.start(
            {
                "kind": "metrics",
                "run_id": run.run_id,
                "ts": self.epoch_ms(now),
                # extension (docs/protocol.md): is the generator itself keeping up?
                "generator": self.health.block_since(now - run.interval_s)
                if self.health is not None
                else None,
            },
            [ep for ep in run.endpoints.values() if ep.phase is not None],
        )
        if run.endpoints:
            run.tick = self.scheduler.call_later(run.interval_s, lambda t: self._metrics(run, t))
        else:
            self._runs.pop(run.run_id, None)

    def generator_overload(self, start: float, end: float) -> str | None:
        """Why results between ``start`` and ``end`` (loop clock) are not to be trusted:
        an overloaded interval of the generator overlapped them; None when none did."""
        worst = self.health.overload_between(start, end) if self.health is not None else None
        return None if worst is None else worst.describe()

    async def cancel_run(self, run_id: str, reason: str) -> None:
        """Hang up, unregister and close every endpoint of ``run_id``; force by 4.5 s."""
        run = self._runs.get(run_id)
        if run is None:
            return
        now = self.loop.time()
        for endpoint in list(run.endpoints.values()):
            start = self._starts.pop(endpoint.key, None)
            if start is not None:
                start.cancel()
            endpoint.cancel(reason, now)
        deadline = now + CANCEL_DEADLINE_S
        while run.endpoints and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for endpoint in list(run.endpoints.values()):
            endpoint.fail(Outcome.CANCELLED, reason)
            endpoint.force_close(self.loop.time())

    async def wait_idle(self) -> None:
        """Return once no endpoint is active."""
        await self._idle.wait()

    async def close(self) -> None:
        """Cancel everything still running, close sockets and the media clock."""
        self._metrics_builder.complete_all()
        for run_id in list(self._runs):
            await self.cancel_run(run_id, "shutdown")
        for task in list(self._tasks):
            task.cancel()
        for runtime in [*self._runtimes.values(), *self._own_runtimes.values()]:
            runtime.close()
        self._runtimes.clear()
        self._own_runtimes.clear()
        if self.health is not None:
            self.health.stop()
        self.scheduler.close()
        if self.media is not None:
            await self.media.close()
        await asyncio.sleep(0)


def _name_server(runtime: SipRuntime, endpoint: Endpoint) -> None:
    """WebSocket: the Host header and certificate name of the endpoint's server are
    the domain, not the resolved address."""
    if isinstance(runtime.transport, WsTransport) and endpoint.target is not None:
        runtime.transport.name_server(endpoint.target.address, endpoint.target.server_name)


def source_address_towards(target: tuple[str, int] | None) -> str:
    """The local address the kernel would use to reach ``target`` (UDP connect: no packet)."""
    if target is None:
        return "127.0.0.1"
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(target)
        address: str = sock.getsockname()[0]
        return address
    return "127.0.0.1"


def engine_backend_factory(config: AgentConfig, emit: EmitItem) -> EndpointEngine:
    """``BackendFactory`` for ``sipswarm agent`` shards: settings from the agent config."""
    settings = EngineSettings(
        bind_host=config.sip_bind_address,
        public_host=config.sip_public_address,
        rtp_port_range=config.rtp_port_range,
        max_endpoints=config.max_endpoints,
        media_dir=config.media_dir,
    )
    return EndpointEngine(settings, emit)
