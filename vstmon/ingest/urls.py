"""What a stream URL means, without OpenCV: ``parse_source(url) -> SourceSpec``, or a permanent
``CaptureError`` for a URL that can never be opened (an unsupported scheme, a file that does not exist).

This is the daemon's rule (a stream whose URL fails here is failed at once) and ``vstmon check``'s, which
reports the same URLs before anything starts (``vstmon.service.preflight``). ``capture.py`` re-exports the names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vstmon.errors import SourceError
from vstmon.log import redact_url

__all__ = ["CaptureError", "SourceSpec", "parse_source"]

_WEBCAM_PATH_RE = re.compile(r"^/dev/video\d+$")
_LIVE_KINDS = ("rtsp", "http", "webcam")


class CaptureError(SourceError):
    """A source could not be opened. ``permanent``: retrying cannot help (bad scheme, missing file)."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """What a stream URL means. ``target`` is what OpenCV opens (never logged: it may hold credentials)."""

    kind: str  # rtsp | http | webcam | file | testsrc
    target: str | int
    display: str  # redacted, safe for logs and reasons

    @property
    def live(self) -> bool:
        return self.kind in _LIVE_KINDS


def parse_source(url: str) -> SourceSpec:
    """Classify a stream URL; raises a permanent ``CaptureError`` for what can never be opened."""
    text = url.strip()
    display = redact_url(text)
    if text.isdigit():
        return SourceSpec("webcam", int(text), display)
    if _WEBCAM_PATH_RE.match(text):
        return SourceSpec("webcam", text, display)
    if text == "testsrc" or text.startswith("testsrc://"):
        return SourceSpec("testsrc", text, display)
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme in ("rtsp", "rtsps"):
            return SourceSpec("rtsp", text, display)
        if scheme in ("http", "https"):
            return SourceSpec("http", text, display)
        if scheme == "file":
            text = urlsplit(text).path
        else:
            raise CaptureError(
                f"unsupported URL scheme {scheme!r} in {display} (use rtsp://, rtsps://, http(s)://, "
                "a file path, a webcam index, /dev/videoN or testsrc)",
                permanent=True,
            )
    path = Path(text).expanduser()
    if not path.exists():
        raise CaptureError(f"video file {display} does not exist", permanent=True)
    if not path.is_file():
        raise CaptureError(f"{display} is not a regular file", permanent=True)
    return SourceSpec("file", str(path), redact_url(str(path)))
