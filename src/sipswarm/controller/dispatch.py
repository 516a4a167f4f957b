"""Turn a plan into PROTOCOL.md ``assign`` frames, split across workers by free capacity.

Theory of operation (no I/O here; the run manager owns sockets and clocks):

1. :func:`allocate` places every endpoint of the plan on a worker, in
   proportion to each worker's free capacity (largest remainder), dealing
   endpoints out smoothly so that every group is spread over every worker.
   It raises :class:`CapacityError` when the plan does not fit.
2. The run is phased: receivers first. :meth:`Dispatch.receiver_assigns`
   builds one ``assign`` per worker holding receivers. The run manager feeds
   every ``phase`` and ``outcome`` item to :meth:`Dispatch.receive_phase` /
   :meth:`Dispatch.receive_outcome`; :meth:`Dispatch.callers_due` says when
   every receiver has settled (REGISTERED, or closed) or the registration
   window has ended (:meth:`Dispatch.get_timer` gives that deadline).
3. :meth:`Dispatch.caller_assigns` then builds the callers' ``assign``
   frames. A caller whose target is a group gets a REGISTERED receiver of it,
   round-robin: the receiver's address of record when it registers with a
   registrar, else the ``contact`` of its REGISTERED phase item. Callers left
   without any reachable receiver are returned as ``unreachable`` so that the
   run manager records them as failed instead of sending them.

4. Receivers' lifetime (docs/plan.md "Receivers' lifetime"): a receiver
   answers calls one after another. Receivers of a group that callers
   target are sent ``call.idle_timeout_s`` (:meth:`Dispatch.receiver_idle_timeout_s`)
   so that one nobody calls closes with TIMEOUT instead of waiting forever,
   and ``call.expected_calls`` (:meth:`Dispatch.expected_calls`: the callers
   the round-robin plans for it; both worker extensions) so that it closes by
   itself right after its last call. A caller goes to its planned receiver
   only; if that one is not reachable the caller is returned ``unreachable``
   (re-routing it would send a receiver more calls than it expects). The
   run manager ends the stragglers (``cancel`` reason
   ``complete``) only once every caller closed and no receiver is in a call
   (:meth:`Dispatch.receivers_in_call`), so that a receiver finishing its
   call is never turned CANCELLED.

Endpoint ids are ``<run_id>/<group>/<n>``; buildup offsets (``start_offset_ms``)
are counted from 0 within each phase.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sipswarm.controller.plan import Group, Plan
from sipswarm.controller.spacing import buildup_offsets
from sipswarm.errors import ResourceError
from sipswarm.protocol.enums import Phase
from sipswarm.protocol.models import (
    Account,
    Action,
    Assign,
    AssignEndpoint,
    AssignSettings,
    CallSettings,
    MediaSettings,
    MediaSource,
    Registrar,
)

SETTLED_PHASES = frozenset({Phase.REGISTERED, Phase.DISCONNECTING, Phase.CLOSED})
IN_CALL_PHASES = frozenset(
    {Phase.CALLING, Phase.RINGING, Phase.NEGOTIATING, Phase.INCALL, Phase.DISCONNECTING}
)
#: Added to a receiver's idle timeout for the start lead, ticks and the system under test.
IDLE_MARGIN_S = 30.0


class CapacityError(ResourceError):
    """The plan needs more endpoints than the connected workers have free."""


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """A worker that can take endpoints now, with how many it has free."""

    worker_id: str
    free: int


@dataclass(frozen=True, slots=True)
class Placed:
    """One endpoint of the plan, placed on a worker."""

    endpoint_id: str
    group: Group
    n: int
    worker_id: str
    start_offset_ms: int = 0


def endpoint_id(run_id: str, group: str, n: int) -> str:
    """``<run_id>/<group>/<n>`` (PROTOCOL.md endpoint ids as this controller makes them)."""
    return f"{run_id}/{group}/{n}"


def group_of(endpoint_id_: str) -> str:
    """The group name inside an endpoint id made by :func:`endpoint_id`."""
    parts = endpoint_id_.split("/")
    return parts[-2] if len(parts) >= 3 else ""


def quotas(count: int, workers: Sequence[WorkerSlot]) -> dict[str, int]:
    """Endpoints per worker, proportional to free capacity (largest remainder)."""
    usable = [w for w in workers if w.free > 0]
    free = sum(w.free for w in usable)
    if count > free:
        detail = ", ".join(f"{w.worker_id}: {w.free}" for w in workers) or "no worker connected"
        raise CapacityError(
            f"the plan needs {count} endpoints, {free} are free ({detail}): add workers or raise"
            " their MAX_ENDPOINTS (sipswarm run --max-endpoints N for its local agent)"
        )
    if count == 0:
        return {}
    exact = {w.worker_id: count * w.free / free for w in usable}
    out = {wid: int(x) for wid, x in exact.items()}
    by_remainder = sorted(exact, key=lambda wid: (out[wid] - exact[wid], wid))
    for wid in by_remainder[: count - sum(out.values())]:
        out[wid] += 1
    return {wid: q for wid, q in out.items() if q > 0}


def allocate(plan: Plan, run_id: str, workers: Sequence[WorkerSlot]) -> list[Placed]:
    """Place every endpoint on a worker; raises :class:`CapacityError` if it does not fit."""
    share = quotas(plan.total_endpoints, workers)
    given = dict.fromkeys(share, 0)
    total = plan.total_endpoints
    ordered = [g for g in plan.groups if g.role == "receiver"] + [
        g for g in plan.groups if g.role == "caller"
    ]
    placed = []
    k = 0
    for g in ordered:
        for n in range(g.size):
            k += 1
            # smooth apportionment: the worker furthest behind its quota takes the next one
            wid = max(share, key=lambda w: (share[w] * k / total - given[w], w))
            given[wid] += 1
            placed.append(Placed(endpoint_id(run_id, g.name, n), g, n, wid))
    return placed


def _with_offsets(placed: Sequence[Placed], plan: Plan) -> list[Placed]:
    offsets = buildup_offsets(len(placed), plan.rate_per_s, plan.total_s)
    return [
        Placed(p.endpoint_id, p.group, p.n, p.worker_id, off)
        for p, off in zip(placed, offsets, strict=True)
    ]


def build_endpoint(
    p: Placed,
    target: str | None,
    idle_timeout_s: float | None = None,
    expected_calls: int | None = None,
) -> AssignEndpoint:
    """The PROTOCOL.md ``assign`` endpoint for a placed endpoint, every field filled
    (``idle_timeout_s``, ``expected_calls``: worker extensions, for receivers only)."""
    g, acc, reg = p.group, p.group.accounts[p.n], p.group.registrar
    return AssignEndpoint(
        endpoint_id=p.endpoint_id,
        group=g.name,
        role=g.role,  # type: ignore[arg-type]
        start_offset_ms=p.start_offset_ms,
        account=Account(
            username=acc.username,
            password=acc.password,
            auth_username=acc.auth_username,
            realm=acc.realm,
            display_name=acc.display_name,
        ),
        registrar=Registrar.model_validate(
            {
                "domain": reg.domain,
                "host": reg.host,
                "port": reg.port,
                "transport": reg.transport,
                "outbound_proxy": reg.outbound_proxy,
                "register": g.register,
                "expires_s": reg.expires_s,
            }
        ),
        call=CallSettings(
            target=target,
            duration_s=g.call.duration_s,
            ring_timeout_s=g.call.ring_timeout_s,
            answer_delay_ms=g.call.answer_delay_ms,
            idle_timeout_s=idle_timeout_s,
            expected_calls=expected_calls,
        ),
        media=MediaSettings(
            codecs=list(g.media.codecs),
            ptime_ms=g.media.ptime_ms,
            source=MediaSource.model_validate(g.media.source),
            srtp=g.media.srtp,  # type: ignore[arg-type]
            dscp=g.media.dscp,
            rtp=g.media.rtp,
        ),
        actions=[Action.model_validate(a) for a in g.actions],
    )


def assign_json(assign: Assign, plan: Plan) -> dict[str, Any]:
    """The ``assign`` frame as a JSON object, plus the plan's TLS options (an extra field).

    PROTOCOL.md ``registrar`` has no TLS options; workers ignore unknown fields,
    so they travel as ``registrar.tls`` for workers that understand them.
    """
    obj = assign.model_dump(mode="json", by_alias=True)
    groups = {g.name: g for g in plan.groups}
    for ep in obj["endpoints"]:
        for extra in ("idle_timeout_s", "expected_calls"):
            if ep["call"] is not None and ep["call"].get(extra) is None:
                ep["call"].pop(extra, None)  # PROTOCOL.md fields only, unless set
        if ep["media"].get("rtp") is True:
            ep["media"].pop("rtp")  # the extension travels only when it says false
        reg = groups[ep["group"]].registrar
        if reg.transport in ("tls", "wss", "auto"):
            ep["registrar"]["tls"] = {
                "verify": reg.tls_verify,
                "server_name": reg.tls_server_name,
                "ca_file": reg.tls_ca_file,
            }
    return obj


@dataclass
class Dispatch:
    """The phased dispatch of one run. Pure: the caller passes ``now_ms`` in."""

    plan: Plan
    run_id: str
    placed: list[Placed]
    receivers: list[Placed] = field(init=False)
    callers: list[Placed] = field(init=False)
    receivers_start_ms: int | None = None
    settled: set[str] = field(default_factory=set)
    contacts: dict[str, str] = field(default_factory=dict)
    phases: dict[str, Phase] = field(default_factory=dict)  # latest phase of each endpoint
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _planned: dict[str, Placed] = field(init=False)
    _expected: Counter[str] = field(init=False)

    def __post_init__(self) -> None:
        self.receivers = _with_offsets(
            [p for p in self.placed if p.group.role == "receiver"], self.plan
        )
        self.callers = _with_offsets(
            [p for p in self.placed if p.group.role == "caller"], self.plan
        )
        # Placement is fixed from here on: deal callers to receivers once (this was
        # recomputed for every receiver, O(receivers^2 x callers): 33 s of blocked event
        # loop for 1,000 + 1,000 endpoints).
        self._planned = self._deal_callers()
        self._expected = Counter(r.endpoint_id for r in self._planned.values())

    def receiver_assigns(self, start_at_ms: int) -> list[tuple[str, Assign]]:
        """``(worker_id, assign)`` for the receivers; call once, at run start."""
        self.receivers_start_ms = start_at_ms
        return self._assigns(self.receivers, start_at_ms, {})

    def receive_phase(self, endpoint_id_: str, phase: Phase, contact: str | None) -> None:
        """Feed every ``phase`` item of the run (replays are harmless)."""
        if phase in SETTLED_PHASES:
            self.settled.add(endpoint_id_)
        last = self.phases.get(endpoint_id_)
        if last is None or phase.order > last.order:
            self.phases[endpoint_id_] = phase
        if phase is Phase.REGISTERED and contact:
            self.contacts[endpoint_id_] = contact

    def receive_outcome(self, endpoint_id_: str) -> None:
        """Feed every ``outcome`` item: a closed receiver has settled."""
        self.settled.add(endpoint_id_)
        self.phases[endpoint_id_] = Phase.CLOSED

    def receivers_in_call(self) -> int:
        """Receivers between CALLING and DISCONNECTING: they will close by themselves."""
        return sum(1 for r in self.receivers if self.phases.get(r.endpoint_id) in IN_CALL_PHASES)

    def receiver_idle_timeout_s(self, group: Group) -> float | None:
        """How long a receiver of ``group`` may wait to be called, or None (the worker's
        default) when no caller group targets it (it answers calls from elsewhere).

        Upper bound of when its caller sends the INVITE, counted from the receiver's own
        REGISTERED: the rest of the receivers' buildup, the registration window, the
        callers' buildup, plus :data:`IDLE_MARGIN_S`.
        """
        if not any(g.target_group == group.name for g in self.plan.groups):
            return None
        receivers_span = self.receivers[-1].start_offset_ms / 1000 if self.receivers else 0.0
        callers_span = self.callers[-1].start_offset_ms / 1000 if self.callers else 0.0
        idle = receivers_span + self.plan.registration_window_s + callers_span + IDLE_MARGIN_S
        return float(min(86400.0, max(1.0, round(idle, 1))))

    def planned_receivers(self) -> dict[str, Placed]:
        """caller endpoint id -> the receiver it is planned to call: callers targeting a
        group, in endpoint order, are dealt round-robin over the group's receivers."""
        return dict(self._planned)

    def _deal_callers(self) -> dict[str, Placed]:
        by_group: dict[str, list[Placed]] = {}
        for r in self.receivers:
            by_group.setdefault(r.group.name, []).append(r)
        out: dict[str, Placed] = {}
        dealt: dict[str, int] = {}
        for c in self.callers:
            name = c.group.target_group
            if c.group.target_uri is not None or name is None:
                continue
            mine = by_group.get(name)
            if mine:
                k = dealt.get(name, 0)
                dealt[name] = k + 1
                out[c.endpoint_id] = mine[k % len(mine)]
        return out

    def expected_calls(self, receiver_id: str) -> int | None:
        """How many callers are planned to call ``receiver_id``; None when none is."""
        return self._expected.get(receiver_id) or None

    def get_timer(self) -> int | None:
        """When the registration window ends (ms), or None before receivers start."""
        if not self.receivers:
            return None
        if self.receivers_start_ms is None:
            return None
        last = self.receivers[-1].start_offset_ms
        return self.receivers_start_ms + last + int(self.plan.registration_window_s * 1000)

    def callers_due(self, now_ms: int) -> bool:
        """True once every receiver settled, or the registration window is over."""
        if all(r.endpoint_id in self.settled for r in self.receivers):
            return True
        deadline = self.get_timer()
        return deadline is not None and now_ms >= deadline

    def caller_assigns(self, start_at_ms: int) -> tuple[list[tuple[str, Assign]], list[Placed]]:
        """``([(worker_id, assign)], unreachable)`` for the callers; call once, when due."""
        targets: dict[str, str] = {}
        unreachable = []
        planned = self._planned
        pools: dict[str, dict[str, str]] = {}
        for c in self.callers:
            if c.group.target_uri is not None:
                targets[c.endpoint_id] = c.group.target_uri
                continue
            name = c.group.target_group or ""
            if name not in pools:
                pools[name] = self._reachable(name)
            receiver = planned.get(c.endpoint_id)
            uri = None if receiver is None else pools[name].get(receiver.endpoint_id)
            if uri is None:
                unreachable.append(c)
            else:
                targets[c.endpoint_id] = uri
        sendable = [c for c in self.callers if c.endpoint_id in targets]
        return self._assigns(sendable, start_at_ms, targets), unreachable

    def _reachable(self, group_name: str) -> dict[str, str]:
        """receiver endpoint id -> target URI, for the reachable receivers of a group."""
        group = self.plan.group(group_name)
        mine = [r for r in self.receivers if r.group.name == group_name]
        if group.register:
            up = [r for r in mine if r.endpoint_id in self.contacts]
            # nobody registered: still dial the AoRs, so the system under test answers for them
            return {r.endpoint_id: group.aor(r.n) for r in (up or mine)}
        return {
            r.endpoint_id: self.contacts[r.endpoint_id]
            for r in mine
            if r.endpoint_id in self.contacts
        }

    def _assigns(
        self, placed: list[Placed], start_at_ms: int, targets: dict[str, str]
    ) -> list[tuple[str, Assign]]:
        by_worker: dict[str, list[Placed]] = {}
        for p in placed:
            by_worker.setdefault(p.worker_id, []).append(p)
        settings = AssignSettings.model_validate(
            {"trace": self.plan.trace, "metrics_interval_ms": self.plan.metrics_interval_ms}
        )
        out = []
        for wid, eps in by_worker.items():
            out.append(
                (
                    wid,
                    Assign(
                        assignment_id=f"{self.run_id}-a{next(self._ids)}",
                        run_id=self.run_id,
                        start_at=start_at_ms,
                        settings=settings,
                        endpoints=[self._endpoint(p, targets) for p in eps],
                    ),
                )
            )
        return out

    def _endpoint(self, p: Placed, targets: dict[str, str]) -> AssignEndpoint:
        if p.group.role == "receiver":
            return build_endpoint(
                p,
                None,
                self.receiver_idle_timeout_s(p.group),
                self.expected_calls(p.endpoint_id),
            )
        return build_endpoint(p, targets.get(p.endpoint_id))
