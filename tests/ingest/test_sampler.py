"""ClipSampler: when clips are due and which frames they take, on the stream clock; restarts and clears."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers.videos import decode_index, make_video, video_frames
from vstmon.ingest.fit import FrameFitter
from vstmon.ingest.ring import FrameGone, RingBuffer
from vstmon.ingest.sampler import ClipSampler
from vstmon.types import Clip, FrameMeta

cv2.setNumThreads(1)
S = 4  # frame size for synthetic feeds


def _push(ring: RingBuffer, index: int, stream_ts_s: float) -> int:
    slot = ring.write_slot(timeout_s=0)
    assert slot is not None, "the sampler should have released enough frames"
    slot[...] = index % 256
    return ring.commit(FrameMeta(index, 1000.0 + stream_ts_s, 1.7e9 + stream_ts_s, stream_ts_s))


def _run(sampler: ClipSampler, ring: RingBuffer, timestamps: list[float], first_index: int = 0) -> list[Clip]:
    """Push frames with these stream times, feed the sampler, cut every due clip (copied out)."""
    clips = []
    for i, ts in enumerate(timestamps):
        seq = _push(ring, first_index + i, ts)
        if sampler.on_frame(seq):
            out = np.empty((sampler.frames, ring.height_px, ring.width_px, 3), np.uint8)
            clips.append(sampler.cut(out))
    return clips


def _frame_indices(clip: Clip) -> list[int]:
    return [int(f[0, 0, 0]) for f in clip.frames]  # synthetic frames carry index % 256


def test_frame_mode_boundaries_and_timestamps() -> None:
    fps = 25.0
    ring = RingBuffer(8, S, S, lossless=True)  # span 7 + 1: must never block
    sampler = ClipSampler(ring, "cam", frames=4, frame_interval=2, hop_s=0.2)
    clips = _run(sampler, ring, [i / fps for i in range(40)])
    # first clip when 7 frames exist (frame 6, t=0.24), then every 0.2 s of stream time: 0.44, 0.64, ...
    assert [c.last_frame for c in clips] == [6, 11, 16, 21, 26, 31, 36]
    assert _frame_indices(clips[0]) == [0, 2, 4, 6]
    assert _frame_indices(clips[1]) == [5, 7, 9, 11]
    first = clips[0]
    assert (first.stream, first.generation, first.first_frame, first.last_frame) == ("cam", 0, 0, 6)
    assert first.start_stream_s == 0.0 and first.end_stream_s == pytest.approx(0.24)
    assert first.start_ts == pytest.approx(1.7e9) and first.end_ts == pytest.approx(1.7e9 + 0.24)
    assert first.ready_mono_s == pytest.approx(1000.24)
    assert sampler.stats() == {"clips_cut": 7, "clips_skipped": 0, "restarts": 0}


def test_hop_follows_the_stream_clock_not_the_frame_count() -> None:
    # 10 fps then 50 fps: with hop 0.5 s the clips stay 0.5 s apart in stream time
    timestamps = [i / 10 for i in range(20)] + [2.0 + i / 50 for i in range(1, 101)]
    ring = RingBuffer(4, S, S, lossless=True)
    sampler = ClipSampler(ring, "cam", frames=2, frame_interval=1, hop_s=0.5)
    clips = _run(sampler, ring, timestamps)
    ends = [c.end_stream_s for c in clips]
    assert ends == pytest.approx([0.1 + 0.5 * k for k in range(len(ends))])
    assert ends[-1] == pytest.approx(3.6)


def test_clips_on_a_real_file(tmp_path: Path) -> None:
    path = make_video(tmp_path / "v.mp4", 60, 25, size=(96, 64), codec="mp4v")
    ring = RingBuffer(16, 32, 32, lossless=True)
    sampler = ClipSampler(ring, "file", frames=4, frame_interval=3, hop_s=0.4)  # span 10
    fitter = FrameFitter(32)
    clips, count = [], 0
    for index, frame, clock_s in video_frames(path):
        slot = ring.write_slot(timeout_s=0)
        assert slot is not None
        fitter.fit(frame, slot)
        seq = ring.commit(FrameMeta(index, 0.0, 0.0, clock_s))
        count += 1
        if sampler.on_frame(seq):
            clips.append(sampler.cut(np.empty((4, 32, 32, 3), np.uint8)))
    assert count == 60
    # first at frame 9 (0.36 s), then every 0.4 s = 10 frames
    assert [c.last_frame for c in clips] == [9, 19, 29, 39, 49, 59]
    assert [c.end_stream_s for c in clips] == pytest.approx([0.36, 0.76, 1.16, 1.56, 1.96, 2.36])
    for clip in clips:  # the pixels really are those frames (index code drawn in each frame)
        expected = list(range(clip.last_frame - 9, clip.last_frame + 1, 3))
        assert [decode_index(f) for f in clip.frames] == expected
        assert clip.first_frame == expected[0] and clip.start_stream_s == pytest.approx(expected[0] / 25)


def test_restart_is_never_spanned() -> None:
    ring = RingBuffer(16, S, S)
    sampler = ClipSampler(ring, "cam", frames=3, frame_interval=2, hop_s=0.1)  # span 5
    clips = _run(sampler, ring, [i / 25 for i in range(8)])
    assert [c.last_frame for c in clips] == [4, 7]  # first at 0.16 s; hop 0.1 s -> first frame >= 0.26 s
    sampler.restart(8)
    clips = _run(sampler, ring, [(8 + i) / 25 for i in range(8)], first_index=8)
    assert [c.last_frame for c in clips] == [12, 15]  # new segment from 8: 8 + 5 - 1 = 12, then 0.1 s later
    assert all(c.first_frame >= 8 for c in clips)
    assert sampler.restarts == 1


def test_ring_clear_restarts_the_sampler_and_drops_a_due_clip() -> None:
    ring = RingBuffer(16, S, S)
    sampler = ClipSampler(ring, "cam", frames=3, frame_interval=1, hop_s=1.0)
    for i in range(3):
        due = sampler.on_frame(_push(ring, i, i / 25))
    assert due  # clip 0..2 is due
    assert ring.clear() == 1  # e.g. the source reconnected before the worker cut it
    with pytest.raises(FrameGone):
        sampler.cut(np.empty((3, S, S, 3), np.uint8))
    assert sampler.clips_skipped == 1
    clips = _run(sampler, ring, [10.0 + i / 25 for i in range(5)], first_index=100)
    assert [(c.first_frame, c.last_frame, c.generation) for c in clips] == [(100, 102, 1)]


def test_clear_keeping_recent_frames_starts_the_segment_there() -> None:
    ring = RingBuffer(16, S, S)
    sampler = ClipSampler(ring, "cam", frames=3, frame_interval=1, hop_s=10.0)
    _run(sampler, ring, [i / 25 for i in range(4)])
    ring.clear(keep_from_seq=3)  # a scene cut at frame 3
    clips = _run(sampler, ring, [(4 + i) / 25 for i in range(3)], first_index=4)
    assert [(c.first_frame, c.last_frame) for c in clips] == [(3, 5)]
    assert clips[0].start_stream_s == pytest.approx(3 / 25)


def test_sample_fps_picks_the_nearest_frames_in_time() -> None:
    # 30 fps source sampled at 15 fps: every other frame
    ring = RingBuffer(16, S, S, lossless=True)
    sampler = ClipSampler(ring, "cam", frames=4, frame_interval=99, hop_s=0.5, sample_fps=15)
    clips = _run(sampler, ring, [i / 30 for i in range(40)])
    assert [c.last_frame for c in clips] == [6, 21, 36]  # 0.2 s of clip, then 0.5 s hops
    assert _frame_indices(clips[0]) == [0, 2, 4, 6]
    # 25 fps sampled at 10 fps: targets fall half way between frames; ties go to the later frame
    ring = RingBuffer(16, S, S, lossless=True)
    sampler = ClipSampler(ring, "cam", frames=4, frame_interval=1, hop_s=1.0, sample_fps=10)
    clips = _run(sampler, ring, [i / 25 for i in range(12)])
    assert [_frame_indices(c) for c in clips] == [[1, 3, 6, 8]]  # end 0.32 s: targets 0.02, 0.12, 0.22, 0.32
    # a 5 fps source sampled at 10 fps repeats frames
    ring = RingBuffer(16, S, S, lossless=True)
    sampler = ClipSampler(ring, "cam", frames=4, frame_interval=1, hop_s=1.0, sample_fps=10)
    clips = _run(sampler, ring, [i / 5 for i in range(3)])
    # end 0.4 s: targets 0.1 (tie -> 0.2), 0.2, 0.3 (tie -> 0.4), 0.4
    assert [_frame_indices(c) for c in clips] == [[1, 1, 2, 2]]


def test_sample_fps_releases_frames_so_a_small_lossless_ring_never_blocks() -> None:
    ring = RingBuffer(9, S, S, lossless=True)  # clip of 0.2 s at 30 fps covers 7 frames
    sampler = ClipSampler(ring, "cam", frames=4, frame_interval=1, hop_s=0.05, sample_fps=15)
    clips = _run(sampler, ring, [i / 30 for i in range(300)])  # _push asserts write_slot never blocks
    # first clip at 0.2 s, then one per 0.05 s grid point up to 9.967 s
    assert len(clips) == 1 + int((299 / 30 - 0.2) / 0.05 + 1e-6)


def _clip_signature(clips: list[Clip], first_index: int, t0_s: float) -> list[tuple]:
    return [
        (c.first_frame - first_index, c.last_frame - first_index, round(c.start_stream_s - t0_s, 6),
         round(c.end_stream_s - t0_s, 6), tuple(int(f[0, 0, 0]) for f in c.frames))
        for c in clips
    ]  # fmt: skip


@pytest.mark.parametrize("sample_fps", [None, 10.0])
def test_a_run_started_at_a_cut_equals_a_fresh_run_on_the_rest(sample_fps: float | None) -> None:
    fps, cut = 25.0, 37
    timestamps = [i / fps for i in range(120)]
    ring = RingBuffer(32, S, S)
    sampler = ClipSampler(ring, "cam", frames=4, frame_interval=2, hop_s=0.3, sample_fps=sample_fps)
    _run(sampler, ring, timestamps[:cut])
    sampler.restart(ring.head_seq)  # the cut
    after_cut = _run(sampler, ring, timestamps[cut:], first_index=cut)
    fresh_ring = RingBuffer(32, S, S)
    fresh = ClipSampler(fresh_ring, "cam", frames=4, frame_interval=2, hop_s=0.3, sample_fps=sample_fps)
    fresh_clips = _run(fresh, fresh_ring, [t - timestamps[cut] for t in timestamps[cut:]], first_index=cut)
    assert len(after_cut) >= 5
    assert _clip_signature(after_cut, cut, timestamps[cut]) == _clip_signature(fresh_clips, cut, 0.0)


def test_a_file_cut_part_gives_the_same_clips_as_the_whole_file_restarted_at_the_cut(tmp_path: Path) -> None:
    whole = make_video(tmp_path / "whole.mp4", 80, 25, size=(64, 64), codec="MJPG")
    rest = make_video(tmp_path / "rest.mp4", 50, 25, size=(64, 64), codec="MJPG", start_index=30)

    def clips_of(path: Path, restart_at: int | None) -> list[tuple]:
        ring = RingBuffer(12, 32, 32, lossless=True)
        sampler = ClipSampler(ring, "f", frames=4, frame_interval=2, hop_s=0.32)
        fitter, out = FrameFitter(32), []
        t0 = None
        for _, frame, ts in video_frames(path):
            slot = ring.write_slot(timeout_s=0)
            assert slot is not None
            fitter.fit(frame, slot)
            seq = ring.commit(FrameMeta(ring.head_seq, 0.0, 0.0, ts))
            if seq == restart_at:
                sampler.restart(seq)
            if seq == (restart_at or 0):
                t0 = ts
            if sampler.on_frame(seq) and t0 is not None:
                clip = sampler.cut(np.empty((4, 32, 32, 3), np.uint8))
                codes = tuple(decode_index(f) for f in clip.frames)
                out.append((codes, round(clip.start_stream_s - t0, 6), round(clip.end_stream_s - t0, 6)))
        return out

    restarted = clips_of(whole, restart_at=30)
    assert len(restarted) == len(clips_of(rest, restart_at=None)) >= 5
    assert restarted == clips_of(rest, restart_at=None)
    assert restarted[0][0] == (30, 32, 34, 36)


def test_a_late_caller_gets_the_newest_due_clip_and_skips_are_counted() -> None:
    ring = RingBuffer(64, S, S)
    sampler = ClipSampler(ring, "cam", frames=2, frame_interval=1, hop_s=0.04)  # a clip every frame
    for i in range(5):  # due at every frame, never cut
        assert sampler.on_frame(_push(ring, i, i / 25)) == (i >= 1)
    assert sampler.clips_skipped == 3  # due at 1, 2, 3 replaced; 4 is still due
    clip = sampler.cut(np.empty((2, S, S, 3), np.uint8))
    assert (clip.first_frame, clip.last_frame) == (3, 4)
    for i in range(5, 10):  # frames pushed but the reader feeds only the last one: a jump over 5 grid points
        seq = _push(ring, i, i / 25)
    assert sampler.on_frame(seq)
    assert sampler.clips_skipped == 3 + 4
    assert sampler.cut(np.empty((2, S, S, 3), np.uint8)).last_frame == 9


def test_a_frame_overwritten_before_the_cut_raises_frame_gone() -> None:
    ring = RingBuffer(4, S, S)  # live
    sampler = ClipSampler(ring, "cam", frames=3, frame_interval=1, hop_s=1.0)
    for i in range(3):
        due = sampler.on_frame(_push(ring, i, i / 25))
    assert due
    for i in range(3, 6):  # the writer goes round while the reader is busy
        _push(ring, i, i / 25)
    with pytest.raises(FrameGone):
        sampler.cut(np.empty((3, S, S, 3), np.uint8))
    assert sampler.clips_skipped == 1 and ring.frames_dropped >= 1


def test_cut_without_a_due_clip_and_bad_arguments() -> None:
    ring = RingBuffer(4, S, S)
    sampler = ClipSampler(ring, "cam", frames=2, frame_interval=1, hop_s=1.0)
    with pytest.raises(RuntimeError, match="no clip is due"):
        sampler.cut(np.empty((2, S, S, 3), np.uint8))
    with pytest.raises(ValueError, match="hop_s"):
        ClipSampler(ring, "cam", hop_s=0)
    with pytest.raises(ValueError, match="sample_fps"):
        ClipSampler(ring, "cam", sample_fps=-1)
