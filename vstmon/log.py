"""structlog set-up: JSON when stderr is not a TTY, console otherwise; credentials in URLs are masked."""

from __future__ import annotations

import logging
import re
import sys
import threading
from typing import Any

import structlog

__all__ = ["configure_logging", "get_logger", "redact", "redact_url"]

# scheme://user:password@host -> scheme://user:***@host ; scheme://token@host -> scheme://***@host
_USERINFO_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
# key=value secrets in query strings (?password=..., &token=...)
_QUERY_SECRET_RE = re.compile(r"(?i)([?&](?:pass(?:word)?|pwd|token|key|secret|auth)=)[^&\s]*")


def _mask_userinfo(match: re.Match[str]) -> str:
    userinfo = match.group("userinfo")
    user, sep, _ = userinfo.partition(":")
    masked = f"{user}:***" if sep else "***"
    return f"{match.group('scheme')}{masked}@"


def redact_url(url: str) -> str:
    """Return ``url`` with any password or token replaced by ``***`` (safe for logs and status messages)."""
    return _QUERY_SECRET_RE.sub(r"\1***", _USERINFO_RE.sub(_mask_userinfo, url))


def redact(value: Any) -> Any:
    """Redact credentials inside strings, recursively through lists, tuples and dicts."""
    if isinstance(value, str):
        return redact_url(value) if ("@" in value or "=" in value) else value
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def _redact_processor(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: redact(v) for k, v in event_dict.items()}


class _StderrLogger:
    """Writes each line to whatever ``sys.stderr`` is at that moment.

    A logger holding the stream it saw at configuration time would write into a closed file once the
    stream is swapped (output redirection, test capture).
    """

    _lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


_STDERR_LOGGER = _StderrLogger()


def _stderr_logger_factory(*_args: Any) -> _StderrLogger:
    return _STDERR_LOGGER


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and stdlib logging once for the process.

    ``fmt``: ``json`` (one object per line), ``console`` (coloured key=value), or ``auto``
    (console on a TTY, JSON otherwise, e.g. under systemd).
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    level_no = logging.getLevelNamesMapping()[level.upper()]
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=_stderr_logger_factory,
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=level_no, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def get_logger(name: str) -> Any:
    """A structlog logger bound to ``component=name``.

    The logger stays lazy: one made at import time still follows a later ``configure_logging``
    (binding eagerly would freeze the default configuration into it).
    """
    return structlog.get_logger(component=name)
