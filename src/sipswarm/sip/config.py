"""Stack configuration and the account an endpoint registers and calls with.

Plain dataclasses (STYLE.md rule 7): the engine converts the plan/assignment
models into these. Validation errors name the field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sipswarm import USER_AGENT
from sipswarm.errors import ConfigError

__all__ = ["TRANSPORTS", "Account", "StackConfig", "TimerConfig"]

TRANSPORTS = {"udp": "UDP", "tcp": "TCP", "tls": "TLS", "ws": "WS", "wss": "WSS"}


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 §17 timer constants, seconds (Table 4 defaults)."""

    t1: float = 0.5  # RTT estimate
    t2: float = 4.0  # maximum retransmit interval for non-INVITE requests and INVITE responses
    t4: float = 5.0  # maximum time a message remains in the network

    def __post_init__(self) -> None:
        if not 0 < self.t1 <= self.t2:
            raise ConfigError(f"timers: need 0 < t1 <= t2, got t1={self.t1} t2={self.t2}")
        if self.t4 <= 0:
            raise ConfigError(f"timers.t4 must be > 0, got {self.t4}")


@dataclass(frozen=True, slots=True)
class StackConfig:
    """What one :class:`~sipswarm.sip.stack.SipStack` (one transport socket) needs.

    ``local_host``/``local_port`` is the bound socket; ``public_host``/
    ``public_port`` (default: the local ones) go into Via sent-by and Contact.
    """

    local_host: str
    local_port: int
    transport: str = "udp"
    public_host: str | None = None
    public_port: int | None = None
    timers: TimerConfig = field(default_factory=TimerConfig)
    user_agent: str = USER_AGENT
    max_forwards: int = 70
    # Derived once in __post_init__ (read for every message: a property would build
    # the same strings again each time). Not constructor arguments.
    reliable: bool = field(init=False, repr=False, compare=False)
    sent_by: str = field(init=False, repr=False, compare=False)
    request_lines: tuple[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ConfigError(
                f"transport must be one of {sorted(TRANSPORTS)}, got {self.transport!r}"
            )
        for name in ("local_port", "public_port"):
            port = getattr(self, name)
            if port is not None and not 0 < port < 65536:
                raise ConfigError(f"{name} must be 1-65535, got {port}")
        if not self.local_host:
            raise ConfigError("local_host must be an address, got an empty string")
        if not 0 <= self.max_forwards <= 255:
            raise ConfigError(f"max_forwards must be 0-255, got {self.max_forwards}")
        sent_by = f"{self.public_host or self.local_host}:{self.public_port or self.local_port}"
        # True for stream transports: no retransmissions, zero wait timers (RFC 3261 17).
        object.__setattr__(self, "reliable", self.transport != "udp")
        # host:port placed in Via and Contact.
        object.__setattr__(self, "sent_by", sent_by)
        # What every request we send starts its Via with (the branch follows), and the
        # Max-Forwards line after it: see RequestSpec.render.
        object.__setattr__(
            self,
            "request_lines",
            (
                f"SIP/2.0/{self.via_transport} {sent_by};rport;branch=",
                f"\r\nMax-Forwards: {self.max_forwards}\r\n",
            ),
        )

    @property
    def via_transport(self) -> str:
        """Transport token for Via (RFC 3261 20.42)."""
        return TRANSPORTS[self.transport]


@dataclass(slots=True)
class Account:
    """SIP credentials and identity of one endpoint.

    ``auth_username`` (default ``username``) is the digest user; ``realm``
    (default: the realm of the challenge) restricts which challenges are
    answered; ``domain`` is the AoR host (``sip:username@domain``).
    """

    username: str
    domain: str
    password: str = ""
    auth_username: str | None = None
    realm: str | None = None
    display_name: str | None = None

    def __post_init__(self) -> None:
        if not self.username:
            raise ConfigError("account.username must not be empty")
        if not self.domain:
            raise ConfigError(f"account.domain must not be empty (account {self.username})")

    @property
    def aor(self) -> str:
        """Address-of-record URI, ``sip:user@domain``."""
        return f"sip:{self.username}@{self.domain}"

    def name_addr(self, tag: str | None = None) -> str:
        """From/To header value for this account, with ``tag`` if given."""
        name = f'"{self.display_name}" ' if self.display_name else ""
        value = f"{name}<{self.aor}>"
        return f"{value};tag={tag}" if tag else value
