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
from sipswarm.controller.report import build_report, histogram, render_html, write_html, write_json
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
    # the keys docs/plan.md "Results" documents, no more, no fewer
    assert set(data) == {
        "run_id", "name", "status", "reason", "timeline", "aggregates", "thresholds", "series",
        "pdd_histogram", "failed_endpoints", "failed_endpoints_total", "assignments", "plan",
        "generator",
    }  # fmt: skip
    assert data["plan"] == "groups: []"
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


def test_report_units_axes_groups_and_refusals(tmp_path: Path) -> None:
    from sipswarm.controller.svg import nice_ceiling

    db = Storage()
    db.create_run("r-7", "demo", "groups: []", 1)
    db.add_assignment("r-7-a1", "r-7", "w1", [("r-7/rx/0", "rx", "receiver", 0, "2", None)], 1)
    db.set_assignment_result("r-7-a1", False, "invalid", "endpoints[0].a bad; endpoints[1].b bad")
    report = build_report(db, "r-7", group_names=["rx", "tx"])
    # a group with no record at all (its callers never started) still has its column
    assert set(report["aggregates"]["groups"]) == {"rx", "tx"}
    html = render_html(report)
    assert '<h2 id="refused">Refused assignments</h2>' in html
    assert "endpoints[0].a bad\nendpoints[1].b bad" in html
    assert '<table class="text">' in html  # the timeline's reasons are prose, left-aligned
    assert nice_ceiling(0.581) == 0.8 and nice_ceiling(34) == 40 and nice_ceiling(100) == 100


def test_report_charts_share_the_time_axis_and_name_their_units() -> None:
    from sipswarm.controller.report import _charts

    series = [
        {"ts": t, "phases": {"INCALL": 2}, "active_calls": 1, "mos": mos, "jitter_ms": 0.5,
         "loss": 0.01, "rtt_ms": None}
        for t, mos in ((1000, None), (2000, 4.3), (3000, 4.4))
    ]  # fmt: skip
    svg = _charts(series, [{"from": 0.4, "to": 0.8, "count": 3}])
    # loss was drawn in percent under a "fraction" axis label
    assert ">%</text>" in svg and ">fraction</text>" not in svg
    # MOS on its own 1-5 scale, on the same 0-2 s axis as the other charts
    mos = svg[svg.index("MOS (mean of endpoints)") : svg.index("Jitter (mean)")]
    assert ">1</text>" in mos.replace(">1.0</text>", ">1</text>") and ">5.0</text>" in mos
    assert ">0s</text>" in mos and ">2s</text>" in mos
    assert "PDD (ms, bin start)" in svg and ">0.4</text>" in svg


def test_pdd_histogram_counts_placed_calls_once() -> None:
    from sipswarm.protocol.parse import parse_item

    db = Storage()
    db.create_run("r-8", "demo", "groups: []", 1)
    rows = [
        ("r-8/tx/0", "tx", "caller", 0, "1", "sip:x"),
        ("r-8/rx/0", "rx", "receiver", 0, "2", None),
    ]
    db.add_assignment("r-8-a1", "r-8", "w1", rows, 1)
    items = []
    for ep, direction, pdd in (("r-8/tx/0", "out", 120.0), ("r-8/rx/0", "in", 1.0)):
        item, problems = parse_item(
            {"kind": "call", "run_id": "r-8", "endpoint_id": ep, "direction": direction,
             "final_code": 200, "result": "answered", "pdd_ms": pdd}
        )  # fmt: skip
        assert item is not None, problems
        items.append(item)
    db.store_data("s", "w1", 1, items)
    bins = build_report(db, "r-8")["pdd_histogram"]
    # the receiver's side of the same call is not a second dial (and its "PDD" is ~1 ms)
    assert sum(b["count"] for b in bins) == 1 and bins[0]["from"] <= 120.0 <= bins[-1]["to"]


def test_terminal_echo_is_off_while_the_panel_is_drawn() -> None:
    import os
    import pty
    import termios

    from sipswarm.controller.live import quiet_terminal

    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)[3]
        assert before & termios.ECHO and before & termios.ECHOCTL
        with quiet_terminal(slave):
            during = termios.tcgetattr(slave)[3]
            # a Ctrl-C's "^C" echo moved the cursor under rich: a stale panel line stayed
            assert not during & termios.ECHO and not during & termios.ECHOCTL
        assert termios.tcgetattr(slave)[3] == before
        null = os.open(os.devnull, os.O_RDONLY)
        with quiet_terminal(null):  # not a tty: nothing to do
            pass
        os.close(null)
    finally:
        os.close(master)
        os.close(slave)


def test_run_checks_max_endpoints_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    plan = str(Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml")
    assert main(["run", plan, "--max-endpoints", "0"]) == 2
    assert "--max-endpoints must be 1 or more, got 0" in capsys.readouterr().err
    assert main(["run", plan, "--max-endpoints", "50", "--workers", "2"]) == 2
    assert "with --workers set it on them" in capsys.readouterr().err
