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
from vstmon.cli import main
from vstmon.errors import CheckpointError
from vstmon.model import build_model
from vstmon.model.checkpoint import load_model
from vstmon.model.presets import SwinConfig
from vstmon.train.clips import ClipSpec, EvalClips, TrainClips, eval_offsets
from vstmon.train.config import TrainConfig
from vstmon.train.data import DataError, load_dataset, stratified_split
from vstmon.train.loop import Trainer, build_training_model, lr_factor

torch.set_num_threads(1)  # tiny models: a second thread only waits on a loaded machine (as in test_classify)
cv2.setNumThreads(1)

DIRECTIONS = {"left": (-1, 0), "right": (1, 0)}  # (x, y) of the drift; flips would swap these
VERTICAL = {"down": (0, 1), "up": (0, -1)}  # a horizontal flip keeps these: the default flips do no harm
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


def drifting_texture(
    path: Path,
    direction: tuple[int, int],
    seed: int,
    frames: int = 12,
    speed_px: tuple[float, float] = (2, 3),
) -> Path:
    """An MJPG 64x48 video of a random texture drifting ``direction`` ((x, y): (-1, 0) left, (0, 1) down) by a
    random ``speed_px`` (low, high) pixels per frame: no single frame tells one direction from another."""
    rng = np.random.default_rng(seed)
    room = int(speed_px[1] * frames) + 4  # the texture is this much larger than the frame: room for the drift
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (48 + room, 64 + room, 3)).astype(np.float32), (0, 0), 2.5)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    speed = rng.uniform(*speed_px)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    assert writer.isOpened()
    try:
        for t in range(frames):
            x, y = (int(room // 2 + d * speed * (t - frames / 2)) for d in direction)
            writer.write(np.ascontiguousarray(texture[y : y + 48, x : x + 64]))
    finally:
        writer.release()
    return path


def make_data(
    root: Path,
    per_class: int,
    frames: int = 12,
    seed: int = 0,
    directions: dict[str, tuple[int, int]] = DIRECTIONS,
    speed_px: tuple[float, float] = (2, 3),
) -> Path:
    """``root/<direction>/<k>.avi``: ``per_class`` drifting textures per direction, each with its own texture."""
    for i, (name, direction) in enumerate(directions.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            seed_k = seed * 1000 + k * len(directions) + i
            drifting_texture(root / name / f"{k}.avi", direction, seed_k, frames, speed_px)
    return root


def synthetic_checkpoint(path: Path, config: SwinConfig, seed: int = 0) -> Path:
    """A small Video Swin saved in the official layout, its weights drawn at the scale of a trained network (as
    ../shared/reference's synthetic fixtures are: Linear/Conv weights N(0, 1/fan_in), biases N(0, 0.1^2),
    LayerNorm weights 1 + N(0, 0.2^2), position-bias tables N(0, 1)).

    The stand-in for a pretrained checkpoint: its random features are rich enough for a new head to use, as a
    pretrained backbone's are. (A fresh initialisation (std 0.02) is not: its features are nearly linear, and the
    fine-tuning recipe moves the backbone at a tenth of the head's rate, so a few hundred steps learn nothing.)
    """
    model = build_model(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            noise = torch.randn(weight.shape, generator=generator)
            if "relative_position_bias_table" in name:
                weight.copy_(noise)
            elif "norm" in name and name.endswith("weight"):
                weight.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                weight.copy_(0.1 * noise)
            else:
                weight.copy_(noise / weight[0].numel() ** 0.5)
    torch.save({"state_dict": model.state_dict()}, path)  # the official layout: backbone.*, cls_head.fc_cls.*
    return path


def vstmon(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """``vstmon ARGS`` as a real process with one torch thread: the models here are tiny, and two threads on a
    loaded 2-core machine wait on each other (measured: a 20 s run took 270 s at a load of 8). OpenCV settings
    that importing vstmon made in this process are not passed on: the child makes its own."""
    env = {k: v for k, v in vstmon_env(OMP_NUM_THREADS="1").items() if not k.startswith("OPENCV_")}
    return subprocess.run([sys.executable, "-m", "vstmon.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env, check=False)  # fmt: skip


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
        env=vstmon_env(OMP_NUM_THREADS="1"),  # tiny models: one thread (see vstmon())
    )


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# -- learning, and the trained model in classify and eval -----------------------------------------------------
@pytest.mark.slow
def test_learns_motion_direction_from_scratch_and_classify_agrees_with_eval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_data(tmp_path / "data", per_class=24)
    config = write_yaml(tmp_path / "train.yaml", {**SMALL, "epochs": 24})  # 9 steps of 4 clips per epoch
    out = tmp_path / "run"
    done = vstmon("train", str(data), "--out", str(out), "--config", str(config))
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
    assert [m["epoch"] for m in lines] == list(range(1, 25)) and lines[-1]["step"] == 216
    best = max(m["val_top1"] for m in lines)
    print(f"validation top-1 by epoch: {[m['val_top1'] for m in lines]}")
    assert best >= 0.9  # chance is 0.5
    assert cv2.imread(str(out / "confusion.png")) is not None
    assert "accuracy" in done.stdout and "epoch 24/24" in done.stdout

    # best.pth is an official-layout checkpoint: load_model takes it as is (arch inferred from its tensors)
    model = load_model(out / "best.pth")
    assert model.cls_head.fc_cls.out_features == 2

    # fresh videos exactly one clip long: eval (1 clip x 1 crop) and classify see the same frames; classify
    # takes the clip shape from best.pth (no config needed)
    check = make_data(tmp_path / "check", per_class=3, frames=8, seed=99)
    report_file = tmp_path / "eval.json"
    argv = [
        "eval",
        str(check),
        "--checkpoint",
        str(out / "best.pth"),
        "--views",
        "1x1",
        "--json",
        str(report_file),
    ]
    assert main(argv) == 0
    report = json.loads(report_file.read_text())
    assert report["videos"] == 6 and "top-1" in capsys.readouterr().out
    for video in report["videos_detail"]:
        timeline = tmp_path / f"{Path(video['path']).parent.name}-{Path(video['path']).stem}.jsonl"
        code = main(["classify", video["path"], "--checkpoint", str(out / "best.pth"), "--labels",
                     str(out / "labels.txt"), "--device", "cpu", "--out", str(timeline)])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        clips = [json.loads(line) for line in timeline.read_text().splitlines()]
        assert len(clips) == 1 and clips[0]["frames"] == 8
        top = clips[0]["top"][0]
        assert top["label"] == video["predicted"]
        assert top["score"] == pytest.approx(video["score"], abs=1e-4)
    assert "trained on other clips" not in capsys.readouterr().err

    # the official protocol: several clips and three crops per video
    assert main(["eval", str(check), "--checkpoint", str(out / "best.pth"), "--views", "2x3"]) == 0
    assert "6 videos, 2x3 views" in capsys.readouterr().out


TINY = SwinConfig(embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=(4, 4, 4), num_classes=5)


@pytest.mark.slow
def test_the_defaults_fine_tune_on_a_few_dozen_videos_and_classify_gets_unseen_ones_right(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 18: batch 2 x accumulate 4 for 30 epochs makes 120 optimiser steps on 26 videos, and stays at chance
    (measured: 60-70% on these unseen videos); the defaults adapted to the data make 390 and get them right."""
    data = make_data(tmp_path / "data", per_class=16, directions=VERTICAL, speed_px=(3, 4))
    checkpoint = synthetic_checkpoint(tmp_path / "pretrained.pth", TINY)
    out = tmp_path / "run"
    done = vstmon("train", str(data), "--out", str(out), "--checkpoint", str(checkpoint),
                  "--frames", "8", "--frame-interval", "1", "--size", "32")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "26 training videos: accumulate 4 -> 1 (defaults adapted to make 390 optimiser steps" in done.stdout
    )
    assert "warning" not in done.stderr, done.stderr
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 390

    # unseen videos, one clip long, through `vstmon classify` (the clip shape comes from best.pth)
    unseen = make_data(
        tmp_path / "unseen", per_class=10, frames=8, seed=99, directions=VERTICAL, speed_px=(3, 4)
    )
    right = 0
    for truth in VERTICAL:
        for video in sorted((unseen / truth).iterdir()):
            timeline = tmp_path / f"{truth}-{video.stem}.jsonl"
            code = main(["classify", str(video), "--checkpoint", str(out / "best.pth"), "--labels",
                         str(out / "labels.txt"), "--device", "cpu", "--out", str(timeline)])  # fmt: skip
            assert code == 0, capsys.readouterr().err
            (line,) = [json.loads(text) for text in timeline.read_text().splitlines()]
            right += line["top"][0]["label"] == truth
    assert right >= 18, f"{right} of 20 unseen videos right"  # chance is 10


@pytest.mark.slow
def test_resume_after_sigint_gives_the_same_weights_as_an_uninterrupted_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_data(tmp_path / "data", per_class=8)
    settings = {**SMALL, "epochs": 4, "drop_path": 0.1, "head_dropout": 0.3, "flip": True, "batch": 2}
    del settings["accumulate"]  # left to adapt to the data: the resumed run must adapt it the same way
    config = write_yaml(tmp_path / "train.yaml", settings)
    straight = train_process(data, tmp_path / "straight", config)
    output = straight.communicate(timeout=600)[0]
    assert straight.returncode == 0, output
    assert "12 training videos: accumulate 4 -> 1" in output

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
    capsys.readouterr()
    argv = ["train", str(data), "--out", str(tmp_path / "resumed"), "--config"]
    assert main([*argv, str(other), "--resume"]) == 2
    assert "changed: lr (0.002 -> 0.01)" in capsys.readouterr().err
    assert main([*argv, str(config)]) == 2
    assert "already holds a run" in capsys.readouterr().err


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
cfg = SwinConfig(embed_dim=32, depths=(8,), num_heads=(2,), window_size=(8, 7, 7), drop_path_rate=0.0)
model = build_model(cfg, 4).train()
set_grad_checkpointing(model, sys.argv[1] == "on")
x = torch.randn(2, 3, 8, 160, 160)
before = peak_kib()
model(x).sum().backward()
print(before, peak_kib())
"""


@pytest.mark.slow
def test_gradient_checkpointing_lowers_peak_memory() -> None:
    """Eight blocks in one stage: without checkpointing all eight keep their activations for the backward pass,
    with it one block's at a time (measured: 476-482 MiB more at the peak without, 261-325 MiB with)."""

    def growth_kib(mode: str) -> int:
        env = vstmon_env(OMP_NUM_THREADS="1")
        done = subprocess.run([sys.executable, "-c", _PEAK, mode], capture_output=True, text=True, env=env,
                              timeout=300, check=True)  # fmt: skip
        before, after = map(int, done.stdout.split())
        return after - before  # the forward and backward pass's own growth: the start-up's size cancels out

    plain, recomputed = growth_kib("off"), growth_kib("on")
    print(
        f"peak growth of forward+backward (MiB): without checkpointing {plain >> 10}, with {recomputed >> 10}"
    )
    assert recomputed < 0.85 * plain  # measured 0.55-0.68


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
        drifting_texture(videos / f"l{i}.avi", (-1, 0), i, frames=40)
        drifting_texture(videos / f"r{i}.avi", (1, 0), 10 + i, frames=40)
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


def test_a_checkpoint_that_does_not_fit_the_arch_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.helpers.daemon import tiny_checkpoint

    checkpoint, _ = tiny_checkpoint(tmp_path)
    data = make_data(tmp_path / "data", per_class=2)
    argv = [
        "train",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--checkpoint",
        str(checkpoint),
        "--arch",
        "swin_s",
    ]
    assert main(argv) == 78
    assert f"checkpoint {checkpoint} does not fit arch swin_s" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        build_training_model(TrainConfig(checkpoint=checkpoint, arch="swin_b"), 2)


def test_arch_defaults_to_the_checkpoints_and_the_settings_given_are_kept_with_a_warning_when_too_few(
    tmp_path: Path,
) -> None:
    from tests.helpers.daemon import tiny_checkpoint

    checkpoint, _ = tiny_checkpoint(tmp_path)  # not swin_t: embed_dim 32, one block pair per stage
    data = make_data(tmp_path / "data", per_class=3)  # 2 + 2 training videos
    config = write_yaml(tmp_path / "train.yaml", {"accumulate": 2})  # set in the file: kept as set
    done = vstmon("train", str(data), "--out", str(tmp_path / "run"), "--checkpoint", str(checkpoint),
                  "--config", str(config), "--epochs", "3", "--frames", "8", "--size", "32")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "embed_dim=32 depths=[2, 2, 2, 2]" in done.stdout and "defaults adapted" not in done.stdout
    assert "batch 2 x 2, 3 epochs of 1 optimiser steps" in done.stdout
    assert [line for line in done.stderr.splitlines() if "warning" in line] == [
        "vstmon: warning: only 3 optimiser steps (4 training videos, batch 2 x accumulate 2, 3 epochs): a small "
        "dataset needs ~200-300 to learn; raise --epochs or lower --accumulate/--batch"
    ]
    assert load_model(tmp_path / "run" / "best.pth").config.embed_dim == 32


@pytest.mark.parametrize(
    ("videos", "given", "accumulate", "epochs"),
    [
        (26, {}, 1, 30),  # 13 batches of 2: 390 steps with every batch a step
        (60, {}, 3, 30),  # 30 batches: 10 steps of 3 per epoch reach 300
        (1000, {}, 4, 30),  # enough data: the defaults stand (3750 steps)
        (8, {}, 1, 63),  # 4 batches: 4 steps an epoch, so 63 epochs for 250
        (8, {"accumulate": 2}, 2, 125),  # accumulate set: only the epochs adapt
        (8, {"epochs": 12}, 1, 12),  # epochs set: accumulate falls, and that is all (48 steps, warned)
        (8, {"accumulate": 4, "epochs": 30}, 4, 30),  # both set: nothing changes
    ],
)
def test_the_defaults_adapt_to_a_small_dataset_where_nobody_set_them(
    videos: int, given: dict, accumulate: int, epochs: int
) -> None:
    from vstmon.train.budget import few_steps_warning, fit_to_dataset, optimiser_steps

    cfg = TrainConfig.model_validate(given)  # as from train.yaml and flags: only these keys count as set
    fitted, notes = fit_to_dataset(cfg, videos)
    assert (fitted.accumulate, fitted.epochs) == (accumulate, epochs)
    assert bool(notes) == ((accumulate, epochs) != (cfg.accumulate, cfg.epochs))
    steps = optimiser_steps(videos, fitted.batch, fitted.accumulate, fitted.epochs)
    assert (few_steps_warning(fitted, videos) is None) == (steps >= 200)
    assert fit_to_dataset(fitted, videos)[0] == fitted  # adapting twice changes nothing (a resumed run)


def test_arch_defaults_to_auto_which_is_swin_t_without_a_checkpoint() -> None:
    cfg = TrainConfig()
    assert cfg.arch == "auto" and cfg.preset == "swin_t" and not cfg.is_set("arch")
    assert build_training_model(
        TrainConfig(model={"embed_dim": 24, "depths": [1], "num_heads": [2]}), 2
    ).config.depths == (1,)


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
