"""``vstmon weights fetch`` against a real HTTP server on 127.0.0.1 serving a small checkpoint made here."""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from vstmon.cli import main
from vstmon.errors import FetchError
from vstmon.model import build_model, load_model
from vstmon.model.fetch import CATALOGUE, download, fetch, resolve_name
from vstmon.model.presets import SwinConfig

torch.set_num_threads(1)

NAME = "swin_tiny_patch244_window877_kinetics400_1k"
FILE_NAME = NAME + ".pth"
FAST = {"retry_delay_s": 0.01, "timeout_s": 5.0}  # tiny delays in tests


def tiny_checkpoint_bytes() -> bytes:
    """A small Video Swin (random weights, fixed seed) saved in the official layout."""
    torch.manual_seed(7)
    cfg = SwinConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), drop_path_rate=0.0)
    buffer = io.BytesIO()
    torch.save(
        {"meta": {"note": "vstmon fetch test"}, "state_dict": build_model(cfg, 5).state_dict()}, buffer
    )
    return buffer.getvalue()


CHECKPOINT = tiny_checkpoint_bytes()
DIGEST = hashlib.sha256(CHECKPOINT).hexdigest()


class _Server(ThreadingHTTPServer):
    """Serves ``files``; behaviour knobs set by each test."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {f"/{FILE_NAME}": CHECKPOINT}
        self.requests: list[tuple[str, str | None]] = []
        self.honour_range = True
        self.drops_left = 0  # responses cut off half way through the body
        self.corrupt = False
        self.hang = False  # accept, then never answer (until released)
        self.release = threading.Event()
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        srv = self.server
        with srv.lock:
            srv.requests.append((self.path, self.headers.get("Range")))
            drop = srv.drops_left > 0
            srv.drops_left -= int(drop)
        if srv.hang:
            srv.release.wait(30)
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        if srv.corrupt:
            data = data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:]
        start = 0
        requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if requested and srv.honour_range:
            start = int(requested.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if drop:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, name="http-test")
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- downloads ---------------------------------------------------------------------------------------------------
def test_download_verifies_sha256_and_the_file_loads(tmp_path: Path, server: _Server) -> None:
    result = fetch(NAME, tmp_path, base_url=server.base_url, sha256=DIGEST, **FAST)
    assert result.path == tmp_path / FILE_NAME
    assert result.verified and result.sha256 == DIGEST and result.size_bytes == len(CHECKPOINT)
    assert result.path.read_bytes() == CHECKPOINT
    assert files_in(tmp_path) == [FILE_NAME]  # no .part left
    model = load_model(result.path)
    assert model.config.embed_dim == 16 and model.config.num_classes == 5


def test_download_without_a_known_digest_reports_it(tmp_path: Path, server: _Server) -> None:
    result = download(server.base_url + FILE_NAME, tmp_path / "x.pth", **FAST)
    assert not result.verified
    assert result.sha256 == DIGEST


def test_corrupted_download_is_deleted_and_names_both_digests(tmp_path: Path, server: _Server) -> None:
    server.corrupt = True
    with pytest.raises(FetchError) as info:
        fetch(NAME, tmp_path, base_url=server.base_url, sha256=DIGEST, **FAST)
    message = str(info.value)
    assert "SHA-256 mismatch" in message and DIGEST in message
    bad = hashlib.sha256(CHECKPOINT[:1000] + bytes([CHECKPOINT[1000] ^ 0xFF]) + CHECKPOINT[1001:]).hexdigest()
    assert bad in message
    assert files_in(tmp_path) == []  # neither the final file nor the .part


def test_dropped_connection_resumes_with_range(tmp_path: Path, server: _Server) -> None:
    server.drops_left = 2
    result = fetch(NAME, tmp_path, base_url=server.base_url, sha256=DIGEST, retries=3, **FAST)
    assert result.path.read_bytes() == CHECKPOINT
    ranges = [rng for _, rng in server.requests]
    assert ranges[0] is None
    half = len(CHECKPOINT) // 2
    assert ranges[1] == f"bytes={half}-"  # resumed where the first response stopped
    assert ranges[2] == f"bytes={half + (len(CHECKPOINT) - half) // 2}-"
    assert len(ranges) == 3


def test_server_that_ignores_range_restarts_from_zero(tmp_path: Path, server: _Server) -> None:
    server.drops_left = 1
    server.honour_range = False
    result = fetch(NAME, tmp_path, base_url=server.base_url, sha256=DIGEST, retries=2, **FAST)
    assert result.path.read_bytes() == CHECKPOINT
    assert len(server.requests) == 2


def test_partial_file_is_resumed_by_the_next_run(tmp_path: Path, server: _Server) -> None:
    server.drops_left = 100  # every response is cut short
    with pytest.raises(FetchError, match=r"failed after 2 attempt\(s\).*partial file .*\.part is kept"):
        fetch(NAME, tmp_path, base_url=server.base_url, sha256=DIGEST, retries=1, **FAST)
    part = tmp_path / (FILE_NAME + ".part")
    assert 0 < part.stat().st_size < len(CHECKPOINT)
    server.drops_left = 0
    result = fetch(NAME, tmp_path, base_url=server.base_url, sha256=DIGEST, retries=0, **FAST)
    assert result.path.read_bytes() == CHECKPOINT
    half = len(CHECKPOINT) // 2
    received = half + (len(CHECKPOINT) - half) // 2  # two cut-short responses: half, then half of the rest
    assert server.requests[-1][1] == f"bytes={received}-"
    assert not part.exists()


def test_complete_part_file_is_finished_without_downloading_again(tmp_path: Path, server: _Server) -> None:
    (tmp_path / (FILE_NAME + ".part")).write_bytes(CHECKPOINT)
    result = fetch(NAME, tmp_path, base_url=server.base_url, sha256=DIGEST, **FAST)
    assert result.path.read_bytes() == CHECKPOINT
    assert server.requests == [(f"/{FILE_NAME}", f"bytes={len(CHECKPOINT)}-")]  # answered 416, nothing sent


def test_dead_server_gives_a_clear_error_after_bounded_retries(tmp_path: Path, server: _Server) -> None:
    url = server.base_url
    server.shutdown()
    server.server_close()  # nothing listens on the port any more
    says: list[str] = []
    with pytest.raises(FetchError, match=r"failed after 3 attempt\(s\): cannot connect"):
        fetch(NAME, tmp_path, base_url=url, retries=2, say=says.append, **FAST)
    assert len(says) == 2 and all("retrying in" in s for s in says)
    assert files_in(tmp_path) == []


def test_stalled_server_times_out(tmp_path: Path, server: _Server) -> None:
    server.hang = True
    with pytest.raises(FetchError, match=r"failed after 2 attempt\(s\)"):
        fetch(NAME, tmp_path, base_url=server.base_url, retries=1, retry_delay_s=0.01, timeout_s=0.3)
    assert len(server.requests) == 2


def test_not_found_is_not_retried(tmp_path: Path, server: _Server) -> None:
    server.files.clear()
    with pytest.raises(FetchError, match=r"HTTP 404") as info:
        fetch(NAME, tmp_path, base_url=server.base_url, retries=3, **FAST)
    assert FILE_NAME in str(info.value)
    assert len(server.requests) == 1
    assert files_in(tmp_path) == []


def test_existing_file_is_checked_not_downloaded_again(tmp_path: Path, server: _Server) -> None:
    (tmp_path / FILE_NAME).write_bytes(CHECKPOINT)
    result = fetch(NAME, tmp_path, base_url=server.base_url, sha256=DIGEST, **FAST)
    assert not result.downloaded and result.verified
    assert server.requests == []
    with pytest.raises(FetchError, match="already exists but its SHA-256"):
        fetch(NAME, tmp_path, base_url=server.base_url, sha256="0" * 64, **FAST)


def test_bad_digest_argument(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="not a SHA-256 hex digest"):
        download("http://127.0.0.1:9/x.pth", tmp_path / "x.pth", sha256="abc")


# -- catalogue ---------------------------------------------------------------------------------------------------
def test_catalogue_names_and_aliases() -> None:
    assert len(CATALOGUE) == 6
    assert resolve_name("swin_t").file_name == FILE_NAME
    assert resolve_name(FILE_NAME).preset == "swin_t"
    assert resolve_name("swin_b_sthv2").labels == "sthv2"
    with pytest.raises(FetchError, match="unknown checkpoint 'swin_huge'"):
        resolve_name("swin_huge")


# -- the CLI -----------------------------------------------------------------------------------------------------
def test_cli_fetch_end_to_end(tmp_path: Path, server: _Server, capsys: pytest.CaptureFixture[str]) -> None:
    server.drops_left = 1
    argv = ["weights", "fetch", "swin_t", "--dest", str(tmp_path), "--base-url", server.base_url]
    argv += ["--sha256", DIGEST, "--retries", "2", "--retry-delay-s", "0.01"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert f"{len(CHECKPOINT)} bytes, sha256 {DIGEST} (verified)" in out.out
    assert "retrying" in out.err
    model = load_model(tmp_path / FILE_NAME, arch="auto")
    assert model.checkpoint_id == f"{NAME}@{DIGEST[:12]}"


def test_cli_fetch_error_is_one_line(
    tmp_path: Path, server: _Server, capsys: pytest.CaptureFixture[str]
) -> None:
    server.files.clear()
    argv = ["weights", "fetch", "swin_t", "--dest", str(tmp_path), "--base-url", server.base_url]
    assert main([*argv, "--retry-delay-s", "0.01"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vstmon: error:") and "HTTP 404" in err
    assert "Traceback" not in err


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for entry in CATALOGUE.values():
        assert entry.name in out
    assert "78.8%" in out and "69.6%" in out
