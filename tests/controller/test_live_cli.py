"""Live view fallback, the controller command's argument checks, the report writers."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from sipswarm.cli import main
from sipswarm.commands.controller import parse_hostport
from sipswarm.controller.live import LiveView, plain_line, render
from sipswarm.controller.report import build_report, histogram, write_html, write_json
from sipswarm.controller.storage import Storage
from sipswarm.errors import ConfigError

SNAP = {
    "run_id": "r-1",
    "name": "demo",
    "status": "RUNNING",
    "reason": "",
    "elapsed_s": 12.34,
    "endpoints": 20,
    "phases": {"REGISTERED": 10, "INCALL": 10},
    "calls_attempted": 10,
    "calls_answered": 9,
    "asr": 0.9,
    "mos_mean": 4.31,
    "mos_min": 4.1,
    "outcomes": {},
    "workers": {"w-1": "ONLINE"},
}


def test_plain_line() -> None:
    assert plain_line(SNAP) == (
        "[  12.3s] RUNNING   endpoints 20 (REGISTERED=10 INCALL=10) calls 9/10 ASR 90.0 % "
        "MOS 4.31 workers 1"
    )
    assert render(SNAP).title is not None


def test_live_view_prints_lines_when_not_a_tty() -> None:
    out = io.StringIO()

    async def main_() -> None:
        async with LiveView(lambda: SNAP, out=out, plain_interval=0.05):
            await asyncio.sleep(0.18)

    asyncio.run(main_())
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and all(line.startswith("[  12.3s] RUNNING") for line in lines)


def test_hostport() -> None:
    assert parse_hostport("0.0.0.0:8080", "--listen") == ("0.0.0.0", 8080)
    assert parse_hostport("[::1]:9", "--api") == ("::1", 9)
    assert parse_hostport(":7", "--api") == ("0.0.0.0", 7)
    with pytest.raises(ConfigError, match="--api must be HOST:PORT"):
        parse_hostport("host:99999", "--api")


def test_controller_command_rejects_missing_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    assert main(["controller", "--tokens", str(tmp_path / "empty.txt")]) == 2
    assert "no token in the file" in capsys.readouterr().err
    assert main(["controller", "--tokens", str(tmp_path / "missing.txt")]) == 2


def test_report_writers_on_an_empty_run(tmp_path: Path) -> None:
    db = Storage()
    db.create_run("r-9", "empty", "groups: []", 1)
    report = build_report(db, "r-9")
    write_json(report, tmp_path / "r.json")
    write_html(report, tmp_path / "r.html")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["status"] == "PENDING" and data["aggregates"]["overall"]["calls_attempted"] == 0
    assert "no data" in (tmp_path / "r.html").read_text()


def test_histogram() -> None:
    bins = histogram([0, 10, 10, 20], bins=2)
    assert bins == [{"from": 0.0, "to": 10.0, "count": 1}, {"from": 10.0, "to": 20.0, "count": 3}]
    assert histogram([]) == []


def test_run_rejects_a_cli_threshold_on_a_group_not_in_the_plan(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # it could never have data, so it would only fail after the whole run: exit 2 up front
    plan = str(Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml")
    code = main(["run", plan, "--threshold", "mos.p5{group=caller} >= 4"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no group 'caller' in the plan (groups: receivers, callers)" in err


def test_panel_heading_and_calls_in_progress_at_terminal_width() -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(render({**SNAP, "phases": {"CLOSED": 20}, "calls_active": 3}))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    # the heading used to be the table's title, wrapped to one narrow column
    assert any(line.strip("│ ") == "endpoints by phase" for line in lines), lines
    assert any("9 answered of 10 ended · 3 in progress" in line for line in lines)
    assert plain_line({**SNAP, "calls_active": 3}).count("calls 9/10 (+3 in progress)") == 1
