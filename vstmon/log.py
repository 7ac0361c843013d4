"""structlog set-up: JSON when stderr is not a TTY, console otherwise; secrets in URLs and text are masked.

Redaction (``redact_url`` for one string, ``redact`` through containers) is applied to every structlog value,
to stdlib ``logging`` records and to uncaught tracebacks, and callers use it for status reasons and ``check``
output. The rules, chosen to over-mask rather than leak:

1. A URL starts at ``scheme://`` (or ``scheme:/``, as a path normalisation leaves it). Its **user-info is everything between ``scheme://`` and the last ``@``
   before the URL ends**, and in free text a URL ends at the next whitespace (or the end of the text), not at
   the first ``/``, ``?`` or ``#``: a password may hold ``@``, ``/``, ``?``, ``#`` or ``:`` (FFmpeg itself splits
   the user-info at the last ``@``). An ``@`` later in the same URL (in its path or query) therefore masks the
   host and path too: more is hidden, nothing leaks. A password with whitespace must be percent-encoded
   (``%20``, which FFmpeg decodes): a raw space ends the URL.
2. The user name (before the first ``:`` of the user-info) is kept when it is a plain name (no ``@``, ``/``,
   ``?`` or ``#``); the rest becomes ``***``: ``rtsp://admin:p@ss/w@host/live`` -> ``rtsp://admin:***@host/live``.
   A user-info without ``:`` (a token) becomes ``***``.
3. ``name=value`` pairs, in query strings and in free text, whose name is a secret (``password``, ``passwd``,
   ``pwd``, ``pw``, ``pass``, ``token``, ``access_token``, ``api_key``, ``apikey``, ``key``, ``secret``,
   ``auth``, ``sig``, ``signature``, ... case-insensitive, also as the last part of a longer name such as
   ``client_secret`` or ``X-Amz-Signature``, and any name containing ``password``, ``secret`` or ``token``)
   have their value, up to the next ``&`` or whitespace, replaced by ``***``.
4. In containers (``redact``), the value of a dict key that names a secret (rule 3) is replaced by ``***``.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from typing import Any

import structlog

__all__ = ["MASK", "configure_logging", "get_logger", "redact", "redact_url"]

MASK = "***"
_WHITESPACE_RE = re.compile(r"\s")
# "scheme://", also "scheme:/" (a URL passed through a path normalisation, as pathlib does) for schemes of 2+
# characters, so that "C:/" is not a scheme. The look-behind makes the search linear (it starts only at word starts).
_SCHEME_RE = re.compile(r"(?<![A-Za-z0-9+.\-])(?:[A-Za-z][A-Za-z0-9+.\-]*://|[A-Za-z][A-Za-z0-9+.\-]+:/)")
# name=value; the name must start a word (so "x_token=" is one name, not "token=" inside it)
_PARAM_RE = re.compile(r"(?<![\w.\-])([\w.\-]+)=([^&\s]*)")
_NAME_PARTS_RE = re.compile(r"[_.\-]")
_SECRET_NAMES = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "pwd",
        "pw",
        "pass",
        "token",
        "accesstoken",
        "apikey",
        "key",
        "secret",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "sig",
        "signature",
    }
)
_SECRET_SUBSTRINGS = ("password", "passwd", "secret", "token")
_USER_NAME_STOP = frozenset("@/?#")


def _is_secret_name(name: str) -> bool:
    """True for ``password``, ``access_token``, ``X-Api-Key``, ``client_secret``, ``Signature``, ..."""
    lowered = name.lower()
    if _NAME_PARTS_RE.sub("", lowered) in _SECRET_NAMES:
        return True
    if _NAME_PARTS_RE.split(lowered)[-1] in _SECRET_NAMES:
        return True
    return any(part in lowered for part in _SECRET_SUBSTRINGS)


def _secret_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every secret in ``text`` (may overlap); linear in ``len(text)``."""
    spans: list[tuple[int, int]] = []
    search_from = 0
    while (scheme := _SCHEME_RE.search(text, search_from)) is not None:
        start = scheme.end()
        space = _WHITESPACE_RE.search(text, start)
        end = space.start() if space else len(text)
        at = text.rfind("@", start, end)
        if at == -1:  # no "@" anywhere in this URL: no user-info, and none for a URL inside it
            search_from = end
            continue
        user, colon, _ = text[start:at].partition(":")
        if colon and user and _USER_NAME_STOP.isdisjoint(user):
            spans.append((start + len(user) + 1, at))  # keep "user:", mask the password
        else:
            spans.append((start, at))
        search_from = at + 1
    if "=" in text:
        for match in _PARAM_RE.finditer(text):
            if match.group(2) and _is_secret_name(match.group(1)):
                spans.append(match.span(2))
    return spans


def redact_url(url: str) -> str:
    """Return ``url`` (or any text holding URLs) with passwords and tokens replaced by ``***``.

    Safe for logs, status reasons and command output; the rules are in this module's docstring.
    """
    spans = [span for span in _secret_spans(url) if span[1] > span[0]]
    if not spans:
        return url
    spans.sort()
    out: list[str] = []
    position = 0
    for start, end in spans:
        if end <= position:  # inside a span already masked
            continue
        if start < position:  # overlaps the previous one: extend it
            start = position
        else:
            out.append(url[position:start])
            out.append(MASK)
        position = end
    out.append(url[position:])
    return "".join(out)


def redact(value: Any, mask_secret_keys: bool = True) -> Any:
    """Redact credentials inside strings, recursively through lists, tuples and dicts.

    ``mask_secret_keys``: also replace the value of a dict key that names a secret (``password``, ``token``,
    ...) by ``***``; turn it off for data whose keys are names chosen by users (stream names in a status).
    """
    if isinstance(value, str):
        return redact_url(value) if (":/" in value or "=" in value) else value
    if isinstance(value, dict):
        return {
            k: (
                MASK
                if mask_secret_keys and v is not None and isinstance(k, str) and _is_secret_name(k)
                else redact(v, mask_secret_keys)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v, mask_secret_keys) for v in value)
    return value


def _redact_processor(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return redact(event_dict)


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


class _RedactingFilter(logging.Filter):
    """Masks secrets in stdlib ``logging`` records (third-party libraries) before any handler formats them."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format/args pair: leave it to the handler, which reports it as logging does
            return True
        redacted = redact_url(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = redact_url("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return True


def _redacting_excepthook(exc_type: Any, exc: Any, tb: Any) -> None:
    sys.stderr.write(redact_url("".join(traceback.format_exception(exc_type, exc, tb))))


def _redacting_thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else threading.get_ident()
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    sys.stderr.write(redact_url(f"Exception in thread {name}:\n{text}"))


def _install_redaction_outside_structlog() -> None:
    """Redact stdlib logging and uncaught tracebacks too.

    The exception hooks are replaced only while they are Python's defaults: an application (or a test runner)
    that installed its own keeps it.
    """
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedactingFilter) for f in handler.filters):
            handler.addFilter(_RedactingFilter())
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _redacting_excepthook
    if threading.excepthook is threading.__excepthook__:
        threading.excepthook = _redacting_thread_excepthook


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
    _install_redaction_outside_structlog()


def get_logger(name: str) -> Any:
    """A structlog logger bound to ``component=name``.

    The logger stays lazy: one made at import time still follows a later ``configure_logging``
    (binding eagerly would freeze the default configuration into it).
    """
    return structlog.get_logger(component=name)
