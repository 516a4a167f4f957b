"""The worker token never reaches the logs, whatever path it takes."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from sipswarm.agent.logging import REDACTED, configure_logging

TOKEN = "tok-VERY-secret-42"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


def test_token_is_redacted_from_events_keys_foreign_logs_and_tracebacks() -> None:
    out = io.StringIO()
    configure_logging("debug", "json", secrets=[TOKEN], stream=out)
    log = structlog.get_logger("test")
    log.info("connecting", url=f"wss://x/?t={TOKEN}", headers={"Authorization": "Bearer abc"})
    log.info("nested", data=[{"password": "pw1"}, f"Bearer {TOKEN}"])
    logging.getLogger("websockets.client").debug("> Authorization: Bearer %s", TOKEN)
    try:
        raise RuntimeError(f"upgrade failed with {TOKEN}")
    except RuntimeError:
        log.exception("boom")
    text = out.getvalue()
    assert TOKEN not in text and "pw1" not in text and "Bearer abc" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["event"] == "connecting" and lines[0]["url"] == f"wss://x/?t={REDACTED}"
    assert lines[0]["headers"] == {"Authorization": REDACTED} and lines[0]["level"] == "info"
    assert lines[2]["event"] == f"> Authorization: Bearer {REDACTED}"
    assert "RuntimeError" in lines[3]["exception"]


def test_pretty_format_is_redacted_too() -> None:
    out = io.StringIO()
    configure_logging("info", "pretty", secrets=[TOKEN], stream=out)
    structlog.get_logger("test").warning("token is", value=TOKEN)
    assert TOKEN not in out.getvalue() and REDACTED in out.getvalue()
