"""The plan file as pydantic models: the boundary where user input is checked.

Only :mod:`sipswarm.controller.plan` uses these; everything after it works on
the plain dataclasses it returns. Every field is documented in docs/plan.md.
Unknown fields are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
TRACE_MODES = ("all", "failures", "none")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsOptions(StrictModel):
    verify: bool = True
    server_name: str | None = None
    ca_file: str | None = None


class RegistrarModel(StrictModel):
    domain: str = Field(min_length=1)
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    transport: Literal["udp", "tcp", "tls", "wss", "auto"] = "udp"
    outbound_proxy: str | None = None
    expires_s: int = Field(default=300, ge=10, le=86400)
    tls: TlsOptions | None = None


class PatternAccounts(StrictModel):
    user: str = Field(min_length=1)
    password: str = ""
    auth_username: str | None = None
    realm: str | None = None
    display_name: str | None = None


class CsvAccounts(StrictModel):
    csv: str = Field(min_length=1)


class CallModel(StrictModel):
    duration_s: float = Field(default=30.0, ge=0.1, le=86400)
    ring_timeout_s: float = Field(default=30.0, ge=1, le=600)
    answer_delay_ms: int = Field(default=0, ge=0, le=600_000)


class ToneSource(StrictModel):
    kind: Literal["tone"]
    frequency_hz: float = Field(default=1000.0, ge=20, le=20000)


class SilenceSource(StrictModel):
    kind: Literal["silence"]


class FileSource(StrictModel):
    kind: Literal["file"]
    path: str = Field(min_length=1)


Source = Annotated[ToneSource | SilenceSource | FileSource, Field(discriminator="kind")]


Codec = Literal["PCMU", "PCMA", "G722", "opus", "telephone-event"]


def _default_codecs() -> list[Codec]:
    return ["PCMU", "PCMA"]


class MediaModel(StrictModel):
    codecs: list[Codec] = Field(default_factory=_default_codecs, min_length=1)
    ptime_ms: Literal[10, 20, 30, 40, 60] = 20
    source: Source = Field(default_factory=lambda: ToneSource(kind="tone"))
    srtp: Literal["off", "sdes", "dtls"] = "off"
    dscp: int = Field(default=46, ge=0, le=63)
    rtp: bool = True  # false: signalling-only calls (docs/plan.md, media.rtp)


DTMF_PATTERN = r"^[0-9A-D*#]{1,64}$"
ActionKind = Literal["hold", "resume", "dtmf", "hangup"]


class TimedAction(StrictModel):
    at_s: float = Field(ge=0)
    do: ActionKind
    digits: str | None = Field(default=None, pattern=DTMF_PATTERN)


class TriggeredAction(StrictModel):
    on: Literal["dtmf_received", "hold_received", "resume_received"]
    do: ActionKind
    digits: str | None = Field(default=None, pattern=DTMF_PATTERN)
    match_digits: str | None = Field(default=None, pattern=DTMF_PATTERN)

    @model_validator(mode="after")
    def _match_needs_dtmf(self) -> TriggeredAction:
        if self.match_digits is not None and self.on != "dtmf_received":
            raise ValueError("match_digits needs on: dtmf_received")
        return self


def _accounts_kind(value: Any) -> str:
    return "csv" if isinstance(value, dict) and "csv" in value else "pattern"


def _action_kind(value: Any) -> str:
    return "triggered" if isinstance(value, dict) and "on" in value else "timed"


Accounts = Annotated[
    Annotated[PatternAccounts, Tag("pattern")] | Annotated[CsvAccounts, Tag("csv")],
    Discriminator(_accounts_kind),
]
Action = Annotated[
    Annotated[TimedAction, Tag("timed")] | Annotated[TriggeredAction, Tag("triggered")],
    Discriminator(_action_kind),
]


class GroupModel(StrictModel):
    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    size: int = Field(ge=1, le=1_000_000)
    role: Literal["caller", "receiver"]
    registrar: str | None = None
    register_: bool | None = Field(default=None, alias="register")
    accounts: Accounts
    target: str | None = None
    call: CallModel = Field(default_factory=CallModel)
    media: MediaModel = Field(default_factory=MediaModel)
    actions: list[Action] = Field(default_factory=list)


class BuildupModel(StrictModel):
    rate_per_s: float | None = Field(default=None, gt=0, le=100_000)
    total_s: float | None = Field(default=None, ge=0, le=86400)

    @model_validator(mode="after")
    def _one_of(self) -> BuildupModel:
        if (self.rate_per_s is None) == (self.total_s is None):
            raise ValueError("give exactly one of rate_per_s (endpoints per second) or total_s")
        return self


class PlanModel(StrictModel):
    name: str = Field(default="run", max_length=128)
    registrars: dict[str, RegistrarModel] = Field(default_factory=dict)
    groups: list[GroupModel] = Field(min_length=1)
    buildup: BuildupModel = Field(default_factory=lambda: BuildupModel(rate_per_s=10))
    registration_window_s: float = Field(default=30.0, gt=0, le=3600)
    trace: Literal["all", "failures", "none"] = "failures"
    metrics_interval_ms: int = Field(default=1000, ge=100, le=60_000)
    thresholds: list[str] = Field(default_factory=list)
