"""Settings from the environment: one line naming the setting and the fix when wrong."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sipswarm.agent.config import add_arguments, load_config
from sipswarm.errors import ConfigError


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    base = {
        "CONTROLLER_URL": "wss://ctl.example.com/v1/worker",
        "WORKER_TOKEN": "t0k",
        "STATE_DIR": str(tmp_path),
    }
    base.update(extra)
    return base


def test_defaults_and_persisted_worker_id(tmp_path: Path) -> None:
    cfg = load_config(env(tmp_path))
    assert cfg.max_endpoints == 500 and cfg.health_port == 3030 and cfg.log_format == "json"
    assert cfg.rtp_port_range == (20000, 39999) and cfg.data_buffer_bytes == 256 * 1024 * 1024
    assert cfg.worker_id.startswith("w-")
    assert (tmp_path / "worker_id").read_text().strip() == cfg.worker_id
    assert load_config(env(tmp_path)).worker_id == cfg.worker_id  # stable across restarts
    assert load_config(env(tmp_path, WORKER_ID="edge-7")).worker_id == "edge-7"
    assert "t0k" not in repr(cfg)


def test_flags_override_environment(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--max-endpoints", "20", "--log-format", "pretty"])
    cfg = load_config(env(tmp_path, MAX_ENDPOINTS="10"), vars(args))
    assert cfg.max_endpoints == 20 and cfg.log_format == "pretty"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"CONTROLLER_URL": ""},
            "CONTROLLER_URL is not set; set it to the controller's worker URL",
        ),
        ({"WORKER_TOKEN": ""}, "WORKER_TOKEN is not set; set it to the token"),
        (
            {"CONTROLLER_URL": "ws://ctl.example.com/v1"},
            "CONTROLLER_URL must use wss:// (ws:// is allowed only for loopback hosts)",
        ),
        ({"CONTROLLER_URL": "http://x"}, "CONTROLLER_URL must be a ws:// or wss:// URL"),
        ({"MAX_ENDPOINTS": "lots"}, "MAX_ENDPOINTS must be an integer 1-1000000, got 'lots'"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be one of json, pretty, got 'xml'"),
        ({"HEALTH_PORT": "70000"}, "HEALTH_PORT must be 0-65535, got '70000'"),
        ({"RTP_PORT_RANGE": "30000-20000"}, "RTP_PORT_RANGE must be low-high with 1024 <= low"),
        ({"RTP_PORT_RANGE": "20001-39999"}, "RTP_PORT_RANGE must start on an even port"),
        ({"RTP_PORT_RANGE": "20000-20099"}, "RTP_PORT_RANGE 20000-20099 holds 50 RTP/RTCP pairs"),
        ({"SIP_BIND_ADDRESS": "eth0"}, "SIP_BIND_ADDRESS must be an IPv4 or IPv6 address"),
        ({"WORKER_LABELS": "region"}, "WORKER_LABELS must be key=value pairs"),
        ({"WORKER_ID": "a b"}, "WORKER_ID must be 1-64 of"),
        (
            {"WORKER_TOKEN": "a b"},
            "WORKER_TOKEN must be one printable word without spaces, got (hidden)",
        ),
    ],
)
def test_bad_settings_stop_with_one_line(
    tmp_path: Path, extra: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env(tmp_path, **extra))
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text


def test_ws_is_allowed_for_loopback_only(tmp_path: Path) -> None:
    for url in ("ws://127.0.0.1:8080/v1/worker", "ws://localhost/v1", "ws://[::1]:9/v1"):
        assert load_config(env(tmp_path, CONTROLLER_URL=url)).controller_url == url


def test_unwritable_state_dir_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"^STATE_DIR .* is not writable"):
        load_config(env(tmp_path, STATE_DIR=str(blocker / "sub")))
