"""Load a plan file into plain dataclasses, or say exactly what is wrong with it.

Theory of operation: YAML (or JSON) is parsed with line numbers kept
(:mod:`.yamlpos`), validated by the pydantic models of :mod:`.plan_schema`,
then cross-checked (group names unique, targets and registrars exist,
accounts expand, media files readable, thresholds parse). Every problem is
collected, with its path and line, into one :class:`PlanError`; a bad plan
starts nothing. Call :func:`load_plan_file` (or :func:`load_plan` with text),
then hand the :class:`Plan` to the run manager.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from sipswarm.controller import plan_schema as schema
from sipswarm.controller.accounts import Account, AccountsError, expand_pattern, read_csv
from sipswarm.controller.spacing import overlapping_calls
from sipswarm.controller.thresholds import Threshold, parse_threshold
from sipswarm.controller.yamlpos import Path as DataPath
from sipswarm.controller.yamlpos import format_path, line_of, load_with_lines
from sipswarm.errors import ConfigError
from sipswarm.media.sources import parse_wav

# Groups without a registrar call each other directly; their From domain is this.
DIRECT_DOMAIN = "localhost"
MAX_MEDIA_FILE = 16 * 1024 * 1024 - 1024  # PROTOCOL.md: frames are at most 16 MiB


@dataclass(frozen=True, slots=True)
class PlanIssue:
    path: DataPath
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{format_path(self.path)}{where}: {self.message}"


class PlanError(ConfigError):
    """A plan failed validation; ``issues`` lists every problem with path and line."""

    def __init__(self, source: str, issues: list[PlanIssue]) -> None:
        self.source = source
        self.issues = issues
        lines = "\n".join(f"  {issue}" for issue in issues)
        super().__init__(f"{source}: {len(issues)} problem(s) in the plan:\n{lines}")


@dataclass(frozen=True, slots=True)
class Registrar:
    domain: str
    host: str | None = None
    port: int | None = None
    transport: str = "udp"
    outbound_proxy: str | None = None
    expires_s: int = 300
    tls_verify: bool = True
    tls_server_name: str | None = None
    tls_ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class MediaFile:
    sha256: str
    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Media:
    codecs: tuple[str, ...]
    ptime_ms: int
    source: dict[str, Any]  # PROTOCOL.md media.source: tone/silence/file(sha256)
    srtp: str
    dscp: int
    rtp: bool = True  # false: signalling-only calls (docs/protocol.md media.rtp)


@dataclass(frozen=True, slots=True)
class CallSettings:
    duration_s: float
    ring_timeout_s: float
    answer_delay_ms: int


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    size: int
    role: Literal["caller", "receiver"]
    registrar: Registrar
    register: bool
    accounts: tuple[Account, ...]
    target_group: str | None
    target_uri: str | None
    call: CallSettings
    media: Media
    actions: tuple[dict[str, Any], ...]

    def aor(self, n: int) -> str:
        """The address of record of endpoint ``n`` (what a caller dials when registered)."""
        return f"sip:{self.accounts[n].username}@{self.registrar.domain}"


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    groups: tuple[Group, ...]
    rate_per_s: float | None
    total_s: float | None
    registration_window_s: float
    trace: str
    metrics_interval_ms: int
    thresholds: tuple[Threshold, ...]
    media_files: dict[str, MediaFile] = field(default_factory=dict)
    source_text: str = ""
    warnings: tuple[str, ...] = ()  # valid, but calls will fail: see plan_warnings()

    @property
    def total_endpoints(self) -> int:
        return sum(g.size for g in self.groups)

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)


def load_plan_file(path: str | Path) -> Plan:
    """Read and validate a plan file; relative CSV and media paths are next to it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read plan {p}: {exc.strerror}") from exc
    return load_plan(text, base_dir=p.parent, source=str(p))


def load_plan(text: str, base_dir: Path | None = None, source: str = "<plan>") -> Plan:
    """Validate plan ``text`` (YAML or JSON); raise :class:`PlanError` listing every issue."""
    data, lines = load_with_lines(text, source)
    if not isinstance(data, dict):
        raise PlanError(source, [PlanIssue((), 1, "a plan is a mapping with at least `groups`")])
    try:
        model = schema.PlanModel.model_validate(data)
    except ValidationError as exc:
        raise PlanError(source, [_issue_from(err, data, lines) for err in exc.errors()]) from exc
    builder = _PlanBuilder(model, lines, base_dir or Path.cwd())
    plan = builder.build(text)
    if builder.issues:
        raise PlanError(source, builder.issues)
    return dataclasses.replace(plan, warnings=tuple(plan_warnings(plan)))


def plan_warnings(plan: Plan) -> list[str]:
    """What will make calls fail although the plan is valid; not errors, because a test
    of busy (486) or cancelled (487) calls is a test someone may want to run."""
    out = []
    overlap = overlapping_calls(plan)
    if overlap is not None:
        out.append(f"buildup: {overlap}")
    for g in plan.groups:
        target = plan.group(g.target_group) if g.target_group else None
        if target is not None and target.call.answer_delay_ms / 1000 >= g.call.ring_timeout_s:
            out.append(
                f"group {g.name!r}: call.ring_timeout_s {g.call.ring_timeout_s:g} ends before "
                f"{target.name!r} answers (answer_delay_ms {target.call.answer_delay_ms}):"
                " every call will be cancelled (487)"
            )
    return out


def _issue_from(err: Any, data: Any, lines: dict[DataPath, int]) -> PlanIssue:
    """A pydantic error as a PlanIssue; union/tag names in ``loc`` are not data keys."""
    path: list[str | int] = []
    node = data
    loc = err["loc"]
    for i, part in enumerate(loc):
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
            path.append(part)
        elif i == len(loc) - 1 and err["type"] in ("missing", "extra_forbidden"):
            path.append(part)
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = _unknown_field(loc, path)
    elif err["type"] != "missing" and "input" in err and not isinstance(err["input"], dict):
        message = f"{message}, got {err['input']!r}"
    return PlanIssue(tuple(path), line_of(lines, tuple(path)), message)


def _unknown_field(loc: tuple[Any, ...], path: list[str | int]) -> str:
    """'unknown field', with the closest known field name of that section when one is near."""
    known = _section_fields(loc[:-1])
    guess = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    hint = f"did you mean `{guess[0]}`? " if guess else ""
    return f"unknown field; {hint}see docs/plan.md for the fields of this section"


def _section_fields(loc: tuple[Any, ...]) -> list[str]:
    """Field names (aliases) of the model at pydantic location ``loc`` (tags included)."""
    model: Any = schema.PlanModel
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        model = _model_of(field.annotation) if field is not None else _TAGGED.get(part, model)
    if model is None or not hasattr(model, "model_fields"):
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_of(annotation: Any) -> Any:
    """The pydantic model inside ``X | None``, ``list[X]`` or ``dict[str, X]``, else None."""
    if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


# union members named in pydantic locations: discriminator tags and source kinds
_TAGGED: dict[str, Any] = {
    "pattern": schema.PatternAccounts,
    "csv": schema.CsvAccounts,
    "timed": schema.TimedAction,
    "triggered": schema.TriggeredAction,
    "tone": schema.ToneSource,
    "silence": schema.SilenceSource,
    "file": schema.FileSource,
}


def check_threshold_group(threshold: Threshold, groups: list[str]) -> None:
    """ConfigError when ``threshold`` names a group the plan does not have (it would
    never have data, so it could only fail)."""
    if threshold.group is not None and threshold.group not in groups:
        raise ConfigError(
            f"threshold {threshold.expression!r}: no group {threshold.group!r} in the plan"
            f" (groups: {', '.join(groups)})"
        )


class _PlanBuilder:
    """Cross-checks a schema-valid plan and converts it; problems go to ``issues``."""

    def __init__(self, model: schema.PlanModel, lines: dict[DataPath, int], base: Path) -> None:
        self.model = model
        self.lines = lines
        self.base = base
        self.issues: list[PlanIssue] = []
        self.media_files: dict[str, MediaFile] = {}

    def fail(self, path: DataPath, message: str) -> None:
        self.issues.append(PlanIssue(path, line_of(self.lines, path), message))

    def build(self, text: str) -> Plan:
        m = self.model
        self._check_group_names()
        groups = tuple(self._group(i, g) for i, g in enumerate(m.groups))
        thresholds = []
        names = [g.name for g in m.groups]
        for i, expr in enumerate(m.thresholds):
            try:
                t = parse_threshold(expr)
                check_threshold_group(t, names)
                thresholds.append(t)
            except ConfigError as exc:
                self.fail(("thresholds", i), str(exc))
        return Plan(
            name=m.name,
            groups=groups,
            rate_per_s=m.buildup.rate_per_s,
            total_s=m.buildup.total_s,
            registration_window_s=m.registration_window_s,
            trace=m.trace,
            metrics_interval_ms=m.metrics_interval_ms,
            thresholds=tuple(thresholds),
            media_files=self.media_files,
            source_text=text,
        )

    def _check_group_names(self) -> None:
        seen: set[str] = set()
        for i, g in enumerate(self.model.groups):
            if g.name in seen:
                self.fail(("groups", i, "name"), f"group name {g.name!r} is used twice")
            seen.add(g.name)

    def _group(self, i: int, g: schema.GroupModel) -> Group:
        at: DataPath = ("groups", i)
        registrar, register = self._registrar(at, g)
        target_group, target_uri = self._target(at, g)
        return Group(
            name=g.name,
            size=g.size,
            role=g.role,
            registrar=registrar,
            register=register,
            accounts=tuple(self._accounts(at, g)),
            target_group=target_group,
            target_uri=target_uri,
            call=CallSettings(g.call.duration_s, g.call.ring_timeout_s, g.call.answer_delay_ms),
            media=self._media(at, g.media),
            actions=tuple(self._actions(at, g)),
        )

    def _registrar(self, at: DataPath, g: schema.GroupModel) -> tuple[Registrar, bool]:
        regs = self.model.registrars
        name = g.registrar
        if name is None and len(regs) == 1 and g.register_ is not False:
            name = next(iter(regs))
        if name is None:
            if g.register_:
                self.fail((*at, "register"), "register: true needs a `registrar` for the group")
            return Registrar(domain=DIRECT_DOMAIN), False
        r = regs.get(name)
        if r is None:
            known = ", ".join(sorted(regs)) or "none defined"
            self.fail((*at, "registrar"), f"unknown registrar {name!r} (known: {known})")
            return Registrar(domain=DIRECT_DOMAIN), False
        tls = r.tls or schema.TlsOptions()
        reg = Registrar(
            r.domain,
            r.host,
            r.port,
            r.transport,
            r.outbound_proxy,
            r.expires_s,
            tls.verify,
            tls.server_name,
            tls.ca_file,
        )
        return reg, True if g.register_ is None else g.register_

    def _target(self, at: DataPath, g: schema.GroupModel) -> tuple[str | None, str | None]:
        if g.role == "receiver":
            if g.target is not None:
                self.fail((*at, "target"), "a receiver answers calls; remove `target`")
            return None, None
        if g.target is None:
            self.fail((*at, "target"), "a caller needs a `target`: a receiver group or a SIP URI")
            return None, None
        if g.target.startswith(("sip:", "sips:", "tel:")):
            return None, g.target
        by_name = {x.name: x for x in self.model.groups}
        other = by_name.get(g.target)
        if other is None:
            receivers = [x.name for x in self.model.groups if x.role == "receiver"]
            self.fail(
                (*at, "target"),
                f"{g.target!r} is neither a group nor a sip:/sips:/tel: URI "
                f"(receiver groups: {', '.join(receivers) or 'none'})",
            )
        elif other.role != "receiver":
            self.fail((*at, "target"), f"group {g.target!r} is not a receiver group")
        return g.target, None

    def _accounts(self, at: DataPath, g: schema.GroupModel) -> list[Account]:
        acc = g.accounts
        try:
            if isinstance(acc, schema.CsvAccounts):
                return read_csv(self.base / acc.csv, g.size)
            return expand_pattern(
                acc.user, acc.password, g.size, acc.auth_username, acc.realm, acc.display_name
            )
        except AccountsError as exc:
            self.fail((*at, "accounts", exc.field), str(exc))
            return [Account(username=f"invalid{n}", password="") for n in range(g.size)]

    def _actions(self, at: DataPath, g: schema.GroupModel) -> list[dict[str, Any]]:
        """Actions as assign dicts; the rules workers refuse an assignment for, checked here."""
        out = []
        for i, a in enumerate(g.actions):
            where = (*at, "actions", i)
            if a.do == "dtmf" and not a.digits:
                self.fail(where, 'do: dtmf needs `digits` to play, e.g. digits: "12#"')
            if a.do != "dtmf" and a.digits is not None:
                self.fail(
                    (*where, "digits"),
                    f"do: {a.do} plays no digits; remove `digits` (to fire on received"
                    " digits use match_digits with on: dtmf_received)",
                )
            on = getattr(a, "on", None)
            if not g.media.rtp and (a.do in ("hold", "resume", "dtmf") or on == "dtmf_received"):
                what = f"do: {a.do}" if a.do != "hangup" else "on: dtmf_received"
                self.fail(
                    where,
                    f"{what} needs media and media.rtp is false (signalling-only calls);"
                    " set media.rtp: true or drop the action",
                )
            at_s = getattr(a, "at_s", None)
            if at_s is not None and at_s >= g.call.duration_s:
                self.fail(
                    (*where, "at_s"),
                    f"at_s {at_s:g} is not within the call (call.duration_s {g.call.duration_s:g});"
                    " make it smaller or the call longer",
                )
            out.append(a.model_dump(exclude_none=True))
        return out

    def _media(self, at: DataPath, m: schema.MediaModel) -> Media:
        codecs = [c.lower() for c in m.codecs]
        if all(c == "telephone-event" for c in codecs):
            self.fail((*at, "media", "codecs"), "list at least one audio codec (PCMU, PCMA, ...)")
        if len(set(codecs)) != len(codecs):
            self.fail((*at, "media", "codecs"), f"a codec is listed twice: {list(m.codecs)}")
        if m.srtp == "dtls":
            self.fail(
                (*at, "media", "srtp"),
                "dtls is not supported by sipswarm workers yet; use sdes (or off)",
            )
        src = m.source
        source: dict[str, Any]
        if isinstance(src, schema.FileSource):
            source = {"kind": "file", "sha256": self._media_file((*at, "media", "source"), src)}
        else:
            source = src.model_dump()
        return Media(tuple(m.codecs), m.ptime_ms, source, m.srtp, m.dscp, m.rtp)

    def _media_file(self, at: DataPath, src: schema.FileSource) -> str:
        path = self.base / src.path
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.fail((*at, "path"), f"cannot read {path}: {exc.strerror}")
            return ""
        if len(data) > MAX_MEDIA_FILE:
            self.fail(
                (*at, "path"), f"{path} is {len(data)} bytes; media files must be under 16 MiB"
            )
            return ""
        try:
            parse_wav(data, str(path))  # the check workers make: refused there = a failed run
        except ConfigError as exc:
            self.fail((*at, "path"), str(exc))
            return ""
        digest = hashlib.sha256(data).hexdigest()
        self.media_files[digest] = MediaFile(digest, path.name, data)
        return digest
