"""Per-subject mode: crops around each person at source resolution, slots, and each person's own clip stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers.daemon import FRAMES, SIZE_PX, collect, daemon_config, ended
from tests.helpers.footage import lossless_from
from vstmon.ingest.crops import CropFitter, square_crop_px
from vstmon.model.normalize import normalize_clips
from vstmon.service.daemon import Daemon
from vstmon.subjects.slots import SubjectSlots
from vstmon.subjects.tracker import Track
from vstmon.types import Clip, ClipResult


# -- crops ----------------------------------------------------------------------------------------------------------
def test_a_crop_is_the_box_grown_by_the_margin_and_made_square_on_its_longer_side() -> None:
    # a person 100 px tall, 40 px wide, centred at (320, 240) in 640x480
    box = (300 / 640, 190 / 480, 340 / 640, 290 / 480)
    assert square_crop_px(box, 640, 480, margin=0.0) == (270, 190, 100)
    assert square_crop_px(box, 640, 480, margin=0.2) == (250, 170, 140)  # 100 x (1 + 2 x 0.2)


def test_a_crop_at_the_frame_edge_moves_inside_and_stays_square() -> None:
    left_edge = (0.0, 0.4, 20 / 640, 0.6)  # 96 px tall, hugging the left edge
    x0, y0, side = square_crop_px(left_edge, 640, 480, margin=0.25)
    assert (x0, side) == (0, 144) and y0 == 240 - 72
    bottom_right = (0.95, 0.9, 1.0, 1.0)
    x0, y0, side = square_crop_px(bottom_right, 640, 480, margin=0.5)
    assert x0 + side == 640 and y0 + side == 480
    huge = (0.0, 0.0, 1.0, 1.0)  # larger than the frame's short side: the short side
    assert square_crop_px(huge, 640, 480, margin=0.2) == (80, 0, 480)


def test_the_crop_is_cut_from_the_source_frame_at_its_resolution() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[190:290, 300:340] = (0, 0, 255)  # a red person (BGR) on black
    out = np.empty((64, 64, 3), np.uint8)
    rect = square_crop_px((300 / 640, 190 / 480, 340 / 640, 290 / 480), 640, 480, margin=0.0)
    CropFitter(64).fit(frame, rect, out)
    # the 100 px square holds the 40 px person in its middle: columns 30..70 of 100 -> 19..45 of 64, RGB
    assert out[:, 22:42, 0].min() > 200 and out[:, 22:42, 2].max() < 50
    assert out[:, :15].max() == 0 and out[:, 50:].max() == 0


def test_bad_crop_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="margin"):
        square_crop_px((0.1, 0.1, 0.2, 0.2), 640, 480, margin=-1.0)
    with pytest.raises(ValueError, match="outside"):
        CropFitter(32).fit(np.zeros((10, 10, 3), np.uint8), (5, 5, 8), np.empty((32, 32, 3), np.uint8))


# -- slots ----------------------------------------------------------------------------------------------------------
def person(track_id: int, size: float, first_seen_s: float = 0.0, confirmed: bool = True) -> Track:
    return Track(track_id, (0.1, 0.1, 0.1 + size, 0.1 + size), 0.9, first_seen_s, 0.0, 3, confirmed)


def test_people_who_count_take_free_slots_largest_first_and_the_rest_wait() -> None:
    slots = SubjectSlots("cam", max_subjects=2, confirm_s=1.0)
    small, large, middle = person(1, 0.1), person(2, 0.3), person(3, 0.2)
    new = person(4, 0.5, first_seen_s=1.5)  # the largest, but tracked for less than confirm_s
    changes = slots.update([small, large, middle, new], [small, large, middle, new], 2.0)
    assert [(c.slot, c.kind, c.subject) for c in changes] == [(0, "start", "cam-2"), (1, "start", "cam-3")]
    assert slots.subjects == ["cam-2", "cam-3"] and slots.waiting == 1 and slots.people == 4
    # large leaves (its track ends): its slot goes to the largest one waiting that counts by now
    changes = slots.update([small, middle, new], [small, middle, new], 3.0)
    assert [(c.slot, c.kind, c.subject) for c in changes] == [(0, "end", "cam-2"), (0, "start", "cam-4")]
    assert slots.waiting == 1 and slots.waited == 2


def test_a_coasting_track_keeps_its_slot_and_its_predicted_box() -> None:
    slots = SubjectSlots("cam", max_subjects=1, confirm_s=0.0)
    a = person(1, 0.2)
    slots.update([a], [a], 1.0)
    coasting = Track(1, (0.2, 0.1, 0.4, 0.3), 0.9, 0.0, 1.0, 3, True)  # not in view, still live
    assert slots.update([], [coasting], 1.5) == [] and slots.boxes == [(0.2, 0.1, 0.4, 0.3)]
    ends = slots.reset()
    assert [(c.kind, c.subject, c.box) for c in ends] == [("end", "cam-1", (0.2, 0.1, 0.4, 0.3))]
    assert slots.subjects == [None]


# -- the daemon, per subject, on real footage --------------------------------------------------------------------
def per_subject_config(
    checkpoint: Path, labels: Path, streams: list[dict[str, Any]], detector: Path, **subjects: Any
) -> dict[str, Any]:
    cfg = {
        "detector": str(detector),
        "mode": "per_subject",
        "detect_fps": 5.0,
        "confirm_s": 0.5,
        "max_subjects": 4,
    }
    return daemon_config(
        checkpoint, labels, streams, subjects=cfg | subjects, reset={"scene_change": {"enabled": False}}
    )


def test_people_on_vtest_get_labels_of_their_own_each_from_their_own_crops(
    tmp_path: Path, model_files: tuple[Path, Path], run_daemon, vtest_avi: Path, pedestrian_pb: Path
) -> None:
    checkpoint, labels = model_files
    video = lossless_from(vtest_avi, tmp_path / "walk.avi", [range(0, 300)])  # 30 s, several people at once
    data = per_subject_config(checkpoint, labels, [{"name": "walk", "url": str(video)}], pedestrian_pb)
    captured: list[
        tuple[str, int, int, np.ndarray, np.ndarray]
    ] = []  # key, segment, first frame, frames, probs

    submitted: dict[int, tuple[Clip, np.ndarray]] = {}  # id(clip) -> the clip and its frames as submitted

    def capture(daemon: Daemon) -> None:
        forward = daemon._on_result
        for engine in daemon.pool.engines:
            submit = engine.submit

            def on_submit(clip: Clip, *args: Any, submit: Any = submit, **kwargs: Any) -> bool:
                # the frames as handed over: the array is reused for a later clip once the engine has staged it
                submitted[id(clip)] = (clip, clip.frames.copy())
                return submit(clip, *args, **kwargs)

            def on_result(result: ClipResult) -> None:  # what the engine computed for each clip
                clip = result.clip
                frames = submitted.pop(id(clip))[1]
                captured.append((clip.key, clip.segment, clip.first_frame, frames, np.array(result.probs)))
                forward(result)

            engine.submit = on_submit
            engine._on_result = on_result

    daemon, sub = run_daemon(data, capture)
    messages = collect(sub, ended(["walk"]), timeout_s=300)["walk"]
    labels_msgs = [m for t, m in messages if t == "label.walk"]
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for m in labels_msgs:
        by_subject.setdefault(m.subject, []).append(m)
    assert None not in by_subject  # per-subject mode: every label belongs to someone
    assert len(by_subject) >= 3, sorted(by_subject)
    # several people labelled at the same time: some clips of different people overlap in time
    spans = {s: (ms[0].clip.first_frame, ms[-1].clip.last_frame) for s, ms in by_subject.items()}
    assert any(
        a != b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1] for a in spans for b in spans
    ), spans
    events = [m for t, m in messages if t == "subject.walk"]
    entered = {m.subject for m in events if m.event == "enter"}
    left = {m.previous for m in events if m.event == "leave"}
    assert set(by_subject) <= entered and left  # people came and went
    for subject, ms in by_subject.items():
        segments = [m.segment for m in ms]
        assert segments == sorted(segments) and segments[0] == 1  # each person's own segments, from 1
        assert all(m.box is not None for m in ms)
        resets = [m for t, m in messages if t == "reset.walk" and m.subject == subject]
        assert resets and resets[0].reason == "start" and resets[0].segment == 1
        if subject in left:  # a person's labels stop when their track ends
            gone = next(
                i for i, (t, m) in enumerate(messages) if t == "subject.walk" and m.previous == subject
            )
            assert not any(t == "label.walk" and m.subject == subject for t, m in messages[gone:])
            summary = [m for t, m in messages[:gone] if t == "segment.walk" and m.subject == subject]
            assert summary and summary[-1].clips == sum(1 for m in ms if m.segment == summary[-1].segment)
    # the per-subject leakage guarantee: every published label is the model on that person's crops alone
    model = daemon._loaded.model
    published = {(m.subject, m.clip.first_frame, m.clip.last_frame) for m in labels_msgs}
    checked = 0
    for _key, _segment, _first, frames, probs in captured:
        x = normalize_clips(torch.from_numpy(frames[None]))
        with torch.inference_mode():
            alone = torch.softmax(model(x).float(), dim=-1)[0].numpy()
        np.testing.assert_allclose(probs, alone, atol=1e-5)
        checked += 1
    assert checked >= len(published)
    # and each person's smoothing covers their own clips of the segment only (mean of the last window_clips = 3)
    for subject, ms in by_subject.items():
        for m in ms:
            own = [
                p
                for k, g, first, _f, p in captured
                if k == f"walk/{subject}" and g == m.segment and first <= m.clip.first_frame
            ]
            expected = np.mean(own[-3:], axis=0)
            np.testing.assert_allclose([s.score for s in m.smoothed], np.sort(expected)[::-1], atol=1e-6)


def test_memory_is_fixed_and_people_coming_and_going_leave_nothing_behind(
    tmp_path: Path, model_files: tuple[Path, Path], run_daemon, vtest_avi: Path, pedestrian_pb: Path
) -> None:
    """A looped stretch of vtest.avi: people enter and leave over and over; nothing grows."""
    checkpoint, labels = model_files
    video = lossless_from(vtest_avi, tmp_path / "walk.avi", [range(100, 200)])  # 10 s
    streams = [{"name": "walk", "url": str(video), "loop": True}]
    data = per_subject_config(checkpoint, labels, streams, pedestrian_pb, max_subjects=2)
    daemon, sub = run_daemon(data)
    per_subject = daemon.streams["walk"].pipeline.per_subject
    assert per_subject is not None
    ring = daemon.streams["walk"].ring
    # the stated bound: max_subjects x (ring slots x size_px^2 x 3 + metadata) + max_subjects x 2 clips
    clip_bytes = FRAMES * SIZE_PX * SIZE_PX * 3
    assert per_subject.crops.nbytes == 2 * ring.nbytes
    assert per_subject.nbytes == 2 * ring.nbytes + 2 * 2 * clip_bytes

    def three_passes(by_stream: dict[str, list[tuple[str, dict[str, Any]]]]) -> bool:
        return sum(t == "reset.walk" and m.reason == "loop" for t, m in by_stream["walk"]) >= 3

    messages = collect(sub, three_passes, timeout_s=300)["walk"]
    events = [m for t, m in messages if t == "subject.walk"]
    assert sum(m.event == "enter" for m in events) >= 4  # at least two people per pass, over three passes
    statuses = [m for t, m in messages if t == "status.walk" and m.subjects is not None]
    assert statuses and all(len(m.subjects) <= 2 for m in statuses)
    assert any(s.subject.startswith("walk-") and s.box is not None for m in statuses for s in m.subjects)
    engine = daemon.pool.engine_of("walk")
    assert len(per_subject._by_key) <= 2  # only the people holding a slot
    assert (
        len(engine.batcher._keys) <= 2 + 1
    )  # their clip streams and the stream's own: the rest were forgotten
    assert (
        per_subject.subjects_started >= 4 and per_subject.subjects_started - per_subject.subjects_ended <= 2
    )
