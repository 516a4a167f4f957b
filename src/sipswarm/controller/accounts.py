"""SIP accounts of a group: from a pattern (``user: "{1000..1099}"``) or a CSV file.

A pattern holds at most one numeric range ``{FIRST..LAST}``; the width of
``FIRST`` sets zero padding (``{001..100}`` -> ``001``, ``002``, ...). The
password (and auth user, display name) may use ``{user}`` (the expanded
user name) and ``{n}`` (the endpoint index in the group, from 0).

A CSV file has a header naming its columns: ``username`` and ``password``
are required, ``auth_username``, ``realm`` and ``display_name`` optional.

Call :func:`expand_pattern` or :func:`read_csv`; both return
:class:`Account` lists and raise :class:`AccountsError` with a message that
names what is wrong and how to fix it (the plan loader adds path and line).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sipswarm.errors import ConfigError

RANGE_RE = re.compile(r"\{(\d+)\.\.(\d+)\}")
TEMPLATE_FIELDS = ("user", "n")
CSV_REQUIRED = ("username", "password")
CSV_OPTIONAL = ("auth_username", "realm", "display_name")


class AccountsError(ConfigError):
    """Accounts cannot be built; ``field`` names the plan field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Account:
    """One endpoint's SIP credentials (PROTOCOL.md ``assign`` ``account``)."""

    username: str
    password: str
    auth_username: str | None = None
    realm: str | None = None
    display_name: str | None = None


def expand_users(pattern: str, size: int) -> list[str]:
    """The first ``size`` user names of ``pattern`` (see module docstring)."""
    ranges = RANGE_RE.findall(pattern)
    if len(ranges) > 1:
        raise AccountsError("user", f"{pattern!r} holds {len(ranges)} ranges; use at most one")
    if not ranges:
        if "{" in pattern or "}" in pattern:
            raise AccountsError("user", f"{pattern!r}: a range is written {{1000..1099}}")
        if size > 1:
            raise AccountsError(
                "user",
                f"{pattern!r} names one user for {size} endpoints; "
                'write a range such as "{1000..1099}" or use a CSV file',
            )
        return [pattern]
    first_s, last_s = ranges[0]
    first, last = int(first_s), int(last_s)
    if last < first:
        raise AccountsError("user", f"range {{{first_s}..{last_s}}} counts down; swap its ends")
    count = last - first + 1
    if count < size:
        raise AccountsError(
            "user",
            f"range {{{first_s}..{last_s}}} holds {count} users but the group size is {size}; "
            "widen the range or shrink the group",
        )
    width = len(first_s) if first_s.startswith("0") else 0
    prefix, _, rest = pattern.partition("{")
    suffix = rest.partition("}")[2]
    return [f"{prefix}{first + i:0{width}d}{suffix}" for i in range(size)]


def render(template: str, field: str, user: str, n: int) -> str:
    """Fill ``{user}`` and ``{n}`` in ``template``; anything else is an error."""
    try:
        return template.format(user=user, n=n)
    except (KeyError, IndexError, ValueError) as exc:
        raise AccountsError(
            field,
            f"{template!r} cannot be filled ({exc}); only {{user}} and {{n}} are known, "
            "write a literal brace as {{ or }}",
        ) from exc


def expand_pattern(
    user: str,
    password: str,
    size: int,
    auth_username: str | None = None,
    realm: str | None = None,
    display_name: str | None = None,
) -> list[Account]:
    """Accounts for a group of ``size`` endpoints from a user pattern and templates."""
    accounts = []
    for n, name in enumerate(expand_users(user, size)):
        accounts.append(
            Account(
                username=name,
                password=render(password, "password", name, n),
                auth_username=render(auth_username, "auth_username", name, n)
                if auth_username
                else None,
                realm=realm,
                display_name=render(display_name, "display_name", name, n)
                if display_name
                else None,
            )
        )
    return accounts


def read_csv(path: Path, size: int) -> list[Account]:
    """The first ``size`` accounts of a CSV file (see module docstring).

    Malformed files are refused with the line to fix: not UTF-8 text, an unterminated
    quote, a row with more or fewer fields than the header, an empty username.
    """
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, strict=True)
            header = list(reader.fieldnames or [])
            rows = [(reader.line_num, row) for row in reader]
    except OSError as exc:
        raise AccountsError("csv", f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise AccountsError(
            "csv", f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV"
        ) from exc
    except csv.Error as exc:
        where = f"in the row after line {reader.line_num}"
        raise AccountsError("csv", f"{path}: {exc} {where} (a quote left open?)") from exc
    missing = [c for c in CSV_REQUIRED if c not in header]
    if missing:
        raise AccountsError(
            "csv",
            f"{path} lacks column(s) {', '.join(missing)}; its first line must be a header "
            f"with {', '.join(CSV_REQUIRED)} (optional: {', '.join(CSV_OPTIONAL)})",
        )
    accounts = [_csv_account(path, line, row, len(header)) for line, row in rows[:size]]
    if len(rows) < size:
        raise AccountsError(
            "csv", f"{path} holds {len(rows)} account(s) but the group size is {size}"
        )
    return accounts


def _csv_account(path: Path, line: int, row: dict[str | Any, Any], columns: int) -> Account:
    extra = len(row.get(None) or [])
    short = sum(1 for k, v in row.items() if k is not None and v is None)
    if extra or short:
        raise AccountsError(
            "csv",
            f"{path} line {line}: {columns + extra - short} field(s) where the header has"
            f" {columns}; quote fields that hold a comma",
        )
    username = (row.get("username") or "").strip()
    if not username or any(c.isspace() for c in username):
        raise AccountsError(
            "csv", f"{path} line {line}: username {username!r} is empty or has spaces"
        )
    return Account(
        username=username,
        password=row.get("password") or "",
        auth_username=(row.get("auth_username") or "").strip() or None,
        realm=(row.get("realm") or "").strip() or None,
        display_name=(row.get("display_name") or "").strip() or None,
    )
