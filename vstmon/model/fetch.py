"""``vstmon weights list|fetch``: the official Video Swin checkpoints and a careful downloader.

The download (stdlib ``urllib`` only) writes to ``NAME.pth.part``, resumes it with an HTTP ``Range`` request
after a dropped connection (starting over when the server ignores ``Range``), retries with exponential
backoff, verifies the SHA-256 when a digest is known or given, and renames the file into place only when it
is complete and verified. It prints the file's size and SHA-256 so they can be recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from vstmon.errors import FetchError
from vstmon.log import redact_url

__all__ = [
    "BASE_URL",
    "CATALOGUE",
    "DownloadResult",
    "OfficialCheckpoint",
    "add_arguments",
    "download",
    "fetch",
    "resolve_name",
    "run",
]

BASE_URL = "https://github.com/SwinTransformer/storage/releases/download/v1.0.4/"
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class OfficialCheckpoint:
    """One official checkpoint (SwinTransformer/Video-Swin-Transformer, release v1.0.4)."""

    file_name: str  # file name in the release (and in checkpoints/)
    preset: str  # vstmon preset that matches its architecture (model.arch)
    dataset: str  # what its head was trained on
    num_classes: int
    labels: str | None  # vstmon label list for model.labels (None: not packaged)
    pretrain: str  # weights the training started from
    top1_percent: float  # the paper's / official README's top-1 accuracy on the dataset's validation set
    size_bytes: int | None = None  # not recorded yet (no internet where this was written)
    sha256: str | None = None  # not recorded yet: `vstmon weights fetch` prints it

    @property
    def name(self) -> str:
        return self.file_name.removesuffix(".pth")


_ENTRIES = [
    OfficialCheckpoint(
        "swin_tiny_patch244_window877_kinetics400_1k.pth", "swin_t", "Kinetics-400", 400, "kinetics400",
        "ImageNet-1K", 78.8,
    ),
    OfficialCheckpoint(
        "swin_small_patch244_window877_kinetics400_1k.pth", "swin_s", "Kinetics-400", 400, "kinetics400",
        "ImageNet-1K", 80.6,
    ),
    OfficialCheckpoint(
        "swin_base_patch244_window877_kinetics400_1k.pth", "swin_b", "Kinetics-400", 400, "kinetics400",
        "ImageNet-1K", 80.6,
    ),
    OfficialCheckpoint(
        "swin_base_patch244_window877_kinetics400_22k.pth", "swin_b", "Kinetics-400", 400, "kinetics400",
        "ImageNet-22K", 82.7,
    ),
    OfficialCheckpoint(
        "swin_base_patch244_window877_kinetics600_22k.pth", "swin_b", "Kinetics-600", 600, None,
        "ImageNet-22K", 84.0,
    ),
    OfficialCheckpoint(
        "swin_base_patch244_window1677_sthv2.pth", "swin_b_sthv2", "Something-Something v2", 174, "sthv2",
        "Kinetics-400", 69.6,
    ),
]  # fmt: skip
CATALOGUE: dict[str, OfficialCheckpoint] = {entry.name: entry for entry in _ENTRIES}
# short names: the preset's best Kinetics-400 checkpoint (and the SSv2 one)
ALIASES: dict[str, str] = {
    "swin_t": "swin_tiny_patch244_window877_kinetics400_1k",
    "swin_s": "swin_small_patch244_window877_kinetics400_1k",
    "swin_b": "swin_base_patch244_window877_kinetics400_22k",
    "swin_b_sthv2": "swin_base_patch244_window1677_sthv2",
}


def resolve_name(name: str) -> OfficialCheckpoint:
    """The catalogue entry for a checkpoint name, its file name, or a short alias (``swin_t``, ...)."""
    key = ALIASES.get(name, name).removesuffix(".pth")
    try:
        return CATALOGUE[key]
    except KeyError:
        raise FetchError(
            f"unknown checkpoint {name!r}; choose one of: {', '.join(CATALOGUE)} "
            f"(or a short name: {', '.join(ALIASES)}); `vstmon weights list` describes them"
        ) from None


# ---------------------------------------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DownloadResult:
    """A completed, verified download."""

    path: Path
    size_bytes: int
    sha256: str
    verified: bool  # True when the digest was compared with a known one
    downloaded: bool = True  # False when the file was already there


class _Retryable(Exception):
    """A transient failure: the attempt may be repeated (resuming what was written)."""


class _Progress:
    """A one-line progress bar on a TTY stream (nothing otherwise), redrawn at most every 0.1 s."""

    def __init__(self, label: str, stream: IO[str] | None) -> None:
        self._label = label
        self._stream = stream if stream is not None and stream.isatty() else None
        self._last_s = 0.0
        self._start_s = time.monotonic()
        self._start_bytes: int | None = None

    def update(self, done_bytes: int, total_bytes: int | None, force: bool = False) -> None:
        if self._stream is None:
            return
        now = time.monotonic()
        if self._start_bytes is None:
            self._start_bytes, self._start_s = done_bytes, now
        if not force and now - self._last_s < 0.1:
            return
        self._last_s = now
        rate = (done_bytes - self._start_bytes) / max(now - self._start_s, 1e-6)
        if total_bytes:
            fraction = min(done_bytes / total_bytes, 1.0)
            bar = "#" * int(fraction * 30)
            text = f"{fraction * 100:5.1f}% [{bar:<30}] {done_bytes / 1e6:.1f}/{total_bytes / 1e6:.1f} MB"
        else:
            text = f"{done_bytes / 1e6:.1f} MB"
        self._stream.write(f"\r{self._label} {text} {rate / 1e6:.1f} MB/s ")
        self._stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.write("\n")
            self._stream.flush()


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _attempt(url: str, part: Path, timeout_s: float, progress: _Progress, say: Callable[[str], None]) -> None:
    """One request: append to ``part`` (resuming from its size); return when the body is complete."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "vstmon-weights/1"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    shown_url = redact_url(url)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:  # range past the end: the .part is complete, or bad
            total = _total_from_content_range(error.headers.get("Content-Range"))
            if total == offset:
                return
            part.unlink(missing_ok=True)
            raise _Retryable(f"the server refused to resume at byte {offset}; starting over") from None
        if error.code in (408, 429) or error.code >= 500:
            raise _Retryable(f"HTTP {error.code} {error.reason}") from None
        raise FetchError(f"{shown_url}: the server answered HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise _Retryable(f"cannot connect: {reason}") from None

    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        body_bytes = int(length) if length and length.isdigit() else None
        if status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _Retryable("the server resumed at the wrong byte; starting over")
            mode = "ab"
            total_bytes = int(match.group(3)) if match.group(3) != "*" else None
        else:
            if offset:
                say(f"the server ignored the resume request; downloading from the start ({shown_url})")
            offset, mode = 0, "wb"
            total_bytes = body_bytes
        done_bytes = offset
        try:
            with part.open(mode) as out:
                while True:
                    try:
                        chunk = response.read(_CHUNK_BYTES)
                    except (OSError, http.client.HTTPException) as error:
                        raise _Retryable(
                            f"connection lost after {done_bytes} bytes ({type(error).__name__})"
                        ) from None
                    if not chunk:
                        break
                    out.write(chunk)
                    done_bytes += len(chunk)
                    progress.update(done_bytes, total_bytes)
                out.flush()
                os.fsync(out.fileno())
        except OSError as error:  # the local disk, not the network
            raise FetchError(f"cannot write {part}: {error.strerror or error}") from None
        progress.update(done_bytes, total_bytes, force=True)
        if total_bytes is not None and done_bytes < total_bytes:
            raise _Retryable(f"connection closed after {done_bytes} of {total_bytes} bytes")
        if total_bytes is not None and done_bytes > total_bytes:
            part.unlink(missing_ok=True)
            raise _Retryable(f"received {done_bytes} bytes, more than the announced {total_bytes}")


def _total_from_content_range(value: str | None) -> int | None:
    match = re.match(r"bytes\s+\*/(\d+)", value or "")
    return int(match.group(1)) if match else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    retries: int = 4,
    timeout_s: float = 30.0,
    retry_delay_s: float = 2.0,
    max_delay_s: float = 60.0,
    progress_stream: IO[str] | None = None,
    say: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> DownloadResult:
    """Download ``url`` to ``dest`` via ``dest.part``: resume, retry with backoff, verify, atomic rename.

    ``retries``: further attempts after the first (delays ``retry_delay_s * 2**k``, at most ``max_delay_s``).
    ``sha256``: expected hex digest; on a mismatch the partial file is deleted and FetchError names both.
    ``stop``: set it to abandon the waits between attempts.
    """
    dest = Path(dest)
    expected = sha256.lower().strip() if sha256 else None
    if expected is not None and not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise FetchError(f"--sha256 {sha256!r} is not a SHA-256 hex digest (64 hex digits)")
    say = say or (lambda message: print(f"vstmon: {message}", file=sys.stderr))
    stop = stop or threading.Event()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FetchError(f"cannot create {dest.parent}: {error.strerror or error}") from None
    part = _part_path(dest)
    shown_url = redact_url(url)
    progress = _Progress(dest.name, progress_stream)
    attempts = retries + 1
    try:
        for attempt in range(1, attempts + 1):
            try:
                _attempt(url, part, timeout_s, progress, say)
                break
            except _Retryable as problem:
                if attempt == attempts:
                    kept = part.exists() and part.stat().st_size > 0
                    raise FetchError(
                        f"downloading {shown_url} failed after {attempts} attempt(s): {problem}"
                        + (
                            f"; the partial file {part} is kept, run the command again to resume"
                            if kept
                            else ""
                        )
                    ) from None
                delay_s = min(retry_delay_s * 2 ** (attempt - 1), max_delay_s)
                say(f"{problem}; retrying in {delay_s:g} s (attempt {attempt + 1} of {attempts})")
                if stop.wait(delay_s):
                    raise FetchError(f"downloading {shown_url} was stopped") from None
    finally:
        progress.close()
    actual = _sha256(part)
    size_bytes = part.stat().st_size
    if expected is not None and actual != expected:
        part.unlink(missing_ok=True)
        raise FetchError(
            f"{dest.name}: SHA-256 mismatch: expected {expected}, got {actual} ({size_bytes} bytes); "
            "the corrupted download was deleted"
        )
    os.replace(part, dest)
    return DownloadResult(dest, size_bytes, actual, expected is not None)


def fetch(
    name: str,
    dest_dir: str | Path = "checkpoints",
    *,
    base_url: str = BASE_URL,
    sha256: str | None = None,
    force: bool = False,
    **download_options: object,
) -> DownloadResult:
    """Download the official checkpoint ``name`` (see ``CATALOGUE``/``ALIASES``) into ``dest_dir``."""
    entry = resolve_name(name)
    expected = sha256 or entry.sha256
    dest = Path(dest_dir) / entry.file_name
    if dest.exists() and not force:
        actual = _sha256(dest)
        if expected is not None and actual != expected.lower():
            raise FetchError(
                f"{dest} already exists but its SHA-256 is {actual}, not {expected.lower()}; "
                "delete it or pass --force to download it again"
            )
        return DownloadResult(dest, dest.stat().st_size, actual, expected is not None, downloaded=False)
    url = base_url.rstrip("/") + "/" + entry.file_name
    return download(url, dest, sha256=expected, **download_options)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="weights_command", metavar="ACTION")
    sub.add_parser("list", help="list the official checkpoints", description="list the official checkpoints")
    fetch_parser = sub.add_parser(
        "fetch",
        help="download an official checkpoint",
        description="download an official checkpoint (resumable, SHA-256 verified when a digest is known)",
    )
    fetch_parser.add_argument("name", metavar="NAME", help="checkpoint name or short name (see `list`)")
    fetch_parser.add_argument(
        "--dest", type=Path, default=Path("checkpoints"), help="folder (default: checkpoints)"
    )
    fetch_parser.add_argument(
        "--base-url", default=BASE_URL, help=f"download from here (default: {BASE_URL})"
    )
    fetch_parser.add_argument("--sha256", help="expected SHA-256 (hex); overrides the catalogue's")
    fetch_parser.add_argument(
        "--retries", type=int, default=4, help="further attempts after a failure (default 4)"
    )
    fetch_parser.add_argument("--retry-delay-s", type=float, default=2.0, help="first retry delay (doubles)")
    fetch_parser.add_argument("--timeout-s", type=float, default=30.0, help="network timeout per read")
    fetch_parser.add_argument("--force", action="store_true", help="download again even if the file exists")


def _list() -> int:
    print(f"official Video Swin checkpoints (base URL {BASE_URL}):")
    for entry in CATALOGUE.values():
        aliases = [short for short, full in ALIASES.items() if full == entry.name]
        size = f"{entry.size_bytes:,} bytes" if entry.size_bytes else "size not recorded"
        digest = entry.sha256 or "sha256 not recorded (printed by fetch)"
        print(
            f"  {entry.name}{' (' + ', '.join(aliases) + ')' if aliases else ''}\n"
            f"      {entry.dataset}, {entry.num_classes} classes, top-1 {entry.top1_percent}% "
            f"(pretrained on {entry.pretrain}); model.arch: {entry.preset}, "
            f"model.labels: {entry.labels or 'not packaged (give a file)'}; {size}; {digest}"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    """``vstmon weights list`` / ``vstmon weights fetch NAME``."""
    if args.weights_command == "list":
        return _list()
    if args.weights_command != "fetch":
        print("usage: vstmon weights {list,fetch NAME} (see vstmon weights --help)", file=sys.stderr)
        return 2
    if args.retries < 0:
        raise FetchError(f"--retries must be 0 or more; got {args.retries}")
    entry = resolve_name(args.name)
    result = fetch(
        args.name,
        args.dest,
        base_url=args.base_url,
        sha256=args.sha256,
        force=args.force,
        retries=args.retries,
        retry_delay_s=args.retry_delay_s,
        timeout_s=args.timeout_s,
        progress_stream=sys.stderr,
    )
    check = "verified" if result.verified else "no published digest to compare with: record this one"
    state = "downloaded" if result.downloaded else "already present (--force downloads it again)"
    print(f"{result.path}: {state}; {result.size_bytes} bytes, sha256 {result.sha256} ({check})")
    print(
        f"use it in config.yaml: model: {{arch: {entry.preset}, checkpoint: {result.path}, "
        f"labels: {entry.labels or 'PATH/TO/labels.txt'}}}"
    )
    return 0
