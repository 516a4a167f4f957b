"""Account patterns: ranges, padding, templates and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipswarm.controller.accounts import AccountsError, expand_pattern, expand_users, read_csv


def test_range_with_prefix_suffix_and_padding() -> None:
    assert expand_users("u{0098..0120}x", 3) == ["u0098x", "u0099x", "u0100x"]
    assert expand_users("{8..12}", 4) == ["8", "9", "10", "11"]


def test_single_user() -> None:
    assert expand_users("alice", 1) == ["alice"]
    with pytest.raises(AccountsError, match="names one user for 2 endpoints"):
        expand_users("alice", 2)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("{1..2}{3..4}", "holds 2 ranges"),
        ("{5..1}", "counts down"),
        ("{1..3}", "holds 3 users but the group size is 4"),
        ("{1-4}", "a range is written"),
    ],
)
def test_bad_patterns(pattern: str, message: str) -> None:
    with pytest.raises(AccountsError, match=message):
        expand_users(pattern, 4)


def test_templates() -> None:
    accs = expand_pattern(
        "{10..11}", "s{user}-{n}", 2, auth_username="auth{user}", display_name="Caller {n}"
    )
    assert [(a.username, a.password, a.auth_username, a.display_name) for a in accs] == [
        ("10", "s10-0", "auth10", "Caller 0"),
        ("11", "s11-1", "auth11", "Caller 1"),
    ]
    with pytest.raises(AccountsError) as exc:
        expand_pattern("{1..1}", "{password}", 1)
    assert exc.value.field == "password"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        # an unclosed quote used to swallow every following row into one username
        (b'username,password\n"1000,a\n1001,b\n', "unexpected end of data in the row after line 1"),
        # an unquoted comma shifted the columns silently
        (b"username,password\n1000,a,b\n1001,b\n", "line 2: 3 field(s) where the header has 2"),
        (b"username,password\n1000,a\n1001\n", "line 3: 1 field(s) where the header has 2"),
        # not UTF-8: used to raise UnicodeDecodeError out of the plan loader (a traceback)
        (b"\xff\xfeu\x00s\x00", "is not UTF-8 text (byte 0)"),
        (b"username,password\n", "holds 0 account(s) but the group size is 2"),
        (
            b"username,password\n10 00,a\n1001,b\n",
            "line 2: username '10 00' is empty or has spaces",
        ),
    ],
)
def test_malformed_csv_names_the_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(content)
    with pytest.raises(AccountsError) as exc:
        read_csv(path, 2)
    assert message in str(exc.value)
