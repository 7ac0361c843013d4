"""Offline equals live: ``vstmon classify`` and the daemon run the same stream pipeline, so on the same file (read
losslessly, as fast as the model allows) they give the same clips (frame ranges, segments, subjects) and the same
scores, whole-frame and per subject. The file has a subject change (one group of people on the walkway, then
another, no cut), a hard cut (to a tree, nobody in view) and the subject leaving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from tests.helpers.daemon import collect, daemon_config, ended
from tests.helpers.footage import SPLICE_SIZE, VTEST_FPS
from tests.helpers.videos import video_frames
from vstmon.config import parse_config
from vstmon.model.bundle import load_model_and_labels
from vstmon.offline.classify import classify_file

Row = tuple[str, int, int, int]  # (subject or "", segment, first_frame, last_frame)


def _splice(out: Path, parts: list[tuple[Path, range]]) -> Path:
    """Frames ``range`` of each source in turn, resized, losslessly (FFV1), at vtest's 10 fps."""
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"FFV1"), VTEST_FPS, SPLICE_SIZE)
    assert writer.isOpened()
    for source, frames in parts:
        written = 0
        for index, frame, _ in video_frames(source):
            if index in frames:
                writer.write(cv2.resize(frame, SPLICE_SIZE, interpolation=cv2.INTER_AREA))
                written += 1
            if index == frames.stop - 1:
                break
        assert written == len(frames), f"{source} has no frame {frames.start + written}"
    writer.release()
    return out


@pytest.fixture(scope="module")
def walkway(tmp_path_factory: pytest.TempPathFactory, vtest_avi: Path, tree_avi: Path) -> Path:
    root = tmp_path_factory.mktemp("offline_live")
    # people (0-4.5 s), other people on the same camera (no cut: a subject change), then a tree: a hard cut
    return _splice(
        root / "walk.avi", [(vtest_avi, range(0, 45)), (vtest_avi, range(550, 595)), (tree_avi, range(25))]
    )


def _config(checkpoint: Path, labels: Path, detector: Path, video: Path, mode: str) -> dict[str, Any]:
    subjects = {"detector": str(detector), "detect_fps": 5.0, "confirm_s": 0.5, "lost_s": 1.0, "absent_s": 1.5,
                "mode": mode, "max_subjects": 3}  # fmt: skip
    return daemon_config(checkpoint, labels, [{"name": "walk", "url": str(video)}], subjects=subjects)


def _daemon_rows(run_daemon: Any, data: dict[str, Any]) -> dict[Row, np.ndarray]:
    _daemon, sub = run_daemon(data)
    messages = collect(sub, ended(["walk"]), timeout_s=240)["walk"]
    rows = {}
    for topic, message in messages:
        if topic.startswith("label."):
            clip = message.clip
            row = (message.subject or "", message.segment, clip.first_frame, clip.last_frame)
            rows[row] = _scores([{"index": s.index, "score": s.score} for s in message.top])
    return rows


def _offline_rows(data: dict[str, Any], video: Path) -> dict[Row, np.ndarray]:
    config = parse_config(data)
    loaded = load_model_and_labels(config, warn=False)
    lines: list[dict[str, Any]] = []
    classify_file(video, config, loaded, lambda line: lines.append(yaml.safe_load(line)), batch=3)
    return {
        (line["subject"] or "", line["segment"], line["first_frame"], line["last_frame"]): _scores(
            line["top"]
        )
        for line in lines
    }


def _scores(top: list[dict[str, Any]]) -> np.ndarray:
    probs = np.zeros(len(top))
    for entry in top:
        probs[entry["index"]] = entry["score"]
    return probs


def _assert_same(live: dict[Row, np.ndarray], offline: dict[Row, np.ndarray]) -> None:
    assert sorted(live) == sorted(offline)  # the same clips: frame ranges, segments, subjects
    for row, probs in live.items():
        np.testing.assert_allclose(offline[row], probs, atol=1e-5, rtol=0, err_msg=str(row))


@pytest.mark.parametrize("mode", ["frame", "per_subject"])
def test_classify_gives_the_daemons_clips_and_scores_on_the_same_file(
    mode: str,
    walkway: Path,
    model_files: tuple[Path, Path],
    pedestrian_pb: Path,
    run_daemon: Any,
) -> None:
    data = _config(*model_files, pedestrian_pb, walkway, mode)
    live = _daemon_rows(run_daemon, data)
    offline = _offline_rows(data, walkway)
    _assert_same(live, offline)
    segments = {segment for _subject, segment, _first, _last in live}
    subjects = {subject for subject, *_rest in live if subject}
    if mode == "frame":  # people, a subject change, a cut, nobody: several segments, more than one subject
        assert len(segments) >= 3 and len(subjects) >= 2
    else:  # several people, each with their own clips
        assert len(subjects) >= 3
    assert len(live) >= 10
