"""``vstmon train`` / ``vstmon eval``: real training on CPU on videos the tests make, in bounded time.

The learning data is a random texture drifting left or right: any single frame of one class could belong to the
other, so only motion tells them apart (and random flips, which would swap the classes, are turned off).
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from tests.helpers.cli import run_vstmon, vstmon_env
from vstmon.errors import CheckpointError
from vstmon.model.checkpoint import load_model
from vstmon.train.clips import ClipSpec, EvalClips, TrainClips, eval_offsets
from vstmon.train.config import TrainConfig
from vstmon.train.data import DataError, load_dataset, stratified_split
from vstmon.train.loop import Trainer, build_training_model, lr_factor

DIRECTIONS = {"left": -1, "right": 1}
SMALL = {
    "arch": "swin_t",
    "model": {"embed_dim": 24, "depths": [2, 2], "num_heads": [2, 4], "window_size": [4, 4, 4]},
    "frames": 8,
    "frame_interval": 1,
    "size_px": 32,
    "batch": 4,
    "accumulate": 1,
    "lr": 0.002,
    "warmup_epochs": 1,
    "flip": False,  # left/right would swap
    "min_crop_area": 0.5,
    "drop_path": 0.0,
    "head_dropout": 0.0,
    "val_fraction": 0.25,
    "device": "cpu",
}


def drifting_texture(path: Path, direction: int, seed: int, frames: int = 12) -> Path:
    """An MJPG video of a random texture moving ``direction`` (-1 left, +1 right) by 2-3 px per frame."""
    rng = np.random.default_rng(seed)
    width = 64 + 3 * frames + 4  # room for the drift
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (60, width, 3)).astype(np.float32), (0, 0), 2.5)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    speed = rng.uniform(2, 3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    assert writer.isOpened()
    try:
        for t in range(frames):
            x = int((width - 64) // 2 + direction * speed * (t - frames / 2))
            writer.write(np.ascontiguousarray(texture[6:54, x : x + 64]))
    finally:
        writer.release()
    return path


def make_data(root: Path, per_class: int, frames: int = 12, seed: int = 0) -> Path:
    for name, direction in DIRECTIONS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            drifting_texture(
                root / name / f"{k}.avi", direction, seed * 1000 + k * 2 + (direction > 0), frames
            )
    return root


def train_process(data: Path, out: Path, config: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vstmon.cli",
            "train",
            str(data),
            "--out",
            str(out),
            "--config",
            str(config),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=vstmon_env(),
    )


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# -- learning, and the trained model in classify and eval -----------------------------------------------------
@pytest.mark.slow
def test_learns_motion_direction_and_classify_agrees_with_eval(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", per_class=24)
    config = write_yaml(tmp_path / "train.yaml", {**SMALL, "epochs": 30})
    out = tmp_path / "run"
    done = run_vstmon("train", str(data), "--out", str(out), "--config", str(config), timeout_s=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {
        "best.pth",
        "last.pth",
        "labels.txt",
        "metrics.jsonl",
        "split.json",
        "confusion.txt",
        "confusion.png",
    } <= {p.name for p in out.iterdir()}
    assert (out / "labels.txt").read_text() == "left\nright\n"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(1, 31))
    best = max(m["val_top1"] for m in lines)
    print(f"validation top-1 by epoch: {[m['val_top1'] for m in lines]}")
    assert best >= 0.9  # chance is 0.5
    assert cv2.imread(str(out / "confusion.png")) is not None
    assert "accuracy" in done.stdout and "epoch 30/30" in done.stdout

    # best.pth is an official-layout checkpoint: load_model takes it as is (arch inferred from its tensors)
    model = load_model(out / "best.pth")
    assert model.cls_head.fc_cls.out_features == 2

    # fresh videos exactly one clip long: eval (1 clip x 1 crop) and classify see the same frames
    check = make_data(tmp_path / "check", per_class=3, frames=8, seed=99)
    report_file = tmp_path / "eval.json"
    done = run_vstmon(
        "eval",
        str(check),
        "--checkpoint",
        str(out / "best.pth"),
        "--views",
        "1x1",
        "--json",
        str(report_file),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(report_file.read_text())
    assert report["videos"] == 6 and "top-1" in done.stdout
    classify_config = write_yaml(
        tmp_path / "classify.yaml", {"clip": {"frames": 8, "frame_interval": 1, "size_px": 32}}
    )
    for video in report["videos_detail"]:
        done = run_vstmon(
            "classify", video["path"], "--config", str(classify_config),
            "--checkpoint", str(out / "best.pth"), "--labels", str(out / "labels.txt"), "--device", "cpu",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        clips = [json.loads(line) for line in done.stdout.splitlines()]
        assert len(clips) == 1
        top = clips[0]["top"][0]
        assert top["label"] == video["predicted"]
        assert top["score"] == pytest.approx(video["score"], abs=1e-4)

    # deployed with the default clip shape (32 x 2 at 224) instead of the trained one: it runs, and says so
    done = run_vstmon(
        "classify", video["path"], "--checkpoint", str(out / "best.pth"), "--labels", str(out / "labels.txt")
    )
    assert done.returncode == 0, done.stderr
    assert (
        "trained on other clips than config.clip" in done.stderr and "trained 8, configured 32" in done.stderr
    )

    # the official protocol: several clips and three crops per video, on the training data
    done = run_vstmon("eval", str(data), "--checkpoint", str(out / "best.pth"), "--views", "2x3")
    assert done.returncode == 0, done.stderr
    assert "48 videos, 2x3 views" in done.stdout


@pytest.mark.slow
def test_resume_after_sigint_gives_the_same_weights_as_an_uninterrupted_run(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", per_class=12)
    settings = {
        **SMALL,
        "epochs": 4,
        "drop_path": 0.1,
        "head_dropout": 0.3,
        "flip": True,
        "accumulate": 2,
        "batch": 2,
    }
    config = write_yaml(tmp_path / "train.yaml", settings)
    straight = train_process(data, tmp_path / "straight", config)
    assert straight.wait(timeout=600) == 0, straight.stdout.read() if straight.stdout else ""

    interrupted = train_process(data, tmp_path / "resumed", config)
    last = tmp_path / "resumed" / "last.pth"  # written whole (renamed into place) after each epoch
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not last.exists():
        time.sleep(0.05)
    interrupted.send_signal(signal.SIGINT)
    assert interrupted.wait(timeout=120) == 130
    stopped_at = torch.load(tmp_path / "resumed" / "last.pth", weights_only=True)["epoch"]
    assert 1 <= stopped_at < 4

    resumed = train_process(data, tmp_path / "resumed", config, "--resume")
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert f"resuming {tmp_path / 'resumed'} after epoch {stopped_at} of 4" in output
    a = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pth", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]

    # a changed setting is refused, and a finished run is not overwritten by accident
    other = write_yaml(tmp_path / "other.yaml", {**settings, "lr": 0.01})
    done = run_vstmon(
        "train", str(data), "--out", str(tmp_path / "resumed"), "--config", str(other), "--resume"
    )
    assert done.returncode == 2 and "changed: lr (0.002 -> 0.01)" in done.stderr
    done = run_vstmon("train", str(data), "--out", str(tmp_path / "resumed"), "--config", str(config))
    assert done.returncode == 2 and "already holds a run" in done.stderr


# -- the step: accumulation, checkpointing, precision ----------------------------------------------------------
def _trainer(
    settings: dict, steps_per_epoch: int = 1, checkpointing: bool = False, dtype=torch.float32
) -> Trainer:
    cfg = TrainConfig.model_validate(settings)
    return Trainer(
        build_training_model(cfg, 2), cfg, torch.device("cpu"), dtype, steps_per_epoch, checkpointing
    )


def _batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 8, 32, 32, 3), dtype=torch.uint8, generator=g), torch.arange(n) % 2


def test_accumulating_k_batches_of_b_equals_one_batch_of_k_times_b() -> None:
    clips, labels = _batch(6)
    one = _trainer({**SMALL, "batch": 6, "accumulate": 1})
    one.train_epoch([(clips, labels)], epoch=1)
    three = _trainer({**SMALL, "batch": 2, "accumulate": 3})
    three.train_epoch([(clips[i : i + 2], labels[i : i + 2]) for i in (0, 2, 4)], epoch=1)
    assert one.step == three.step == 1
    for (name, a), b in zip(one.model.named_parameters(), three.model.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), name


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    clips, labels = _batch(2)
    settings = {
        **SMALL,
        "drop_path": 0.2,
        "head_dropout": 0.5,
    }  # random masks: recomputation must replay them
    plain = _trainer(settings)
    plain.train_epoch([(clips, labels)], epoch=1)
    recomputed = _trainer(settings, checkpointing=True)
    recomputed.train_epoch([(clips, labels)], epoch=1)
    for (name, a), b in zip(plain.model.named_parameters(), recomputed.model.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name


_PEAK = """
import sys, torch
from vstmon.model import build_model
from vstmon.model.presets import SwinConfig
from vstmon.train.loop import set_grad_checkpointing
def peak_kib():  # VmHWM: this process's own peak (ru_maxrss would carry the forking parent's over execve)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
torch.manual_seed(0)
cfg = SwinConfig(embed_dim=48, depths=(2, 4), num_heads=(2, 4), window_size=(8, 7, 7), drop_path_rate=0.0)
model = build_model(cfg, 4).train()
set_grad_checkpointing(model, sys.argv[1] == "on")
x = torch.randn(2, 3, 16, 160, 160)
before = peak_kib()
model(x).sum().backward()
print(before, peak_kib())
"""


@pytest.mark.slow
def test_gradient_checkpointing_lowers_peak_memory() -> None:
    def peak_kib(mode: str) -> tuple[int, int]:
        done = subprocess.run(
            [sys.executable, "-c", _PEAK, mode],
            capture_output=True,
            text=True,
            env=vstmon_env(),
            timeout=300,
            check=True,
        )
        before, after = map(int, done.stdout.split())
        return before, after

    plain, recomputed = peak_kib("off"), peak_kib("on")
    print(
        f"peak RSS of forward+backward (MiB): without checkpointing {plain[1] >> 10}, with {recomputed[1] >> 10}"
    )
    assert recomputed[1] < plain[1] - (100 << 10)  # at least 100 MiB less, on a run that needs ~800 MiB more


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_steps_on_cpu(dtype: torch.dtype) -> None:
    clips, labels = _batch(4)
    trainer = _trainer(SMALL, dtype=dtype)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.train_epoch([(clips, labels)], epoch=1)
    assert np.isfinite(result.loss) and trainer.step == 1
    assert trainer.scaler.is_enabled() == (dtype == torch.float16)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32


def test_schedule_warms_up_then_follows_a_cosine_to_zero() -> None:
    factors = [lr_factor(s, 100, 10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert factors[55] == pytest.approx(0.5, abs=0.02) and factors[-1] < 0.001


# -- data ------------------------------------------------------------------------------------------------------
def test_lists_csv_and_jsonl_with_ranges_and_skips_unreadable_files(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(2):
        drifting_texture(videos / f"l{i}.avi", -1, i, frames=40)
        drifting_texture(videos / f"r{i}.avi", 1, 10 + i, frames=40)
    (videos / "broken.avi").write_bytes(b"not a video at all")
    rows = ["path,label,start_s,end_s", "l0.avi,left,0,0.8", "l1.avi,left,,", "r0.avi,right,0.4,1.2"]
    rows += ["r1.avi,right,,", "broken.avi,right,,"]
    listing = videos / "list.csv"
    listing.write_text("\n".join(rows) + "\n")
    dataset = load_dataset(listing)
    assert dataset.classes == ["left", "right"]
    assert [(v.path.name, v.first, v.frames) for v in dataset.videos] == [
        ("l0.avi", 0, 20),
        ("l1.avi", 0, 40),
        ("r0.avi", 10, 20),
        ("r1.avi", 0, 40),
    ]
    assert [p.name for p, _ in dataset.skipped] == ["broken.avi"] and dataset.skipped[0][1]  # with why
    jsonl = videos / "list.jsonl"
    jsonl.write_text(
        '{"path": "l0.avi", "label": "left"}\n{"path": "r0.avi", "label": "right", "end_s": 0.4}\n'
    )
    assert [v.frames for v in load_dataset(jsonl).videos] == [40, 10]


def test_bad_data_gets_clear_errors(tmp_path: Path) -> None:
    one = make_data(tmp_path / "one", per_class=2)
    for path in (one / "right").iterdir():
        path.unlink()
    (one / "right").rmdir()
    with pytest.raises(DataError, match=r"one class only \('left'\); a classifier needs at least two"):
        load_dataset(one)
    few = make_data(tmp_path / "few", per_class=3)
    (few / "right" / "0.avi").write_bytes(b"junk")
    (few / "right" / "1.avi").write_bytes(b"junk")
    with pytest.raises(
        DataError, match=r"too few readable videos in: right \(1\); each class needs at least 2"
    ):
        load_dataset(few, min_per_class=2)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a.avi,left,1.0\n")
    with pytest.raises(DataError, match=r"bad.csv:1: expected path,label or path,label,start_s,end_s; got 3"):
        load_dataset(bad_csv)
    with pytest.raises(DataError, match="no such folder or list file"):
        load_dataset(tmp_path / "missing")


def test_unreadable_videos_are_listed_and_the_run_goes_on(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", per_class=3)
    (data / "left" / "corrupt.avi").write_bytes(b"\x00" * 100)
    config = write_yaml(tmp_path / "train.yaml", {**SMALL, "epochs": 1})
    # decoding in 2 worker processes, as on a GPU box
    done = run_vstmon(
        "train", str(data), "--out", str(tmp_path / "run"), "--config", str(config), "--workers", "2"
    )
    assert done.returncode == 0, done.stderr
    assert "skipped 1 unreadable video(s):" in done.stdout and "corrupt.avi" in done.stdout
    assert "2 decoding worker(s)" in done.stdout
    assert (tmp_path / "run" / "best.pth").is_file()


def test_a_checkpoint_that_does_not_fit_the_arch_is_refused(tmp_path: Path) -> None:
    from tests.helpers.daemon import tiny_checkpoint

    checkpoint, _ = tiny_checkpoint(tmp_path)
    data = make_data(tmp_path / "data", per_class=2)
    done = run_vstmon(
        "train",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--checkpoint",
        str(checkpoint),
        "--arch",
        "swin_s",
    )
    assert done.returncode == 78
    assert f"checkpoint {checkpoint} does not fit arch swin_s" in done.stderr
    with pytest.raises(CheckpointError):
        build_training_model(TrainConfig(checkpoint=checkpoint, arch="swin_b"), 2)


def test_fine_tuning_keeps_the_backbone_and_replaces_the_head(tmp_path: Path) -> None:
    from tests.helpers.daemon import tiny_checkpoint

    checkpoint, _ = tiny_checkpoint(tmp_path)
    source = load_model(checkpoint)
    model = build_training_model(TrainConfig(checkpoint=checkpoint, arch="auto", frozen_stages=1), 3)
    assert model.cls_head.fc_cls.out_features == 3
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(value, model.backbone.state_dict()[key]), key
    assert not any(p.requires_grad for p in model.backbone.patch_embed.parameters())
    assert not any(p.requires_grad for p in model.backbone.layers[0].parameters())
    assert all(p.requires_grad for p in model.backbone.layers[1].parameters())


def test_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    dataset = load_dataset(make_data(tmp_path / "data", per_class=5, frames=4))
    train, val = stratified_split(dataset.videos, 0.4, seed=3)
    assert sorted(v.label for v in val) == [0, 0, 1, 1] and len(train) == 6
    assert stratified_split(dataset.videos, 0.4, seed=3) == (train, val)
    assert stratified_split(dataset.videos, 0.4, seed=4) != (train, val)


def test_clip_sampling_and_views(tmp_path: Path) -> None:
    assert eval_offsets(100, 63, 1) == [19]  # the middle of the room a span leaves
    assert eval_offsets(100, 63, 4) == [4, 14, 23, 33]
    assert eval_offsets(40, 63, 2) == [0, 0]  # shorter than a span: loops from the start
    dataset = load_dataset(make_data(tmp_path / "data", per_class=1, frames=6))
    spec = ClipSpec(frames=8, frame_interval=1, size_px=32)
    views, label = EvalClips(dataset.videos, spec, clips=2, crops=3)[1]
    assert views.shape == (6, 8, 32, 32, 3) and views.dtype == torch.uint8 and label == 1
    assert not torch.equal(views[0], views[2])  # left and right crops differ
    clip, _ = TrainClips(dataset.videos, spec, seed=0, flip=True, min_crop_area=0.3)[(0, 5)]
    again, _ = TrainClips(dataset.videos, spec, seed=0, flip=True, min_crop_area=0.3)[(0, 5)]
    other, _ = TrainClips(dataset.videos, spec, seed=0, flip=True, min_crop_area=0.3)[(0, 6)]
    assert torch.equal(clip, again) and not torch.equal(clip, other)  # (seed, epoch, index) decides


def test_settings_errors_name_the_key(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "train.yaml", {"size_px": 100, "epochs": 0, "colour": 1})
    done = run_vstmon("train", str(tmp_path), "--out", str(tmp_path / "run"), "--config", str(config))
    assert done.returncode == 78
    assert "size_px: size_px must be a multiple of 32" in done.stderr
    assert "epochs: Input should be greater than or equal to 1" in done.stderr
    assert "colour: unknown key" in done.stderr
    done = run_vstmon("train", str(tmp_path), "--out", str(tmp_path / "run"), "--arch", "auto")
    assert done.returncode == 78 and "arch: auto reads the architecture from a checkpoint" in done.stderr
