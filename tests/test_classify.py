"""``vstmon classify``: a real generated video, a tiny real checkpoint, the timeline checked against the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest
import torch

from tests.videos import make_not_a_video, make_video
from vstmon.cli import main
from vstmon.preprocess import fit_frame, normalize_clips

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


def test_scores_equal_the_model_run_directly_on_the_same_clips(files: dict[str, Path]) -> None:
    from vstmon.model import build_model

    lines = _classify(files, "--top-k", str(CLASSES))
    model = build_model(_tiny_config())
    state = torch.load(files["tiny.pth"], weights_only=True)["state_dict"]
    model.load_state_dict(state, strict=False)  # buffers that are recomputed may be absent
    capture = cv2.VideoCapture(str(files["video.mp4"]))
    decoded = []
    while (frame := capture.read()[1]) is not None:
        decoded.append(fit_frame(frame, SIZE))
    capture.release()
    assert len(decoded) == N_FRAMES
    clips = np.stack(
        [np.stack(decoded[line["first_frame"] : line["last_frame"] + 1 : INTERVAL]) for line in lines]
    )  # (N, T, H, W, 3)
    assert clips.shape == (len(lines), FRAMES, SIZE, SIZE, 3)
    with torch.inference_mode():
        probs = torch.softmax(model(normalize_clips(torch.from_numpy(clips))), dim=-1).numpy()
    for line, expected in zip(lines, probs, strict=True):
        got = np.zeros(CLASSES)
        for entry in line["top"]:
            got[entry["index"]] = entry["score"]
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert not np.allclose(probs[0], probs[-1], atol=1e-4)  # the clips really differ


def test_bf16_precision_runs_under_autocast_close_to_fp32(files: dict[str, Path]) -> None:
    def scores(lines: list[dict]) -> np.ndarray:
        table = np.zeros((len(lines), CLASSES))
        for row, line in zip(table, lines, strict=True):
            for entry in line["top"]:
                row[entry["index"]] = entry["score"]
        return table

    fp32 = scores(_classify(files, "--top-k", str(CLASSES), "--precision", "fp32", out_name="fp32.jsonl"))
    bf16 = scores(_classify(files, "--top-k", str(CLASSES), "--precision", "bf16", out_name="bf16.jsonl"))
    assert fp32.shape == bf16.shape
    np.testing.assert_allclose(bf16, fp32, atol=0.05, rtol=0)  # bf16 keeps ~3 significant digits
    assert not np.array_equal(bf16, fp32)  # the forward really ran in bf16


def test_hop_and_batch_flags_override_the_config(files: dict[str, Path]) -> None:
    lines = _classify(files, "--hop-s", "1.0", "--batch", "1", "--top-k", "1", out_name="hop1.jsonl")
    assert [line["last_frame"] for line in lines] == [14, 39]  # 0.56 s, then 1.56 s
    assert all(len(line["top"]) == 1 for line in lines)


def test_ring_memory_does_not_depend_on_the_video_length(files: dict[str, Path]) -> None:
    from vstmon.classify import classify_video
    from vstmon.model import build_model

    model = build_model(_tiny_config())
    labels = [f"action {i}" for i in range(CLASSES)]
    long_video = make_video(files["root"] / "long.mp4", 4 * N_FRAMES, FPS, size=(96, 64))
    results = [
        classify_video(path, model, labels, lambda _line: None, frames=FRAMES, frame_interval=INTERVAL,
                       size_px=SIZE, hop_s=HOP_S, batch=2)
        for path in (files["video.mp4"], long_video)
    ]  # fmt: skip
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
