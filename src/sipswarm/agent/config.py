"""Worker settings: environment first, command-line flags override (docs/protocol.md).

:func:`load_config` reads every setting, checks it, and either returns an
:class:`AgentConfig` or raises :class:`~sipswarm.errors.ConfigError` whose
message is ONE line naming the setting and the fix, so that a container that
cannot start says why in its first log line. Next: ``configure_logging`` then
``run_agent(config, backend_factory)``.

=====================  =========================================================
setting                meaning (default)
=====================  =========================================================
CONTROLLER_URL         ``wss://host/v1/worker``; ``ws://`` only for loopback hosts
WORKER_TOKEN           bearer token for the controller (never logged)
WORKER_NAME            display name (host name)
WORKER_ID              stable id (else generated once and kept in STATE_DIR/worker_id)
WORKER_LABELS          ``key=value,key=value`` sent in ``hello.labels`` (none)
MAX_ENDPOINTS          endpoints this worker accepts at once (500)
LOG_LEVEL              debug, info, warning, error (info)
LOG_FORMAT             json or pretty (json)
HEALTH_ADDRESS         address of the health HTTP server (0.0.0.0)
HEALTH_PORT            its port, 0 = any free port (3030)
STATE_DIR              worker id and media files (``$XDG_STATE_HOME/sipswarm``)
SIP_BIND_ADDRESS       local address of SIP and RTP sockets (0.0.0.0)
SIP_PUBLIC_ADDRESS     address written in Contact/Via/SDP when behind NAT (bind address)
RTP_PORT_RANGE         ``low-high`` UDP ports for RTP/RTCP pairs (20000-39999)
SHARDS                 engine processes (number of CPUs)
DATA_BUFFER_MB         bound of the unacknowledged data buffer, MiB (256)
=====================  =========================================================
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from sipswarm.errors import ConfigError

T = TypeVar("T")
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_LABEL = re.compile(r"^[A-Za-z0-9._/-]{1,63}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "pretty")


@dataclass(frozen=True, slots=True)
class LinkTimings:
    """Timers of the controller link; PROTOCOL.md values by default, shrunk by tests."""

    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    open_timeout_s: float = 10.0
    welcome_timeout_s: float = 10.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    unauthorized_retry_s: float = 60.0
    heartbeat_interval_s: float = 5.0  # until a welcome says otherwise
    orphan_timeout_s: float = 120.0  # until a welcome says otherwise
    batch_linger_s: float = 0.05
    drain_flush_timeout_s: float = 30.0
    cancel_timeout_s: float = 5.0
    loop_probe_interval_s: float = 0.1


@dataclass(frozen=True, slots=True)
class AgentConfig:
    controller_url: str
    token: str = field(repr=False)
    name: str
    worker_id: str
    state_dir: Path
    max_endpoints: int = 500
    labels: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "info"
    log_format: str = "json"
    health_address: str = "0.0.0.0"
    health_port: int = 3030
    sip_bind_address: str = "0.0.0.0"
    sip_public_address: str | None = None
    rtp_port_range: tuple[int, int] = (20000, 39999)
    shards: int = 1
    data_buffer_bytes: int = 256 * 1024 * 1024
    timings: LinkTimings = field(default_factory=LinkTimings)

    @property
    def media_dir(self) -> Path:
        return self.state_dir / "media"


FLAGS: dict[str, str] = {
    "--controller-url": "CONTROLLER_URL",
    "--name": "WORKER_NAME",
    "--worker-id": "WORKER_ID",
    "--labels": "WORKER_LABELS",
    "--max-endpoints": "MAX_ENDPOINTS",
    "--log-level": "LOG_LEVEL",
    "--log-format": "LOG_FORMAT",
    "--health-address": "HEALTH_ADDRESS",
    "--health-port": "HEALTH_PORT",
    "--state-dir": "STATE_DIR",
    "--sip-bind-address": "SIP_BIND_ADDRESS",
    "--sip-public-address": "SIP_PUBLIC_ADDRESS",
    "--rtp-port-range": "RTP_PORT_RANGE",
    "--shards": "SHARDS",
    "--data-buffer-mb": "DATA_BUFFER_MB",
}
"""Command-line flags and the setting each overrides. The token has no flag: argv is public."""


def add_arguments(parser: Any) -> None:
    """Add one ``--flag`` per :data:`FLAGS` entry to an ``argparse`` parser."""
    for flag, env in FLAGS.items():
        parser.add_argument(flag, dest=env, default=None, help=f"overrides ${env}")


def load_config(
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    timings: LinkTimings | None = None,
) -> AgentConfig:
    """Read settings from ``env`` (default ``os.environ``), flags in ``overrides`` winning.

    ``overrides`` is keyed by setting name (e.g. ``vars(args)`` after
    :func:`add_arguments`); None values are ignored. Raises ConfigError (one line).
    """
    merged = dict(os.environ if env is None else env)
    for key, value in (overrides or {}).items():
        if value is not None and key in FLAGS.values():
            merged[key] = str(value)
    s = _Settings(merged)
    state_dir = Path(s.get("STATE_DIR", _default_state_dir(merged), str)).expanduser()
    max_endpoints = s.get("MAX_ENDPOINTS", 500, _int_in(1, 1_000_000))
    rtp = s.get("RTP_PORT_RANGE", (20000, 39999), _port_range)
    if (rtp[1] - rtp[0] + 1) // 2 < max_endpoints:
        raise ConfigError(
            f"RTP_PORT_RANGE {rtp[0]}-{rtp[1]} holds {(rtp[1] - rtp[0] + 1) // 2} RTP/RTCP"
            f" pairs, fewer than MAX_ENDPOINTS {max_endpoints}; widen the range or lower it"
        )
    return AgentConfig(
        controller_url=s.require("CONTROLLER_URL", _controller_url),
        token=s.require("WORKER_TOKEN", _token),
        name=s.get("WORKER_NAME", socket.gethostname(), _name),
        worker_id=s.get("WORKER_ID", "", _worker_id) or persisted_worker_id(state_dir),
        state_dir=state_dir,
        max_endpoints=max_endpoints,
        labels=s.get("WORKER_LABELS", {}, _labels),
        log_level=s.get("LOG_LEVEL", "info", _choice(LOG_LEVELS)),
        log_format=s.get("LOG_FORMAT", "json", _choice(LOG_FORMATS)),
        health_address=s.get("HEALTH_ADDRESS", "0.0.0.0", _ip),
        health_port=s.get("HEALTH_PORT", 3030, _int_in(0, 65535)),
        sip_bind_address=s.get("SIP_BIND_ADDRESS", "0.0.0.0", _ip),
        sip_public_address=s.get("SIP_PUBLIC_ADDRESS", None, _host),
        rtp_port_range=rtp,
        shards=s.get("SHARDS", os.cpu_count() or 1, _int_in(1, 1024)),
        data_buffer_bytes=s.get("DATA_BUFFER_MB", 256, _int_in(1, 1_048_576)) * 1024 * 1024,
        timings=timings or LinkTimings(),
    )


def persisted_worker_id(state_dir: Path) -> str:
    """Return the worker id kept in ``state_dir/worker_id``, creating it on first start."""
    path = state_dir / "worker_id"
    try:
        if path.exists():
            value = path.read_text().strip()
            if _ID.match(value):
                return value
        state_dir.mkdir(parents=True, exist_ok=True)
        value = f"w-{uuid.uuid4().hex[:12]}"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(value + "\n")
        tmp.replace(path)
        return value
    except OSError as exc:
        raise ConfigError(
            f"STATE_DIR {state_dir} is not writable ({exc.strerror}); set STATE_DIR to a"
            " writable directory or set WORKER_ID"
        ) from exc


def _default_state_dir(env: Mapping[str, str]) -> str:
    base = env.get("XDG_STATE_HOME") or os.path.join(env.get("HOME", "/tmp"), ".local", "state")
    return os.path.join(base, "sipswarm")


class _Settings:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def require(self, name: str, parse: Callable[[str], T]) -> T:
        raw = self._env.get(name, "").strip()
        if not raw:
            raise ConfigError(f"{name} is not set; {_HINTS[name]}")
        return self._parse(name, raw, parse)

    def get(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        raw = self._env.get(name, "").strip()
        return self._parse(name, raw, parse) if raw else default

    @staticmethod
    def _parse(name: str, raw: str, parse: Callable[[str], T]) -> T:
        try:
            return parse(raw)
        except ValueError as exc:
            shown = "(hidden)" if name == "WORKER_TOKEN" else repr(raw)
            raise ConfigError(f"{name} {exc}, got {shown}") from None


_HINTS = {
    "CONTROLLER_URL": "set it to the controller's worker URL, e.g. wss://controller/v1/worker",
    "WORKER_TOKEN": "set it to the token the controller issued for this worker",
}


def _controller_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError("must be a ws:// or wss:// URL with a host")
    if parts.scheme == "ws" and not _is_loopback(parts.hostname):
        raise ValueError("must use wss:// (ws:// is allowed only for loopback hosts)")
    return raw


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token(raw: str) -> str:
    if any(c.isspace() for c in raw) or not raw.isprintable():
        raise ValueError("must be one printable word without spaces")
    return raw


def _name(raw: str) -> str:
    if len(raw) > 128 or not raw.isprintable():
        raise ValueError("must be at most 128 printable characters")
    return raw


def _worker_id(raw: str) -> str:
    if not _ID.match(raw):
        raise ValueError("must be 1-64 of A-Z a-z 0-9 . _ -")
    return raw


def _labels(raw: str) -> dict[str, str]:
    out = {}
    for pair in raw.split(","):
        key, sep, value = pair.strip().partition("=")
        if not sep or not _LABEL.match(key) or not _LABEL.match(value):
            raise ValueError("must be key=value pairs separated by commas (e.g. region=eu-west)")
        out[key] = value
    return out


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be an integer {lo}-{hi}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be {lo}-{hi}")
        return value

    return parse


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return raw.lower()

    return parse


def _ip(raw: str) -> str:
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None


def _host(raw: str) -> str:
    if not re.match(r"^(\[[0-9a-fA-F:.]+\]|[0-9a-fA-F:.]+|[A-Za-z0-9.-]+)$", raw):
        raise ValueError("must be an IP address or a host name")
    return raw


def _port_range(raw: str) -> tuple[int, int]:
    m = re.match(r"^(\d{1,5})-(\d{1,5})$", raw)
    lo, hi = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if not m or not 1024 <= lo < hi <= 65535:
        raise ValueError("must be low-high with 1024 <= low < high <= 65535 (e.g. 20000-39999)")
    if lo % 2:
        raise ValueError("must start on an even port (RFC 3550 11: RTP even, RTCP odd)")
    return lo, hi
