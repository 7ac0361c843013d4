"""Scene-change (hard cut) and motion (idle) detectors on generated frames."""

from __future__ import annotations

import numpy as np
import pytest

from vstmon.config import SceneChangeConfig
from vstmon.stream.scene import MotionDetector, SceneChangeDetector

SIZE_PX = 128
FPS = 25.0
_YY, _XX = np.mgrid[0:SIZE_PX, 0:SIZE_PX].astype(np.float32)


def _finish(img: np.ndarray, rng: np.random.Generator, noise: float = 6.0) -> np.ndarray:
    """Add camera noise and quantise to uint8 RGB."""
    return np.clip(img + rng.normal(0.0, noise, img.shape), 0, 255).astype(np.uint8)


def scene_room(t: int) -> np.ndarray:
    """Warm room: horizontal colour waves and a red box moving right 2 px per frame."""
    img = np.empty((SIZE_PX, SIZE_PX, 3), np.float32)
    img[..., 0] = 90 + 60 * np.sin(_XX / 15 + t * 0.1)
    img[..., 1] = 120 + 40 * np.cos(_YY / 20)
    img[..., 2] = 60
    x0 = (10 + 2 * t) % (SIZE_PX - 30)
    img[30:60, x0 : x0 + 25] = (210, 50, 50)
    return img


def scene_yard(t: int) -> np.ndarray:
    """Blue yard: vertical waves and a yellow box moving down."""
    img = np.empty((SIZE_PX, SIZE_PX, 3), np.float32)
    img[..., 0] = 40
    img[..., 1] = 70 + 50 * np.sin(_YY / 10)
    img[..., 2] = 160 + 60 * np.cos(_XX / 12 + t * 0.1)
    y0 = (15 + t) % (SIZE_PX - 20)
    img[y0 : y0 + 20, 50:90] = (240, 240, 90)
    return img


_DARK, _BRIGHT = np.array([40, 60, 200], np.float32), np.array([200, 180, 40], np.float32)


def scene_left_right(t: int) -> np.ndarray:
    """Two colours, split left/right (slowly wobbling edge)."""
    edge = SIZE_PX // 2 + int(3 * np.sin(t / 5))
    return np.where((edge > _XX)[..., None], _DARK, _BRIGHT)


def scene_top_bottom(t: int) -> np.ndarray:
    """The same two colours in the same proportions, split top/bottom: only the layout differs."""
    edge = SIZE_PX // 2 + int(3 * np.sin(t / 5))
    return np.where((edge > _YY)[..., None], _BRIGHT, _DARK)


def grating(t: int) -> np.ndarray:
    """A high-contrast grating panning 3 px per frame (a moving pattern, no cut)."""
    grey = 127 + 110 * np.sin((_XX + 3 * t) / 8 + _YY / 20)
    return np.repeat(grey[..., None], 3, axis=2)


def run(detector: SceneChangeDetector, scenes: list, frames_each: int, seed: int = 0) -> list[int]:
    """Play the scenes one after the other; return the frame numbers where a cut was reported."""
    rng = np.random.default_rng(seed)
    cuts = []
    n = 0
    for scene in scenes:
        for _ in range(frames_each):
            if detector.update(_finish(scene(n), rng), n / FPS):
                cuts.append(n)
            n += 1
    return cuts


@pytest.mark.parametrize(
    ("first", "second"),
    [(scene_room, scene_yard), (scene_yard, scene_room), (scene_left_right, scene_top_bottom)],
    ids=["room-yard", "yard-room", "same-colours-new-layout"],
)
def test_hard_cut_is_detected_at_the_first_frame_of_the_new_scene(first, second) -> None:
    detector = SceneChangeDetector(SceneChangeConfig())
    assert run(detector, [first, second], frames_each=50) == [50]


@pytest.mark.parametrize("scene", [scene_room, scene_yard, scene_left_right, grating])
def test_moving_pattern_and_noise_are_not_a_cut(scene) -> None:
    detector = SceneChangeDetector(SceneChangeConfig(min_segment_s=0.0))
    assert run(detector, [scene], frames_each=150) == []
    assert detector.last_score < 0.5


def test_debounce_counts_from_the_last_cut() -> None:
    rng = np.random.default_rng(3)
    plan = [(scene_room, 50), (scene_yard, 10), (scene_room, 50)]  # cuts at 2.0 s, 2.4 s, 4.4 s

    def play(min_segment_s: float) -> list[int]:
        detector = SceneChangeDetector(SceneChangeConfig(min_segment_s=min_segment_s))
        cuts, n = [], 0
        for scene, count in plan:
            for _ in range(count):
                if detector.update(_finish(scene(n), rng), n / FPS):
                    cuts.append(n)
                n += 1
        return cuts

    assert play(0.2) == [50, 60]
    assert play(1.0) == [50]  # 60 is 0.4 s after 50: suppressed
    assert play(2.5) == []  # 50 is only 2.0 s after the start


def test_reset_restarts_the_reference_and_the_debounce() -> None:
    rng = np.random.default_rng(4)
    detector = SceneChangeDetector(SceneChangeConfig(min_segment_s=0.5))
    for n in range(30):
        detector.update(_finish(scene_room(n), rng), n / FPS)
    detector.reset()
    # the first frame after reset is the new reference, whatever it shows
    assert detector.update(_finish(scene_yard(30), rng), 30 / FPS) is False
    assert detector.update(_finish(scene_room(31), rng), 31 / FPS) is False  # within 0.5 s of the reset
    for n in range(32, 50):
        detector.update(_finish(scene_room(n), rng), n / FPS)
    assert detector.update(_finish(scene_yard(50), rng), 50 / FPS) is True


def test_stream_clock_restart_is_not_a_cut_and_restarts_debounce() -> None:
    rng = np.random.default_rng(5)
    detector = SceneChangeDetector(SceneChangeConfig(min_segment_s=1.0))
    for n in range(50):
        detector.update(_finish(scene_room(n), rng), n / FPS)
    assert detector.update(_finish(scene_yard(0), rng), 0.0) is False  # file looped: clock went back


def test_bad_frame_is_a_clear_error() -> None:
    detector = SceneChangeDetector(SceneChangeConfig())
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        detector.update(np.zeros((32, 32), np.uint8), 0.0)
    with pytest.raises(ValueError, match="uint8"):
        detector.update(np.zeros((32, 32, 3), np.float32), 0.0)


def test_motion_detector_idle_time() -> None:
    rng = np.random.default_rng(6)
    static = scene_left_right(0)
    detector = MotionDetector(threshold=2.0)
    idle = [detector.update(_finish(static, rng), n / FPS) for n in range(100)]
    assert idle[0] == 0.0
    assert idle[-1] == pytest.approx(99 / FPS)  # noise alone is not motion
    # a moving box is motion on every frame
    moving = [detector.update(_finish(scene_room(n), rng), (100 + n) / FPS) for n in range(20)]
    assert max(moving) <= 2 / FPS + 1e-9  # a small box moving 0.5 px/frame at 32 px: motion every 1-2 frames


def test_motion_detector_slow_drift_accumulates_into_motion() -> None:
    detector = MotionDetector(threshold=2.0)
    base = scene_left_right(0)
    rng = np.random.default_rng(7)
    idle = [detector.update(_finish(base + 0.1 * n, rng, noise=2.0), n / FPS) for n in range(200)]
    # brightening 0.1 grey level per frame: never 2 levels between neighbours, but >= 2 from the reference
    assert max(idle) < 1.0  # counted as motion about every 20 frames (0.8 s)


def test_motion_detector_reset() -> None:
    detector = MotionDetector()
    frame = np.full((64, 64, 3), 100, np.uint8)
    for n in range(50):
        detector.update(frame, n / FPS)
    assert detector.update(frame, 50 / FPS) == pytest.approx(2.0)
    detector.reset()
    assert detector.update(frame, 51 / FPS) == 0.0
