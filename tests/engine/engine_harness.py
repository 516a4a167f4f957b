"""Helpers for endpoint-engine tests: assignments as the wire has them, item collection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from sipswarm.agent.assignment import AssignmentSpec, validate_assignment
from sipswarm.engine.engine import EndpointEngine, EngineSettings

ITEM_KEYS = {
    "phase": {"kind", "run_id", "endpoint_id", "ts", "phase"},
    "registration": {"kind", "run_id", "endpoint_id", "ts", "status_code", "register_ms",
                     "expires_granted_s"},
    "call": {"kind", "run_id", "endpoint_id", "direction", "final_code", "result", "invite_ts",
             "ringing_ts", "answer_ts", "first_rtp_ts", "bye_ts", "pdd_ms", "ttr_ms",
             "setup_ms", "ttfm_ms", "duration_ms"},
    "metrics": {"kind", "run_id", "ts", "endpoints", "generator"},  # generator: extension
    "trace": {"kind", "run_id", "endpoint_id", "ts", "dir", "transport", "local", "remote",
              "message"},
    "outcome": {"kind", "run_id", "endpoint_id", "ts", "outcome", "final_code", "reason"},
    "finished": {"kind", "run_id", "assignment_id", "ts", "endpoints", "outcomes"},
}  # fmt: skip
PHASES = ["INITIALIZING", "REGISTERED", "CALLING", "RINGING", "NEGOTIATING", "INCALL",
          "DISCONNECTING", "CLOSED"]  # fmt: skip

_counter = 0


def endpoint(
    eid: str,
    role: str,
    *,
    user: str = "1000",
    password: str | None = None,
    domain: str = "127.0.0.1",
    host: str | None = None,
    port: int | None = None,
    transport: str = "udp",
    register: bool = False,
    target: str | None = None,
    duration_s: float = 1.0,
    ring_timeout_s: float = 5.0,
    answer_delay_ms: int = 0,
    idle_timeout_s: float | None = None,
    expected_calls: int | None = None,
    codecs: list[str] | None = None,
    offset_ms: int = 0,
) -> dict[str, Any]:
    call: dict[str, Any] = {
        "target": target,
        "duration_s": duration_s,
        "ring_timeout_s": ring_timeout_s,
        "answer_delay_ms": answer_delay_ms,
    }
    if idle_timeout_s is not None:
        call["idle_timeout_s"] = idle_timeout_s
    if expected_calls is not None:
        call["expected_calls"] = expected_calls
    return {
        "endpoint_id": eid,
        "group": "g",
        "role": role,
        "start_offset_ms": offset_ms,
        "account": {"username": user, "password": password},
        "registrar": {
            "domain": domain,
            "host": host,
            "port": port,
            "transport": transport,
            "register": register,
            "expires_s": 60,
        },
        "call": call,
        "media": {
            "codecs": codecs or ["PCMU", "PCMA"],
            "ptime_ms": 20,
            "source": {"kind": "tone", "frequency_hz": 440},
        },
    }


def assignment(run_id: str, *endpoints: dict[str, Any], trace: str = "all") -> AssignmentSpec:
    global _counter
    _counter += 1
    raw = {
        "assignment_id": f"a-{_counter}",
        "run_id": run_id,
        "start_at": None,
        "settings": {"trace": trace, "metrics_interval_ms": 200},
        "endpoints": list(endpoints),
    }
    spec, problems = validate_assignment(raw, held_media=set())
    assert spec is not None, problems
    return spec


class Collector:
    """An ``emit`` sink that keeps every item and lets a test wait for one."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def __call__(self, item: dict[str, Any]) -> None:
        self.items.append(item)

    def of(self, kind: str, endpoint_id: str | None = None) -> list[dict[str, Any]]:
        return [
            i
            for i in self.items
            if i["kind"] == kind and (endpoint_id is None or i.get("endpoint_id") == endpoint_id)
        ]

    def phases(self, endpoint_id: str) -> list[str]:
        return [i["phase"] for i in self.of("phase", endpoint_id)]

    def outcome(self, endpoint_id: str) -> dict[str, Any]:
        [item] = self.of("outcome", endpoint_id)
        return item

    async def wait_for(self, check: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            await asyncio.sleep(0.02)
        raise TimeoutError(f"condition not met within {timeout} s; items: {self.items[-10:]}")

    async def contact(self, endpoint_id: str, timeout: float = 10.0) -> str:
        def find() -> str | None:
            for i in self.of("phase", endpoint_id):
                if i["phase"] == "REGISTERED":
                    return str(i["contact"])
            if self.of("outcome", endpoint_id):
                raise AssertionError(f"{endpoint_id} closed: {self.outcome(endpoint_id)}")
            return None

        result: str = await self.wait_for(find, timeout)
        return result


def check_items(items: list[dict[str, Any]]) -> None:
    """Every item has exactly its documented keys (phase may add contact); phases go forward."""
    for item in items:
        keys = set(item)
        expected = ITEM_KEYS[item["kind"]]
        if item["kind"] == "phase" and item["phase"] == "REGISTERED":
            expected = expected | {"contact"}
        assert keys == expected, (item["kind"], keys ^ expected)
    last: dict[str, int] = {}
    for item in items:
        if item["kind"] == "phase":
            order = PHASES.index(item["phase"])
            assert order > last.get(item["endpoint_id"], -1), item
            last[item["endpoint_id"]] = order


def make_engine(collector: Collector, **kwargs: Any) -> EndpointEngine:
    kwargs.setdefault("rtp_port_range", (40000, 49999))
    return EndpointEngine(EngineSettings(**kwargs), collector)
