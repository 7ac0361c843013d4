"""Where ``vstmon classify`` writes its JSON lines: stdout, or a file that appears whole or not at all."""

from __future__ import annotations

import os
import secrets
import stat
import sys
from pathlib import Path
from types import TracebackType
from typing import IO

from vstmon.errors import VstmonError

__all__ = ["TimelineOutput"]


class TimelineOutput:
    """Where the JSON lines go, one flushed line per clip.

    stdout (``None`` or ``-``); a regular file, written as ``<name>.<random>.part`` beside it and renamed over
    it by ``commit()`` (closing without a commit removes the part file: the target is never partial or empty,
    and an existing one is kept); anything else that exists (``/dev/null``, a FIFO) is written directly.
    """

    def __init__(self, out: Path | None) -> None:
        self.target = out
        self._part: Path | None = None
        self._stream: IO[str]
        if out is None or str(out) == "-":
            self._stream = sys.stdout
            return
        try:
            mode = out.stat().st_mode if out.exists() else None
            if mode is not None and stat.S_ISDIR(mode):
                raise VstmonError(f"cannot write the timeline to {out}: it is a directory")
            if mode is not None and not stat.S_ISREG(mode):
                self._stream = out.open("w", encoding="utf-8")
                return
            part = out.with_name(f"{out.name}.{secrets.token_hex(4)}.part")
            fd = os.open(
                part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666
            )  # the umask applies, as for open()
        except OSError as error:
            raise VstmonError(f"cannot write the timeline to {out}: {error.strerror}") from None
        self._part = part
        self._stream = os.fdopen(fd, "w", encoding="utf-8")

    @property
    def part(self) -> Path | None:
        """The temporary file being written (None for stdout and non-regular targets)."""
        return self._part

    def write_line(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()  # a reader of the file (tail -f) or the pipe sees each clip when its batch is done

    def commit(self) -> None:
        """Finish: the part file replaces the target."""
        if self._stream is sys.stdout:
            return
        self._stream.close()
        if self._part is not None and self.target is not None:
            try:
                os.replace(self._part, self.target)
            except OSError as error:
                raise VstmonError(f"cannot write the timeline to {self.target}: {error.strerror}") from None
            self._part = None

    def __enter__(self) -> TimelineOutput:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stream is not sys.stdout:
            self._stream.close()
        if self._part is not None:  # not committed: failed or interrupted
            self._part.unlink(missing_ok=True)
            self._part = None
