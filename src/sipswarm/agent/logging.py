"""Structured logs: JSON lines by default, coloured text with ``LOG_FORMAT=pretty``.

:func:`configure_logging` routes structlog and the standard library (the
websockets client logs there) through one handler and one chain of
processors. Secrets never reach the output: :class:`Redactor` replaces every
occurrence of the worker token (and of any value under a key such as
``authorization``, ``token`` or ``password``) in the event, and the final
rendered line is scrubbed once more, so that a token inside an exception text
or a websockets debug line of the upgrade request is hidden as well.
Next: ``log = structlog.get_logger("sipswarm.agent")``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import IO, Any

import structlog

REDACTED = "[REDACTED]"
SECRET_KEYS = frozenset({"authorization", "token", "worker_token", "password", "secret"})


class Redactor:
    """structlog processor hiding secrets in every value, nested dicts and lists included."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so that a secret containing another is hidden whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, logger: Any, method: str, event: Any) -> Any:
        return self.scrub(event)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub_text(value)
        if isinstance(value, dict):
            return {
                k: REDACTED if str(k).lower() in SECRET_KEYS and v else self.scrub(v)
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return type(value)(self.scrub(v) for v in value)
        if isinstance(value, BaseException):
            return self.scrub_text(repr(value))
        return value

    def scrub_text(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


class _ScrubbedRenderer:
    """Render with ``inner`` and scrub the finished line (covers formatted tracebacks)."""

    def __init__(self, inner: Any, redactor: Redactor) -> None:
        self.inner = inner
        self.redactor = redactor

    def __call__(self, logger: Any, method: str, event: Any) -> str:
        return self.redactor.scrub_text(str(self.inner(logger, method, event)))


def configure_logging(
    level: str = "info",
    fmt: str = "json",
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> Redactor:
    """Install the handler on the root logger; return the redactor (tests add secrets to it)."""
    redactor = Redactor(secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redactor,
    ]
    inner: Any = (
        structlog.dev.ConsoleRenderer(colors=stream is None and sys.stderr.isatty())
        if fmt == "pretty"
        else structlog.processors.JSONRenderer()
    )
    tail: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if fmt != "pretty":
        tail.append(structlog.processors.format_exc_info)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[*tail, _ScrubbedRenderer(inner, redactor)],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    return redactor
