"""``vstmon classify``: a real generated video, a tiny real checkpoint, the timeline checked against the model."""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest
import torch
import yaml

from tests.helpers.cli import REPO_ROOT
from tests.helpers.daemon import tiny_checkpoint
from tests.helpers.footage import lossless_from
from tests.helpers.videos import make_not_a_video, make_video, video_frames
from vstmon.cli import main
from vstmon.ingest.fit import fit_frame
from vstmon.model.normalize import normalize_clips
from vstmon.offline.annotate import (
    RESET_BGR,
    UNTRAINED_HEADING,
    UNTRAINED_SUFFIX,
    Marks,
    draw_timeline,
    timeline_heading,
    write_annotated_video,
)

if TYPE_CHECKING:
    from vstmon.model import SwinConfig


torch.set_num_threads(1)
cv2.setNumThreads(1)

FPS, N_FRAMES, CLASSES = 25, 60, 6
FRAMES, INTERVAL, SIZE, HOP_S = 8, 2, 64, 0.5


def _tiny_config() -> SwinConfig:
    from vstmon.model import SwinConfig

    return SwinConfig(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), num_classes=CLASSES)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vstmon.model import build_model

    root = tmp_path_factory.mktemp("classify")
    torch.manual_seed(0)
    model = build_model(_tiny_config())
    with torch.no_grad():  # a head with visible preferences, so scores differ between clips
        model.cls_head.fc_cls.weight.normal_(0, 1.0)
    torch.save({"state_dict": model.state_dict()}, root / "tiny.pth")  # the official layout
    (root / "labels.txt").write_text("".join(f"action {i}\n" for i in range(CLASSES)))
    (root / "config.yaml").write_text(
        f"model: {{labels: {root / 'labels.txt'}, device: cpu}}\n"
        f"clip: {{frames: {FRAMES}, frame_interval: {INTERVAL}, size_px: {SIZE}, hop_s: {HOP_S}}}\n"
        "inference: {max_batch: 3, threads: 1}\n"
        "publish: {top_k: 3}\n"
    )
    make_video(root / "video.mp4", N_FRAMES, FPS, size=(96, 64), codec="mp4v")
    return {name: root / name for name in ("tiny.pth", "labels.txt", "config.yaml", "video.mp4")} | {
        "root": root
    }


def _classify_in_process(
    video: Path, model: torch.nn.Module, write_line, *, batch: int, config_text: str = "", **kwargs
):
    """``classify_file`` on ``video`` with the tiny clip settings of this module and ``model``."""
    from vstmon.config import parse_config
    from vstmon.model.bundle import LoadedModel
    from vstmon.offline.classify import classify_file

    config = parse_config(
        yaml.safe_load(
            f"clip: {{frames: {FRAMES}, frame_interval: {INTERVAL}, size_px: {SIZE}, hop_s: {HOP_S}}}\n"
            "publish: {top_k: 3}\n" + config_text
        ),
        require_streams=False,
    )
    loaded = LoadedModel(model.eval(), [f"action {i}" for i in range(CLASSES)], "tiny", False)
    return classify_file(video, config, loaded, write_line, batch=batch, **kwargs)


def _classify(files: dict[str, Path], *extra: str, out_name: str = "timeline.jsonl") -> list[dict]:
    out = files["root"] / out_name
    code = main(
        ["classify", str(files["video.mp4"]), "--config", str(files["config.yaml"]),
         "--checkpoint", str(files["tiny.pth"]), "--out", str(out), *extra]
    )  # fmt: skip
    assert code == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_timeline_has_the_right_clips_and_times(files: dict[str, Path]) -> None:
    lines = _classify(files)
    # span = 7 * 2 + 1 = 15 frames -> first clip ends at frame 14 (0.56 s); then every 0.5 s: 1.06, 1.56, 2.06
    assert [line["last_frame"] for line in lines] == [14, 27, 39, 52]
    assert [line["first_frame"] for line in lines] == [0, 13, 25, 38]
    assert [line["end_s"] for line in lines] == pytest.approx([0.56, 1.08, 1.56, 2.08])
    assert [line["start_s"] for line in lines] == pytest.approx([0.0, 0.52, 1.0, 1.52])
    assert [line["clip"] for line in lines] == [0, 1, 2, 3]
    for line in lines:
        assert line["frames"] == FRAMES and len(line["top"]) == 3 and "untrained" not in line
        scores = [entry["score"] for entry in line["top"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
        assert all(entry["label"] == f"action {entry['index']}" for entry in line["top"])


def _direct_probs(model: torch.nn.Module, video: Path, lines: list[dict]) -> np.ndarray:
    """Softmax of ``model`` run directly on the clips the timeline ``lines`` name, decoded here: (N, classes)."""
    decoded = [fit_frame(frame, SIZE) for _, frame, _ in video_frames(video)]
    assert len(decoded) == N_FRAMES
    clips = np.stack(
        [np.stack(decoded[line["first_frame"] : line["last_frame"] + 1 : INTERVAL]) for line in lines]
    )  # (N, T, H, W, 3)
    assert clips.shape == (len(lines), FRAMES, SIZE, SIZE, 3)
    with torch.inference_mode():
        return torch.softmax(model(normalize_clips(torch.from_numpy(clips))), dim=-1).numpy()


def _scores(lines: list[dict], classes: int = CLASSES) -> np.ndarray:
    """The timeline's scores as a dense (N, classes) table (0 where a class is not in a line's top)."""
    table = np.zeros((len(lines), classes))
    for row, line in zip(table, lines, strict=True):
        for entry in line["top"]:
            row[entry["index"]] = entry["score"]
    return table


def test_scores_equal_the_model_run_directly_on_the_same_clips(files: dict[str, Path]) -> None:
    from vstmon.model import build_model

    lines = _classify(files, "--top-k", str(CLASSES))
    model = build_model(_tiny_config())
    state = torch.load(files["tiny.pth"], weights_only=True)["state_dict"]
    model.load_state_dict(state, strict=False)  # buffers that are recomputed may be absent
    probs = _direct_probs(model, files["video.mp4"], lines)
    np.testing.assert_allclose(_scores(lines), probs, atol=1e-5, rtol=0)
    assert not np.allclose(probs[0], probs[-1], atol=1e-4)  # the clips really differ


def test_bf16_precision_runs_under_autocast_close_to_fp32(files: dict[str, Path]) -> None:
    fp32 = _scores(_classify(files, "--top-k", str(CLASSES), "--precision", "fp32", out_name="fp32.jsonl"))
    bf16 = _scores(_classify(files, "--top-k", str(CLASSES), "--precision", "bf16", out_name="bf16.jsonl"))
    assert fp32.shape == bf16.shape
    np.testing.assert_allclose(bf16, fp32, atol=0.05, rtol=0)  # bf16 keeps ~3 significant digits
    assert not np.array_equal(bf16, fp32)  # the forward really ran in bf16


def test_hop_and_batch_flags_override_the_config(files: dict[str, Path]) -> None:
    lines = _classify(files, "--hop-s", "1.0", "--batch", "1", "--top-k", "1", out_name="hop1.jsonl")
    assert [line["last_frame"] for line in lines] == [14, 39]  # 0.56 s, then 1.56 s
    assert all(len(line["top"]) == 1 for line in lines)


def test_ring_memory_does_not_depend_on_the_video_length(files: dict[str, Path]) -> None:
    from vstmon.model import build_model

    model = build_model(_tiny_config())
    long_video = make_video(files["root"] / "long.mp4", 4 * N_FRAMES, FPS, size=(96, 64))
    results = [
        _classify_in_process(path, model, lambda _line: None, batch=2)
        for path in (files["video.mp4"], long_video)
    ]
    assert results[0].clips == 4 and results[1].clips == 1 + int((239 / FPS - 0.56) / HOP_S + 1e-6)
    assert results[0].ring_nbytes == results[1].ring_nbytes
    assert results[0].frames_read == N_FRAMES and results[1].frames_read == 4 * N_FRAMES


def test_untrained_model_is_flagged(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    short = make_video(files["root"] / "short.mp4", 16, FPS, size=(64, 64))
    out = files["root"] / "untrained.jsonl"
    code = main(
        ["classify", str(short), "--config", str(files["config.yaml"]), "--arch", "swin_t",
         "--labels", "kinetics400", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert "UNTRAINED" in capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["untrained"] is True and len(lines[0]["top"]) == 3


def test_missing_video_is_a_clear_error(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    missing = files["root"] / "nope.mp4"
    code = main(
        [
            "classify",
            str(missing),
            "--config",
            str(files["config.yaml"]),
            "--checkpoint",
            str(files["tiny.pth"]),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and str(missing) in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["not_a_video", "directory", "empty"])
def test_unreadable_inputs_are_clear_errors(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    root = files["root"]
    if kind == "not_a_video":
        path = make_not_a_video(root / "fake.mp4")
    elif kind == "directory":
        path = root / "adir.mp4"
        path.mkdir(exist_ok=True)
    else:
        path = root / "empty.mp4"
        path.write_bytes(b"")
    code = main(
        ["classify", str(path), "--config", str(files["config.yaml"]), "--checkpoint", str(files["tiny.pth"])]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err


# -- the same model as the daemon; reproducible untrained weights ------------------------------------------------
def test_a_null_checkpoint_with_arch_auto_runs_the_daemons_untrained_model(files: dict[str, Path]) -> None:
    """The fixture's config has ``checkpoint: null`` and ``arch: auto``, which the daemon runs as swin_t."""
    from vstmon.config import load_config
    from vstmon.model import load_model_and_labels

    out = files["root"] / "auto.jsonl"
    code = main(["classify", str(files["video.mp4"]), "--config", str(files["config.yaml"]), "--out", str(out),
                 "--top-k", str(CLASSES)])  # fmt: skip
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 and all(line["untrained"] is True for line in lines)
    daemon = load_model_and_labels(load_config(files["config.yaml"], require_streams=False), warn=False)
    assert daemon.model_id == "untrained:swin_t" and len(daemon.labels) == CLASSES
    probs = _direct_probs(daemon.model, files["video.mp4"], lines)
    np.testing.assert_allclose(_scores(lines), probs, atol=1e-5, rtol=0)


def _vstmon(
    *args: str, cwd: Path, stderr: int | None = subprocess.PIPE, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m vstmon ARGS`` as a user runs it. OpenCV/FFmpeg settings this test process made (importing
    vstmon sets some in os.environ) are not passed on: the child must make its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    env |= {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vstmon", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=stderr, text=True, timeout=timeout_s, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def untrained_runs(files: dict[str, Path]) -> list[tuple[subprocess.CompletedProcess[str], str]]:
    """Two ``vstmon classify`` processes on the same file, untrained weights: (process, timeline text) each."""
    runs = []
    for i in range(2):
        out = files["root"] / f"untrained_run{i}.jsonl"
        done = _vstmon("classify", str(files["video.mp4"]), "--config", str(files["config.yaml"]),
                       "--arch", "swin_t", "--labels", "kinetics400", "--out", str(out), cwd=files["root"])  # fmt: skip
        assert done.returncode == 0, done.stderr
        runs.append((done, out.read_text()))
    return runs


def test_two_untrained_runs_write_identical_lines(untrained_runs: list) -> None:
    (_, first), (_, second) = untrained_runs
    lines = first.splitlines()
    assert len(lines) == 4 and all(json.loads(line)["untrained"] is True for line in lines)
    assert second == first


def test_the_untrained_warning_is_printed_once(untrained_runs: list) -> None:
    for done, _ in untrained_runs:
        warnings = [line for line in done.stderr.splitlines() if "UNTRAINED" in line]
        assert len(warnings) == 1, done.stderr


def test_no_progress_bar_when_stderr_is_not_a_terminal(untrained_runs: list) -> None:
    for done, _ in untrained_runs:
        assert "\r" not in done.stderr and "frame/s" not in done.stderr


# -- the input is checked first; the output is never partial -----------------------------------------------------
def test_the_video_is_checked_before_the_model_loads(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    video = make_not_a_video(files["root"] / "junk.mp4")
    junk_checkpoint = files["root"] / "junk.pth"
    junk_checkpoint.write_bytes(b"not a checkpoint" * 64)  # loading it would fail with its own error
    code = main(["classify", str(video), "--config", str(files["config.yaml"]),
                 "--checkpoint", str(junk_checkpoint)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert str(video) in err and str(junk_checkpoint) not in err


def _part_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.part"))


def test_a_failed_run_leaves_no_out_file(files: dict[str, Path]) -> None:
    video = make_not_a_video(files["root"] / "junk2.mp4")
    out = files["root"] / "never.jsonl"
    code = main(["classify", str(video), "--config", str(files["config.yaml"]), "--checkpoint",
                 str(files["tiny.pth"]), "--out", str(out)])  # fmt: skip
    assert code == 2
    assert not out.exists() and _part_files(files["root"]) == []


def test_a_run_failing_after_the_output_opened_keeps_the_previous_out_file(files: dict[str, Path]) -> None:
    bad_labels = files["root"] / "three_labels.txt"
    bad_labels.write_text("a\nb\nc\n")  # the checkpoint has 6 classes: fails after the video and output open
    out = files["root"] / "previous.jsonl"
    out.write_text('{"clip": 0}\n')
    code = main(["classify", str(files["video.mp4"]), "--config", str(files["config.yaml"]), "--checkpoint",
                 str(files["tiny.pth"]), "--labels", str(bad_labels), "--out", str(out)])  # fmt: skip
    assert code != 0
    assert out.read_text() == '{"clip": 0}\n' and _part_files(files["root"]) == []


def test_each_line_is_in_the_file_when_its_batch_is_done_and_the_target_appears_at_the_end(
    files: dict[str, Path],
) -> None:
    from vstmon.model import build_model
    from vstmon.offline.classify import TimelineOutput

    class SeesTheFile(torch.nn.Module):
        """The real model; before each forward pass it reads what a second reader of the output sees."""

        def __init__(self, model: torch.nn.Module, output: TimelineOutput) -> None:
            super().__init__()
            self.model, self.output, self.seen = model, output, []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert self.output.part is not None and not out.exists()
            self.seen.append(len(self.output.part.read_text().splitlines()))
            return self.model(x)

    out = files["root"] / "streamed.jsonl"
    with TimelineOutput(out) as output:
        model = SeesTheFile(build_model(_tiny_config()), output)
        _classify_in_process(files["video.mp4"], model, output.write_line, batch=1)
        output.commit()
    assert model.seen == [0, 1, 2, 3]
    assert len(out.read_text().splitlines()) == 4 and _part_files(files["root"]) == []


def test_a_reader_that_closes_stdout_early_stops_the_run_without_a_traceback(files: dict[str, Path]) -> None:
    video = make_video(files["root"] / "ten_s_for_head.mp4", 250, FPS, size=(96, 64))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    # 19 lines of 400 labels (~18 KB each) do not fit in a pipe: the run is still writing when the reader leaves
    proc = subprocess.Popen(
        [sys.executable, "-m", "vstmon", "classify", str(video), "--config", str(files["config.yaml"]),
         "--arch", "swin_t", "--labels", "kinetics400", "--top-k", "400"],
        cwd=files["root"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = json.loads(proc.stdout.readline())  # like `| head -1`
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(120) == 128 + 13, err  # as if ended by SIGPIPE
    assert first["clip"] == 0 and "Traceback" not in err and "BrokenPipe" not in err


# -- batch size ------------------------------------------------------------------------------------------------
def test_batch_defaults_to_one_on_a_cpu_and_to_max_batch_on_cuda(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from vstmon.offline.classify import default_batch

    assert default_batch(torch.device("cpu"), 8) == 1
    assert default_batch(torch.device("cuda:0"), 8) == 8
    capsys.readouterr()
    _classify(files, out_name="default_batch.jsonl")  # the config says inference.max_batch: 3
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    (classified,) = [e for e in events if e.get("event") == "classified"]
    assert classified["batch"] == 1 and classified["clips"] == 4


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--arch", "swin_x"], "--arch"), (["--device", "gpu7"], "--device"), (["--batch", "0"], "--batch")],
)
def test_bad_flags_are_one_line_errors(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    code = main(["classify", str(files["video.mp4"]), "--config", str(files["config.yaml"]), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and named in err and "Traceback" not in err


# -- what reaches the terminal -----------------------------------------------------------------------------------
_FFMPEG_LINE = re.compile(r"^\[[\w,]+ @ 0x[0-9a-f]+\]|\[ ?(WARN|ERROR|INFO):", re.MULTILINE)


def _corrupt_h264(folder: Path) -> Path:
    """An H.264 mp4 with garbage in the middle of its frame data: it opens, and FFmpeg warns while decoding."""
    data = bytearray(
        make_video(folder / "clean_h264.mp4", 100, FPS, size=(96, 64), codec="h264").read_bytes()
    )
    mdat = data.index(b"mdat")
    start = mdat + (len(data) - mdat) // 3
    data[start : start + 2000] = bytes(range(256)) * 7 + bytes(208)
    path = folder / "corrupt_h264.mp4"
    path.write_bytes(bytes(data))
    return path


def test_ffmpeg_warnings_do_not_reach_the_terminal(files: dict[str, Path]) -> None:
    video = _corrupt_h264(files["root"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    plain = subprocess.run(  # the file really makes FFmpeg warn when nothing quiets it
        [sys.executable, "-c", "import cv2, sys\ncap = cv2.VideoCapture(sys.argv[1])\nwhile cap.read()[0]: pass",
         str(video)], env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert _FFMPEG_LINE.search(plain.stderr), plain.stderr
    out = files["root"] / "corrupt.jsonl"
    done = _vstmon("classify", str(video), "--config", str(files["config.yaml"]), "--checkpoint",
                   str(files["tiny.pth"]), "--out", str(out), cwd=files["root"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_text().count("\n") >= 1
    assert not _FFMPEG_LINE.search(done.stderr), done.stderr


def test_a_truncated_video_is_one_error_line(files: dict[str, Path]) -> None:
    clean = make_video(files["root"] / "whole_h264.mp4", 100, FPS, size=(96, 64), codec="h264")
    cut = files["root"] / "cut_h264.mp4"
    cut.write_bytes(clean.read_bytes()[: clean.stat().st_size // 2])  # the index (moov) at the end is gone
    done = _vstmon("classify", str(cut), "--config", str(files["config.yaml"]), "--checkpoint",
                   str(files["tiny.pth"]), "--out", str(files["root"] / "cut.jsonl"), cwd=files["root"])  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"vstmon: error: {cut} is not a video OpenCV/FFmpeg can open"]
    assert not (files["root"] / "cut.jsonl").exists()


def test_progress_bar_on_a_terminal_shows_rate_and_eta(files: dict[str, Path]) -> None:
    video = make_video(files["root"] / "ten_s.mp4", 250, FPS, size=(96, 64))
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vstmon", "classify", str(video), "--config", str(files["config.yaml"]),
         "--checkpoint", str(files["tiny.pth"]), "--out", str(files["root"] / "tty.jsonl")],
        cwd=files["root"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=secondary,
    )  # fmt: skip
    os.close(secondary)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(60) == 0
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
    screen = b"".join(chunks).decode(errors="replace")
    assert "250/250" in screen and "100%" in screen
    assert re.search(r"\d+(\.\d+)?frame/s", screen), screen  # a rate...
    assert re.search(r"<\d\d:\d\d", screen), screen  # ...and the time remaining
    assert "19 clips" in screen  # 1 + (9.96 s - 0.56 s) / 0.5 s


# -- per-subject mode: one timeline per tracked person ------------------------------------------------------------
# A vtest.avi excerpt (a fixed camera over a walkway, several people at once) at half size, losslessly re-encoded so
# that decoding it here gives exactly the pictures classify saw; 8-frame 64 px clips of the tiny daemon-test model.
SUBJECT_FRAMES, SUBJECT_HOP_S, WALK_FRAMES = 8, 0.5, 100
_SUBJECT_ID = re.compile(r"^walkway-\d+$")


@pytest.fixture(scope="module")
def subject_files(
    tmp_path_factory: pytest.TempPathFactory, vtest_avi: Path, pedestrian_pb: Path
) -> dict[str, Path]:
    """The walkway excerpt, the tiny checkpoint, and configs: ``config.yaml`` (whole-frame mode, no detector, the
    subjects' timing set), ``per_subject.yaml`` (mode per_subject with the detector), ``frame_detector.yaml``
    (the detector set, mode frame)."""
    root = tmp_path_factory.mktemp("subjects")
    checkpoint, labels = tiny_checkpoint(root)
    walkway = lossless_from(vtest_avi, root / "walkway.avi", [range(WALK_FRAMES)])
    common = (
        f"model: {{checkpoint: {checkpoint}, labels: {labels}, device: cpu}}\n"
        f"clip: {{frames: {SUBJECT_FRAMES}, frame_interval: 1, size_px: {SIZE}, hop_s: {SUBJECT_HOP_S}}}\n"
        "inference: {max_batch: 3, threads: 1}\n"
        "publish: {top_k: 3}\n"
    )
    timing = "detect_fps: 5, confirm_s: 0.5, max_subjects: 3"
    (root / "config.yaml").write_text(common + f"subjects: {{{timing}}}\n")
    (root / "per_subject.yaml").write_text(
        common + f"subjects: {{detector: {pedestrian_pb}, mode: per_subject, {timing}}}\n"
    )
    (root / "frame_detector.yaml").write_text(common + f"subjects: {{detector: {pedestrian_pb}, {timing}}}\n")
    return {"root": root, "walkway": walkway, "checkpoint": checkpoint, "detector": pedestrian_pb} | {
        name: root / name for name in ("config.yaml", "per_subject.yaml", "frame_detector.yaml")
    }


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_box(box: list[float]) -> None:
    assert len(box) == 4 and all(round(v, 4) == v for v in box), box
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, box


def test_people_on_a_walkway_get_clips_of_their_own_from_the_cli(subject_files: dict[str, Path]) -> None:
    out = subject_files["root"] / "walkway_cli.jsonl"
    done = _vstmon("classify", str(subject_files["walkway"]), "--config", str(subject_files["config.yaml"]),
                   "--subjects", "--detector", str(subject_files["detector"]), "--out", str(out),
                   cwd=subject_files["root"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = _lines(out)
    assert [line["clip"] for line in lines] == list(range(len(lines)))
    by_subject: dict[str, list[dict]] = {}
    for line in lines:
        assert _SUBJECT_ID.match(line["subject"]), line["subject"]
        _check_box(line["box"])
        assert (
            line["frames"] == SUBJECT_FRAMES
            and line["last_frame"] - line["first_frame"] == SUBJECT_FRAMES - 1
        )
        assert len(line["top"]) == 3 and "untrained" not in line
        by_subject.setdefault(line["subject"], []).append(line)
    assert len(by_subject) >= 3, sorted(by_subject)
    for subject, own in by_subject.items():  # each person's clips go forward in time, one hop apart at least
        ends = [line["end_s"] for line in own]
        assert all(b - a >= SUBJECT_HOP_S - 1e-6 for a, b in itertools.pairwise(ends)), (
            subject,
            ends,
        )
    # several people at the same time: clips of different people overlap
    spans = {s: (own[0]["first_frame"], own[-1]["last_frame"]) for s, own in by_subject.items()}
    assert any(
        a != b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1] for a in spans for b in spans
    )
    # lines come in the order their clips complete
    assert [line["last_frame"] for line in lines] == sorted(line["last_frame"] for line in lines)
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (classified,) = [e for e in events if e.get("event") == "classified"]
    assert classified["clips"] == len(lines) and classified["subjects"] >= len(by_subject)


def test_carphone_has_one_subject_in_per_subject_mode_from_the_config(
    subject_files: dict[str, Path], carphone_mp4: Path
) -> None:
    out = subject_files["root"] / "carphone.jsonl"
    done = _vstmon("classify", str(carphone_mp4), "--config", str(subject_files["per_subject.yaml"]),
                   "--out", str(out), cwd=subject_files["root"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = _lines(out)
    assert len(lines) >= 5  # 4 s of video, a clip every 0.5 s once he counts
    assert {line["subject"] for line in lines} == {lines[0]["subject"]}
    assert re.match(r"^carphone_pristine-\d+$", lines[0]["subject"])
    for line in lines:
        _check_box(line["box"])
        x0, y0, x1, y1 = line["box"]
        assert (x1 - x0) * (y1 - y0) > 0.3  # a close-up: he fills most of the frame


def _decoded(video: Path) -> list[np.ndarray]:
    return [frame for _, frame, _ in video_frames(video)]


def test_a_subject_clip_scores_equal_the_model_alone_on_that_subjects_crops(
    subject_files: dict[str, Path],
) -> None:
    from vstmon.config import load_config
    from vstmon.ingest.crops import CropFitter, square_crop_px
    from vstmon.model import load_model_and_labels
    from vstmon.offline.classify import classify_file

    config = load_config(subject_files["per_subject.yaml"], require_streams=False)
    loaded = load_model_and_labels(config, warn=False)
    classes = len(loaded.labels)
    crops: dict[tuple[str, int], tuple[float, float, float, float]] = {}  # (subject, frame index) -> box

    def on_crop(subject: str, index: int, box: tuple[float, float, float, float]) -> None:
        assert (subject, index) not in crops  # one crop per person and frame
        crops[subject, index] = box

    written: list[str] = []
    config = config.model_copy(update={"publish": config.publish.model_copy(update={"top_k": classes})})
    result = classify_file(subject_files["walkway"], config, loaded, written.append, batch=3, on_crop=on_crop)
    lines = [json.loads(line) for line in written]
    subjects = {line["subject"] for line in lines}
    assert result.clips == len(lines) and result.subjects >= len(subjects) > config.subjects.max_subjects
    # more people than slots: a slot passed from one person to another, and batches mixed people
    assert any(len({line["subject"] for line in lines[i : i + 3]}) > 1 for i in range(0, len(lines), 3))
    decoded = _decoded(subject_files["walkway"])
    assert len(decoded) == WALK_FRAMES
    height_px, width_px = decoded[0].shape[:2]
    fitter = CropFitter(SIZE)
    clip = np.empty((SUBJECT_FRAMES, SIZE, SIZE, 3), np.uint8)  # (T, H, W, 3)
    alone = []
    for line in lines:
        subject = line["subject"]
        indices = range(line["first_frame"], line["last_frame"] + 1)
        for j, index in enumerate(indices):  # every frame of the clip is a crop of this person
            box = crops[subject, index]
            fitter.fit(
                decoded[index], square_crop_px(box, width_px, height_px, config.subjects.crop_margin), clip[j]
            )
        np.testing.assert_allclose(line["box"], crops[subject, line["last_frame"]], atol=5e-5)
        with torch.inference_mode():
            x = normalize_clips(torch.from_numpy(clip[None]))  # (1, 3, T, H, W)
            alone.append(torch.softmax(loaded.model(x), dim=-1)[0].numpy())
    probs = np.stack(alone)  # (N, classes)
    np.testing.assert_allclose(_scores(lines, classes), probs, atol=1e-5, rtol=0)
    assert np.abs(probs - probs.mean(axis=0)).max() > 1e-4  # the clips really differ


def test_subjects_without_a_detector_is_one_config_error_line(subject_files: dict[str, Path]) -> None:
    out = subject_files["root"] / "never_subjects.jsonl"
    done = _vstmon("classify", str(subject_files["walkway"]), "--config", str(subject_files["config.yaml"]),
                   "--subjects", "--out", str(out), cwd=subject_files["root"])  # fmt: skip
    assert done.returncode == 78, done.stderr
    assert done.stderr.splitlines() == [
        "vstmon: error: --subjects needs a person detector: give --detector PATH or set subjects.detector in the "
        "config (`vstmon weights fetch ssdlite_mobilenet_v2_pedestrian` downloads one)"
    ]
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--subjects", "--detector", "missing.pb"], 78, "--detector: missing.pb does not exist"),
        (["--detector", "missing.pb"], 2, "--detector is only used in per-subject mode: add --subjects"),
    ],
)
def test_a_detector_flag_that_cannot_be_used_is_one_error_line(
    subject_files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    code: int,
    message: str,
) -> None:
    out = subject_files["root"] / "never_detector.jsonl"
    argv = [
        "classify",
        str(subject_files["walkway"]),
        "--config",
        str(subject_files["config.yaml"]),
        "--out",
        str(out),
    ]
    assert main([*argv, *flags]) == code
    assert capsys.readouterr().err.splitlines() == [f"vstmon: error: {message}"]
    assert not out.exists()


def test_a_per_subject_config_without_a_detector_names_the_keys(
    subject_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = subject_files["root"] / "per_subject_no_detector.yaml"
    config.write_text(
        subject_files["config.yaml"].read_text().replace("subjects: {", "subjects: {mode: per_subject, ")
    )
    code = main(["classify", str(subject_files["walkway"]), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 78
    assert err.splitlines() == [
        f"vstmon: error: {config}: subjects.mode is per_subject but subjects.detector is null: set it or give "
        "--detector PATH (`vstmon weights fetch ssdlite_mobilenet_v2_pedestrian` downloads one)"
    ]


def test_whole_frame_mode_tracks_the_subject_as_the_daemon_does(subject_files: dict[str, Path]) -> None:
    out = subject_files["root"] / "walkway_frames.jsonl"
    code = main(["classify", str(subject_files["walkway"]), "--config", str(subject_files["frame_detector.yaml"]),
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    lines = _lines(out)
    # one clip stream for the whole frame; the subject entering starts segment 2 (reset subject_change), as live
    assert all(
        list(line) == ["clip", "subject", "box", "segment", "start_s", "end_s", "first_frame", "last_frame",
                       "frames", "top"]
        for line in lines
    )  # fmt: skip
    assert [line["segment"] for line in lines] == sorted(line["segment"] for line in lines)
    tracked = [line for line in lines if line["subject"] is not None]
    assert tracked and all(line["subject"].startswith("walkway-") for line in tracked)
    for line in tracked:
        _check_box(line["box"])
    first = tracked[0]
    assert first["segment"] >= 2 and first["first_frame"] >= lines[0]["first_frame"]


def test_a_configured_detector_that_is_missing_is_one_config_error_line(
    subject_files: dict[str, Path],
) -> None:
    """As for the daemon: a named detector must be there (`vstmon weights fetch` or subjects.detector: null)."""
    config = yaml.safe_load(subject_files["frame_detector.yaml"].read_text())
    config["subjects"]["detector"] = str(subject_files["root"] / "not_fetched_yet.pb")
    path = subject_files["root"] / "frame_missing_detector.yaml"
    path.write_text(yaml.safe_dump(config))
    out = subject_files["root"] / "walkway_frames_2.jsonl"
    done = _vstmon("classify", str(subject_files["walkway"]), "--config", str(path), "--out", str(out),
                   cwd=subject_files["root"])  # fmt: skip
    assert done.returncode == 78, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "subjects.detector" in done.stderr
    assert "vstmon weights fetch ssdlite_mobilenet_v2_pedestrian" in done.stderr and not out.exists()


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_video_out_is_the_input_with_the_labels_drawn_and_plot_is_a_png_of_the_stated_size(
    files: dict[str, Path],
) -> None:
    video_out, plot = files["root"] / "annotated.mp4", files["root"] / "timeline.png"
    lines = _classify(files, "--video-out", str(video_out), "--plot", str(plot), "--plot-size", "900x300")
    source, drawn = _decoded(files["video.mp4"]), _decoded(video_out)
    assert len(drawn) == len(source) == N_FRAMES
    assert drawn[0].shape == source[0].shape == (64, 96, 3)
    first_label_at = lines[0]["last_frame"]  # nothing is known before the first clip ends
    band = slice(0, 24)  # the label is written along the top
    before = [_mean_abs_diff(d[band], s[band]) for d, s in zip(drawn[:first_label_at], source, strict=False)]
    after = [
        _mean_abs_diff(d[band], s[band])
        for d, s in zip(drawn[first_label_at:], source[first_label_at:], strict=True)
    ]
    assert max(before) < 6 < min(after), (max(before), min(after))  # codec noise vs drawn text
    chart = cv2.imread(str(plot))
    assert chart is not None and chart.shape == (300, 900, 3)
    if os.environ.get("VSTMON_SCREENSHOTS"):  # docs: VSTMON_SCREENSHOTS=docs/images pytest -k video_out
        shutil.copy(plot, Path(os.environ["VSTMON_SCREENSHOTS"]) / "timeline.png")
    assert (chart < 128).any() and (chart.reshape(-1, 3).std(0) > 10).all()  # not blank: text and bands


def test_per_subject_video_out_draws_each_persons_box(
    subject_files: dict[str, Path], carphone_mp4: Path
) -> None:
    video_out = subject_files["root"] / "carphone_annotated.mp4"
    out, plot = subject_files["root"] / "carphone_boxes.jsonl", subject_files["root"] / "carphone.png"
    done = _vstmon("classify", str(carphone_mp4), "--config", str(subject_files["per_subject.yaml"]),
                   "--out", str(out), "--video-out", str(video_out), "--plot", str(plot),
                   cwd=subject_files["root"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = _lines(out)
    source, drawn = _decoded(carphone_mp4), _decoded(video_out)
    assert len(drawn) == len(source) and drawn[0].shape == source[0].shape
    frame = lines[1]["last_frame"]  # a frame where the subject's box is shown: its left edge is drawn
    height, width = source[0].shape[:2]
    x0, y0, _, y1 = lines[1]["box"]
    edge = (
        slice(int(y0 * height) + 2, int(y1 * height) - 2),
        slice(max(0, int(x0 * width) - 1), int(x0 * width) + 2),
    )
    assert _mean_abs_diff(drawn[frame][edge], source[frame][edge]) > 20
    chart = cv2.imread(str(plot))  # the subject's first clip is marked as a segment start (a red line)
    red = (np.abs(chart.astype(int) - (40, 40, 220)).sum(axis=2) < 30).sum(axis=0)
    assert red.max() >= 20


# -- pictures: where the subject lines land; an untrained model says so ------------------------------------------
def _timeline_lines(starts: dict[str, float], end_s: float, untrained: bool = False) -> list[str]:
    """JSON lines of a per-subject timeline: each subject's clips every second from its start to ``end_s``."""
    lines = []
    for subject, first_s in starts.items():
        t = first_s
        while t + 1.0 <= end_s + 1e-9:
            line = {"clip": len(lines), "subject": subject, "box": [0.1, 0.1, 0.5, 0.9], "start_s": t,
                    "end_s": t + 1.0, "first_frame": int(t * FPS), "last_frame": int((t + 1.0) * FPS) - 1,
                    "frames": FRAMES, "top": [{"label": f"action {len(lines) % 3}", "index": 0, "score": 0.8}]}  # fmt: skip
            if untrained:
                line["untrained"] = True
            lines.append(json.dumps(line))
            t += 1.0
    return lines


def _marks(lines: list[str]) -> Marks:
    marks = Marks()
    for line in lines:
        marks.add_line(line)
    return marks


def _axis(chart: np.ndarray) -> tuple[int, int, int]:
    """(row, first column, last column) of the time axis: the longest black horizontal run of the chart."""
    black = (chart.max(axis=2) < 40).astype(np.int8)  # (H, W)
    row = int(black.sum(axis=1).argmax())
    columns = np.flatnonzero(black[row])
    return row, int(columns[0]), int(columns[-1])


def test_each_subject_line_is_drawn_at_that_subjects_first_clip_and_the_axis_has_its_ticks(
    tmp_path: Path,
) -> None:
    starts = {"walkway-1": 0.0, "walkway-2": 2.5, "walkway-3": 6.0}  # the chart spans 0-10 s
    plot = tmp_path / "subjects.png"
    draw_timeline(_marks(_timeline_lines(starts, 10.0)), plot, (1000, 300))
    chart = cv2.imread(str(plot))
    axis_row, left, right = _axis(chart)
    red = (chart == RESET_BGR).all(axis=2)  # lines are drawn without anti-aliasing: exactly RESET_BGR
    columns = [int(x) for x in np.flatnonzero(red[:axis_row].sum(axis=0) > axis_row // 2)]
    expected = [left + int(first_s / 10.0 * (right - left)) for first_s in starts.values()]
    assert len(columns) == len(expected) and all(
        abs(x - e) <= 1 for x, e in zip(columns, expected, strict=True)
    ), (columns, expected)
    ticks = np.flatnonzero(chart[axis_row + 3].max(axis=1) < 40)  # the tick marks just below the axis
    assert len(ticks) >= 5, ticks  # 0, 2, 4, 6, 8, 10 s: not one tick at the last subject's start


def test_the_chart_of_an_untrained_model_says_so_in_red(tmp_path: Path) -> None:
    starts = {"lobby-1": 0.0}
    trained, untrained = _marks(_timeline_lines(starts, 4.0)), _marks(_timeline_lines(starts, 4.0, True))
    assert timeline_heading(untrained, "lobby.mp4").startswith(UNTRAINED_HEADING)
    assert UNTRAINED_HEADING not in timeline_heading(trained, "lobby.mp4")
    heading_red = []
    for name, marks in (("trained", trained), ("untrained", untrained)):
        draw_timeline(marks, tmp_path / f"{name}.png", (400, 200), "lobby.mp4")
        band = cv2.imread(str(tmp_path / f"{name}.png"))[:30].astype(int)  # the heading's band
        heading_red.append(int(((band[..., 2] - band[..., :2].max(axis=2)) > 100).sum()))
    assert heading_red[0] == 0 and heading_red[1] > 100, heading_red


def _drawn_extent_px(drawn: list[np.ndarray], source: list[np.ndarray], rows: slice) -> int:
    """The rightmost column of ``rows`` where the drawn frames differ from the source (the label's box)."""
    diff = np.mean([np.abs(d[rows].astype(int) - s[rows].astype(int)).mean(axis=(0, 2))
                    for d, s in zip(drawn, source, strict=True)], axis=0)  # fmt: skip
    return int(np.flatnonzero(diff > 30)[-1])


def test_a_video_out_of_an_untrained_model_marks_every_label_as_untrained(files: dict[str, Path]) -> None:
    video = make_video(files["root"] / "wide.mp4", 30, FPS, size=(480, 96))
    lines = [json.dumps({"clip": 0, "start_s": 0.0, "end_s": 0.4, "first_frame": 0, "last_frame": 10,
                         "frames": FRAMES, "top": [{"label": "action 1", "index": 1, "score": 0.5}]})]  # fmt: skip
    untrained_lines = [json.dumps({**json.loads(line), "untrained": True}) for line in lines]
    extents = []
    for name, timeline in (("trained", lines), ("untrained", untrained_lines)):
        out = files["root"] / f"{name}_wide.mp4"
        assert write_annotated_video(video, out, _marks(timeline)) == 30
        extents.append(_drawn_extent_px(_decoded(out)[10:], _decoded(video)[10:], slice(0, 20)))
    suffix_px = cv2.getTextSize(UNTRAINED_SUFFIX, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0]
    assert extents[1] - extents[0] >= 0.8 * suffix_px, (extents, suffix_px)


def test_classify_plots_of_an_untrained_model_say_so(files: dict[str, Path]) -> None:
    plot = files["root"] / "untrained_plot.png"
    code = main(["classify", str(files["video.mp4"]), "--config", str(files["config.yaml"]), "--arch", "swin_t",
                 "--out", str(files["root"] / "untrained_plot.jsonl"), "--plot", str(plot)])  # fmt: skip
    assert code == 0
    band = cv2.imread(str(plot))[:30].astype(int)
    assert ((band[..., 2] - band[..., :2].max(axis=2)) > 100).sum() > 100  # the red heading


# -- the clip shape: flags, then the config's own keys, then the checkpoint's training ---------------------------
TRAINED_CLIP = {"frames": 4, "frame_interval": 3, "size_px": 32}  # what `vstmon train` records in meta.clip


@pytest.fixture(scope="module")
def trained_files(files: dict[str, Path]) -> dict[str, Path]:
    """A checkpoint as `vstmon train` writes it (official layout + meta with the clip shape) and a config that
    sets no clip key."""
    from vstmon.model import build_model

    root = files["root"]
    torch.manual_seed(0)
    state = build_model(_tiny_config()).state_dict()
    torch.save({"state_dict": state, "meta": {"clip": TRAINED_CLIP, "classes": []}}, root / "trained.pth")
    (root / "no_clip.yaml").write_text(
        f"model: {{labels: {files['labels.txt']}, device: cpu}}\ninference: {{threads: 1}}\n"
    )
    return {"trained.pth": root / "trained.pth", "no_clip.yaml": root / "no_clip.yaml"}


def _shape_of(lines: list[dict]) -> tuple[int, int]:
    """(frames, frame interval) of a timeline's clips."""
    first = lines[0]
    return first["frames"], (first["last_frame"] - first["first_frame"]) // (first["frames"] - 1)


def _classify_trained(
    files: dict[str, Path], trained_files: dict[str, Path], config: Path, *extra: str, name: str
) -> list[dict]:
    out = files["root"] / name
    code = main(["classify", str(files["video.mp4"]), "--config", str(config), "--checkpoint",
                 str(trained_files["trained.pth"]), "--out", str(out), *extra])  # fmt: skip
    assert code == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_a_trained_checkpoints_clip_shape_is_used_when_nothing_sets_one(
    files: dict[str, Path], trained_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _classify_trained(files, trained_files, trained_files["no_clip.yaml"], name="as_trained.jsonl")
    assert _shape_of(lines) == (4, 3)
    err = capsys.readouterr().err
    assert "trained on other clips" not in err and "clip shape as the checkpoint was trained" in err


def test_the_configs_own_clip_keys_and_then_the_flags_win_over_the_checkpoint(
    files: dict[str, Path], trained_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = (
        files["root"] / "frames_only.yaml"
    )  # sets clip.frames only: the interval comes from the checkpoint
    config.write_text(trained_files["no_clip.yaml"].read_text() + "clip: {frames: 6}\n")
    assert _shape_of(_classify_trained(files, trained_files, config, name="frames6.jsonl")) == (6, 3)
    assert "clip.frames" in capsys.readouterr().err  # deployed unlike trained: it still says so
    flagged = _classify_trained(files, trained_files, config, "--frames", "5", "--frame-interval", "2",
                                "--size", "64", name="flagged.jsonl")  # fmt: skip
    assert _shape_of(flagged) == (5, 2)
    assert all(line["frames"] == 5 for line in flagged)


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--size", "100"], "--size: size_px must be a multiple of 32"), (["--frames", "1"], "--frames: ")],
)
def test_a_bad_clip_flag_is_one_error_line(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    code = main(["classify", str(files["video.mp4"]), "--config", str(files["config.yaml"]), "--checkpoint",
                 str(files["tiny.pth"]), *flags])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
