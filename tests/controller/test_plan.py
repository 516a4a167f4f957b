"""Plan validation: good plans load, each kind of bad plan names its path and line."""

from __future__ import annotations

import struct
import textwrap
from pathlib import Path

import pytest

from sipswarm.controller.dispatch import Dispatch, WorkerSlot, allocate, assign_json
from sipswarm.controller.plan import PlanError, load_plan, load_plan_file
from sipswarm.errors import ConfigError
from sipswarm.protocol.enums import Phase

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

GOOD = textwrap.dedent(
    """\
    name: smoke
    registrars:
      pbx:
        domain: pbx.example.com
        host: 127.0.0.1
        port: 5070
        transport: tcp
    groups:
      - name: receivers
        size: 3
        role: receiver
        accounts:
          user: "{2000..2009}"
          password: "secret{user}"
      - name: callers
        size: 2
        role: caller
        target: receivers
        accounts:
          user: "u{001..002}"
          password: "pw-{n}"
        call: {duration_s: 5, ring_timeout_s: 10, answer_delay_ms: 200}
        media: {codecs: [PCMA], source: {kind: silence}}
    buildup: {total_s: 2}
    thresholds: ["asr >= 0.99", "pdd.p95{group=callers} < 3000"]
    """
)


def test_good_plan_loads_into_dataclasses() -> None:
    plan = load_plan(GOOD)
    assert plan.name == "smoke"
    assert plan.total_endpoints == 5
    recv, call = plan.groups
    assert recv.register is True and recv.registrar.domain == "pbx.example.com"
    assert recv.registrar.port == 5070 and recv.registrar.transport == "tcp"
    assert [a.username for a in recv.accounts] == ["2000", "2001", "2002"]
    assert recv.accounts[1].password == "secret2001"
    assert [a.username for a in call.accounts] == ["u001", "u002"]
    assert call.accounts[1].password == "pw-1"
    assert call.target_group == "receivers" and call.target_uri is None
    assert call.call.answer_delay_ms == 200
    assert call.media.codecs == ("PCMA",) and call.media.source == {"kind": "silence"}
    assert recv.aor(2) == "sip:2002@pbx.example.com"
    assert plan.total_s == 2 and plan.rate_per_s is None
    assert [t.metric for t in plan.thresholds] == ["asr", "pdd.p95"]
    assert plan.thresholds[1].group == "callers"
    assert plan.trace == "failures"


@pytest.mark.parametrize("name", ["quickstart.yaml", "registrar.yaml", "mixed.yaml"])
def test_examples_are_valid(name: str) -> None:
    plan = load_plan_file(EXAMPLES / name)
    assert plan.total_endpoints > 0


def _issues(text: str) -> list[str]:
    with pytest.raises(PlanError) as exc:
        load_plan(text)
    return [str(i) for i in exc.value.issues]


def test_wrong_type_names_path_and_line() -> None:
    bad = GOOD.replace("size: 2", "size: two")
    assert _issues(bad) == [
        "groups[1].size (line 16): Input should be a valid integer, unable to parse "
        "string as an integer, got 'two'"
    ]


def test_missing_field_points_at_its_parent() -> None:
    bad = GOOD.replace("    role: caller\n", "")
    (issue,) = _issues(bad)
    assert issue.startswith("groups[1].role (line 15): Field required")


def test_unknown_field_is_an_error() -> None:
    bad = GOOD.replace('password: "pw-{n}"', 'passwd: "pw-{n}"')
    (issue,) = _issues(bad)
    assert issue.startswith("groups[1].accounts.passwd (line 21): unknown field")


def test_bad_enum_value() -> None:
    (issue,) = _issues(GOOD.replace("transport: tcp", "transport: sctp"))
    assert issue.startswith("registrars.pbx.transport (line 7): Input should be")
    assert "'sctp'" in issue


def test_cross_checks_collect_every_problem() -> None:
    bad = (
        GOOD.replace("target: receivers", "target: nobody")
        .replace('user: "{2000..2009}"', 'user: "{2000..2001}"')
        .replace('"asr >= 0.99"', '"asr >> 1"')
    )
    issues = _issues(bad)
    assert any(i.startswith("groups[1].target (line 18): 'nobody' is neither") for i in issues)
    assert any(
        i.startswith("groups[0].accounts.user (line 13): range {2000..2001} holds 2 users")
        for i in issues
    )
    assert any(i.startswith("thresholds[0] (line 25): threshold 'asr >> 1'") for i in issues)
    assert len(issues) == 3


def test_duplicate_group_names_and_receiver_with_target() -> None:
    bad = GOOD.replace("name: callers", "name: receivers").replace(
        "    role: receiver\n", "    role: receiver\n    target: sip:x@y\n"
    )
    issues = _issues(bad)
    assert any("groups[1].name" in i and "used twice" in i for i in issues)
    assert any(i.startswith("groups[0].target (line 12): a receiver answers calls") for i in issues)


def test_unknown_threshold_metric_lists_known_ones() -> None:
    (issue,) = _issues(GOOD.replace('"asr >= 0.99"', '"asrr >= 0.99"'))
    assert "unknown metric 'asrr'" in issue and "mos.p5" in issue


def test_register_without_registrar() -> None:
    text = textwrap.dedent(
        """\
        groups:
          - name: r
            size: 1
            role: receiver
            register: true
            accounts: {user: "100"}
        """
    )
    (issue,) = _issues(text)
    assert issue == "groups[0].register (line 5): register: true needs a `registrar` for the group"


def test_direct_groups_do_not_register() -> None:
    text = "groups: [{name: r, size: 2, role: receiver, accounts: {user: '{1..2}'}}]"
    plan = load_plan(text)
    assert plan.groups[0].register is False
    assert plan.groups[0].registrar.domain == "localhost"


def test_buildup_needs_exactly_one_mode() -> None:
    (issue,) = _issues(
        GOOD.replace("buildup: {total_s: 2}", "buildup: {total_s: 2, rate_per_s: 3}")
    )
    assert issue.startswith("buildup (line 24): Value error, give exactly one of")


def test_yaml_syntax_error_names_line() -> None:
    with pytest.raises(ConfigError, match=r"line 3, column"):
        load_plan("groups:\n  - name: a\n   size: [1\n")


def test_not_a_mapping() -> None:
    assert _issues("- 1\n- 2\n") == ["<root> (line 1): a plan is a mapping with at least `groups`"]


def test_csv_accounts(tmp_path: Path) -> None:
    (tmp_path / "acc.csv").write_text(
        "username,password,display_name\nalice,pa,Alice\nbob,pb,\ncarol,pc,Carol\n"
    )
    plan_path = tmp_path / "p.yaml"
    plan_path.write_text("groups: [{name: r, size: 2, role: receiver, accounts: {csv: acc.csv}}]\n")
    plan = load_plan_file(plan_path)
    accs = plan.groups[0].accounts
    assert [(a.username, a.password, a.display_name) for a in accs] == [
        ("alice", "pa", "Alice"),
        ("bob", "pb", None),
    ]


def test_csv_accounts_errors(tmp_path: Path) -> None:
    (tmp_path / "acc.csv").write_text("user,password\nalice,pa\n")
    with pytest.raises(PlanError) as exc:
        load_plan(
            "groups: [{name: r, size: 1, role: receiver, accounts: {csv: acc.csv}}]",
            base_dir=tmp_path,
        )
    assert "groups[0].accounts.csv (line 1)" in str(exc.value)
    assert "lacks column(s) username" in str(exc.value)
    with pytest.raises(PlanError, match="cannot read"):
        load_plan(
            "groups: [{name: r, size: 1, role: receiver, accounts: {csv: nope.csv}}]",
            base_dir=tmp_path,
        )


def _wav(samples: int = 80, channels: int = 1, bits: int = 16) -> bytes:
    data = b"\x00\x00" * samples
    fmt = struct.pack("<HHIIHH", 1, channels, 8000, 16000, 2, bits)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


def test_file_source_is_hashed(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(_wav())
    text = (
        "groups: [{name: r, size: 1, role: receiver, accounts: {user: '1'},"
        " media: {source: {kind: file, path: a.wav}}}]"
    )
    plan = load_plan(text, base_dir=tmp_path)
    src = plan.groups[0].media.source
    assert src["kind"] == "file" and len(src["sha256"]) == 64
    assert plan.media_files[src["sha256"]].name == "a.wav"
    (tmp_path / "b.wav").write_bytes(b"not a wav")
    with pytest.raises(PlanError, match=r"media.source.path \(line 1\): .* not a WAV file"):
        load_plan(text.replace("a.wav", "b.wav"), base_dir=tmp_path)


@pytest.mark.parametrize(
    ("channels", "bits", "message"),
    [(2, 16, "WAV has 2 channels, need mono"), (1, 8, "WAV has 8-bit samples, need 16-bit")],
)
def test_wav_that_workers_refuse_is_a_plan_error(
    tmp_path: Path, channels: int, bits: int, message: str
) -> None:
    # a RIFF/WAVE header is not enough: workers refuse stereo or 8-bit files, which
    # used to fail the run after the receivers had started
    (tmp_path / "s.wav").write_bytes(_wav(channels=channels, bits=bits))
    text = (
        "groups: [{name: r, size: 1, role: receiver, accounts: {user: '1'},"
        " media: {source: {kind: file, path: s.wav}}}]"
    )
    (issue,) = _plan_issues(text, tmp_path)
    assert issue.startswith("groups[0].media.source.path (line 1): media file")
    assert message in issue


def _plan_issues(text: str, base: Path | None = None) -> list[str]:
    with pytest.raises(PlanError) as exc:
        load_plan(text, base_dir=base)
    return [str(i) for i in exc.value.issues]


CALLER = GOOD.replace(
    "media: {codecs: [PCMA], source: {kind: silence}}",
    "media: {codecs: [PCMA], source: {kind: silence}}\n    actions: ACTIONS",
)


def test_actions_checked_as_workers_check_them() -> None:
    bad = CALLER.replace(
        "ACTIONS",
        '[{at_s: 5, do: hold}, {at_s: 1, do: dtmf}, {at_s: 2, do: hold, digits: "1"}]',
    )
    issues = _plan_issues(bad)
    assert issues == [
        "groups[1].actions[0].at_s (line 24): at_s 5 is not within the call"
        " (call.duration_s 5); make it smaller or the call longer",
        'groups[1].actions[1] (line 24): do: dtmf needs `digits` to play, e.g. digits: "12#"',
        "groups[1].actions[2].digits (line 24): do: hold plays no digits; remove `digits`"
        " (to fire on received digits use match_digits with on: dtmf_received)",
    ]


def test_match_digits_and_hangup_actions_load() -> None:
    good = CALLER.replace(
        "ACTIONS",
        '[{on: dtmf_received, match_digits: "9", do: hangup}, {at_s: 1, do: resume}]',
    )
    actions = load_plan(good).groups[1].actions
    assert actions[0] == {"on": "dtmf_received", "match_digits": "9", "do": "hangup"}
    bad = CALLER.replace("ACTIONS", '[{on: hold_received, match_digits: "9", do: hangup}]')
    (issue,) = _plan_issues(bad)
    assert "match_digits needs on: dtmf_received" in issue


def test_codecs_and_srtp_workers_refuse() -> None:
    bad = GOOD.replace("codecs: [PCMA]", "codecs: [telephone-event], srtp: dtls")
    issues = _plan_issues(bad)
    assert issues == [
        "groups[1].media.codecs (line 23): list at least one audio codec (PCMU, PCMA, ...)",
        "groups[1].media.srtp (line 23): dtls is not supported by sipswarm workers yet;"
        " use sdes (or off)",
    ]
    (dup,) = _plan_issues(GOOD.replace("codecs: [PCMA]", "codecs: [PCMA, PCMA]"))
    assert "a codec is listed twice" in dup


def test_threshold_on_a_group_not_in_the_plan() -> None:
    (issue,) = _plan_issues(GOOD.replace("{group=callers}", "{group=caller}"))
    assert issue == (
        "thresholds[1] (line 25): threshold 'pdd.p95{group=caller} < 3000': no group"
        " 'caller' in the plan (groups: receivers, callers)"
    )


@pytest.mark.parametrize(
    ("old", "new", "path", "guess"),
    [
        ('password: "pw-{n}"', 'pasword: "pw-{n}"', "groups[1].accounts.pasword", "password"),
        ("call: {duration_s: 5,", "call: {duraton_s: 5,", "groups[1].call.duraton_s", "duration_s"),
        ("codecs: [PCMA]", "codec: [PCMA]", "groups[1].media.codec", "codecs"),
        ("thresholds:", "threshold:", "threshold", "thresholds"),
        ("transport: tcp", "transprot: tcp", "registrars.pbx.transprot", "transport"),
        (
            "source: {kind: silence}",
            "source: {kind: tone, frequency: 5}",
            "source.frequency",
            "frequency_hz",
        ),
    ],
)
def test_unknown_field_suggests_the_closest_name(old: str, new: str, path: str, guess: str) -> None:
    issues = _plan_issues(GOOD.replace(old, new))
    assert any(path in i and f"did you mean `{guess}`?" in i for i in issues), issues


BUSY = """\
groups:
  - {name: rx, size: 2, role: receiver, accounts: {user: "{200..201}"},
     call: {duration_s: 3, answer_delay_ms: ANSWER}}
  - {name: tx, size: 4, role: caller, target: rx, accounts: {user: "{100..103}"},
     call: {duration_s: 3, ring_timeout_s: 4}}
buildup: {rate_per_s: RATE}
"""


def test_calls_sure_to_fail_are_warned_about() -> None:
    # 4 callers dealt over 2 receivers at 10/s: tx/2 dials rx/0 0.2 s after tx/0, while
    # rx/0 is still in tx/0's call (measured: 486 Busy Here). Valid (a busy test is
    # legitimate) but said before the run starts, with the rate that would work.
    plan = load_plan(BUSY.replace("ANSWER", "500").replace("RATE", "10"))
    (warning,) = plan.warnings
    assert warning == (
        "buildup: callers of 'tx' reach receiver rx/0 0.2 s apart, but a call holds a receiver"
        " 4.5 s (ringing + call + 1 s): its next call would get 486 Busy Here. 4 callers share"
        " 2 receivers; slow the buildup (rate_per_s at most 0.444), shorten call.duration_s or"
        " add receivers"
    )
    assert load_plan(BUSY.replace("ANSWER", "500").replace("RATE", "0.4")).warnings == ()
    # ringing longer than the caller waits: every call is cancelled (measured: 487)
    late = load_plan(BUSY.replace("ANSWER", "5000").replace("RATE", "0.1"))
    assert late.warnings == (
        "group 'tx': call.ring_timeout_s 4 ends before 'rx' answers (answer_delay_ms 5000):"
        " every call will be cancelled (487)",
    )


def test_media_rtp_false_loads_travels_and_refuses_media_actions() -> None:
    media = "media: {codecs: [PCMA], source: {kind: silence}}"
    quiet = "media: {codecs: [PCMA], source: {kind: silence}, rtp: false}"
    plan = load_plan(GOOD.replace(media, quiet))
    assert plan.groups[1].media.rtp is False and plan.groups[0].media.rtp is True
    d = Dispatch(plan, "r", allocate(plan, "r", [WorkerSlot("w", 10)]))
    ((_, rx),) = d.receiver_assigns(0)
    assert "rtp" not in assign_json(rx, plan)["endpoints"][0]["media"]  # default: not sent
    for i in range(3):
        d.receive_phase(f"r/receivers/{i}", Phase.REGISTERED, f"sip:200{i}@127.0.0.1:5999")
    ((_, tx),), _ = d.caller_assigns(5)
    assert assign_json(tx, plan)["endpoints"][0]["media"]["rtp"] is False
    bad = CALLER.replace(media, quiet).replace(
        "ACTIONS", "[{at_s: 1, do: hold}, {on: dtmf_received, do: hangup}, {at_s: 1, do: hangup}]"
    )
    issues = _plan_issues(bad)
    assert issues == [
        "groups[1].actions[0] (line 24): do: hold needs media and media.rtp is false"
        " (signalling-only calls); set media.rtp: true or drop the action",
        "groups[1].actions[1] (line 24): on: dtmf_received needs media and media.rtp is false"
        " (signalling-only calls); set media.rtp: true or drop the action",
    ]
