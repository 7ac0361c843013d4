"""The NVDEC path (vstmon/ingest/nvdec.py) on a machine with an NVIDIA GPU and PyNvVideoCodec: real H.264 and HEVC
files and a real RTSP stream decode to the frames the CPU path gives (mean absolute difference < 2 of 255 after
the same fitting), on the stream clock from PTS; a restarted server is reconnected; a hung one is a stall; the
GPU ring's memory stays fixed over a looped run; ``auto`` takes NVDEC for H.264 and OpenCV for what NVDEC leaves.

Every test here is marked ``gpu`` and skips without CUDA; the module skips when PyNvVideoCodec is missing.
NOT YET RUN: written on machines without a GPU (see the issue's blocked note).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.helpers.rtsp_fixtures import EventLog, RtspServer, stream_config, wait_until
from tests.helpers.videos import FFMPEG, decode_index, make_video, video_frames
from vstmon.config import StreamConfig
from vstmon.ingest.capture import _CvReader, open_reader, parse_source
from vstmon.ingest.decode import probe_nvdec
from vstmon.ingest.fit import FrameFitter
from vstmon.ingest.gpu_frames import GpuFrameRing, fit_tensor
from vstmon.ingest.ring import RingBuffer
from vstmon.ingest.source import Source
from vstmon.types import Discontinuity, SourceState

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        bool(torch.cuda.is_available() and probe_nvdec().missing),
        reason="; ".join(probe_nvdec().missing) if torch.cuda.is_available() else "no CUDA",
    ),
]
SIZE_PX = 224
N_FRAMES = 50


@pytest.fixture(scope="module")
def h264_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(
        tmp_path_factory.mktemp("nvdec") / "clip.mp4", N_FRAMES, 25.0, (1280, 720), codec="h264"
    )


@pytest.fixture(scope="module")
def hevc_file(h264_file: Path) -> Path:
    out = h264_file.with_name("clip_hevc.mp4")
    subprocess.run(
        [FFMPEG, "-y", "-loglevel", "error", "-i", str(h264_file), "-c:v", "libx265", "-crf", "12",
         "-x265-params", "log-level=error", "-tag:v", "hvc1", str(out)],
        check=True, timeout=120,
    )  # fmt: skip
    return out


def cpu_frames(path: Path) -> list[tuple[np.ndarray, float]]:
    """(fitted RGB frame, stream clock) of every frame, as the CPU path decodes them."""
    fitter = FrameFitter(SIZE_PX)
    return [
        (fitter.fit(frame, np.empty((SIZE_PX, SIZE_PX, 3), np.uint8)), clock_s)
        for _, frame, clock_s in video_frames(path, cv2.CAP_FFMPEG)
    ]


def nvdec_reader(path_or_url: str, decode: str = "nvdec") -> object:
    cfg = StreamConfig(name="cam", url=path_or_url)
    return open_reader(cfg, parse_source(path_or_url), decode=decode, gpu=0)


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_a_file_decodes_to_the_cpu_paths_frames_on_the_pts_clock(
    codec: str, h264_file: Path, hevc_file: Path
) -> None:
    path = h264_file if codec == "h264" else hevc_file
    expected = cpu_frames(path)
    reader = nvdec_reader(str(path))
    assert type(reader).__name__ == "NvdecReader"
    got = []
    try:
        while (frame := reader.read_tensor()) is not None:  # type: ignore[attr-defined]
            assert frame.is_cuda and frame.dtype == torch.uint8 and frame.shape == (720, 1280, 3)
            got.append((fit_tensor(frame, SIZE_PX).cpu().numpy(), reader.stream_ts_s))  # type: ignore[attr-defined]
    finally:
        reader.close()  # type: ignore[attr-defined]
    assert len(got) == len(expected) == N_FRAMES
    for index, ((ours, ts_s), (theirs, their_ts_s)) in enumerate(zip(got, expected, strict=True)):
        diff = float(np.abs(ours.astype(np.int16) - theirs.astype(np.int16)).mean())
        assert diff < 2.0, f"frame {index}: mean difference {diff:.2f} of 255"
        assert decode_index(ours) == index
        assert ts_s == pytest.approx(their_ts_s, abs=1e-3)


def test_read_gives_the_host_frame_the_cpu_path_gives(h264_file: Path) -> None:
    reader = nvdec_reader(str(h264_file))
    capture = cv2.VideoCapture(str(h264_file), cv2.CAP_FFMPEG)
    try:
        for _ in range(5):
            ours, (ok, theirs) = reader.read(), capture.read()  # type: ignore[attr-defined]
            assert ok and ours is not None and ours.shape == theirs.shape and ours.dtype == np.uint8
            assert float(np.abs(ours.astype(np.int16) - theirs.astype(np.int16)).mean()) < 2.0  # BGR both
    finally:
        reader.close()  # type: ignore[attr-defined]
        capture.release()


def test_auto_takes_nvdec_for_h264_and_opencv_for_mjpeg(h264_file: Path, tmp_path: Path) -> None:
    mjpeg = make_video(tmp_path / "clip.avi", 10, 25.0, (320, 240), codec="MJPG")
    reader = nvdec_reader(str(h264_file), decode="auto")
    other = nvdec_reader(str(mjpeg), decode="auto")
    try:
        assert type(reader).__name__ == "NvdecReader"
        assert isinstance(other, _CvReader)  # MJPEG stays on the CPU under auto
    finally:
        reader.close()  # type: ignore[attr-defined]
        other.close()  # type: ignore[attr-defined]


def test_the_gpu_rings_memory_is_fixed_over_a_looped_run(h264_file: Path) -> None:
    ring = GpuFrameRing(slots=75, size_px=SIZE_PX, device="cuda")
    assert ring.vram_bytes == 75 * SIZE_PX * SIZE_PX * 3  # 11.3 MB per stream
    allocated = []
    for _loop in range(3):
        reader = nvdec_reader(str(h264_file))
        try:
            while (frame := reader.read_tensor()) is not None:  # type: ignore[attr-defined]
                ring.write(frame, reader.stream_ts_s or 0.0)  # type: ignore[attr-defined]
        finally:
            reader.close()  # type: ignore[attr-defined]
        torch.cuda.synchronize()
        allocated.append(torch.cuda.memory_allocated())
    assert ring.next_seq == 3 * N_FRAMES
    assert allocated[1] == allocated[2], allocated  # nothing grows loop after loop


def test_a_source_on_nvdec_reads_every_frame_of_a_file(h264_file: Path) -> None:
    ring = RingBuffer(N_FRAMES + 5, SIZE_PX, SIZE_PX, lossless=True)
    events = EventLog()
    source = Source(
        StreamConfig(name="cam", url=str(h264_file)), ring, SIZE_PX, events, decode="nvdec", gpu=0
    )
    source.start()
    try:
        assert events.wait_state(SourceState.ENDED, 60.0), events.events
    finally:
        source.stop()
        source.join(10.0)
    assert [decode_index(ring.frame(seq)) for seq in range(N_FRAMES)] == list(range(N_FRAMES))


@pytest.mark.rtsp
@contextlib.contextmanager
def streaming_on_nvdec(url: str) -> Iterator[tuple[Source, RingBuffer, EventLog]]:
    """A source on NVDEC reading ``url``, once it has read 10 frames; stopped on the way out."""
    ring = RingBuffer(64, SIZE_PX, SIZE_PX)
    events = EventLog()
    source = Source(stream_config(url), ring, SIZE_PX, events, decode="nvdec", gpu=0)
    source.start()
    try:
        assert wait_until(lambda: source.stats()["frames_read"] >= 10, 30.0), events.events
        yield source, ring, events
    finally:
        source.stop()
        assert source.join(15.0)


def test_rtsp_on_nvdec_reconnects_after_the_server_restarts(rtsp_servers: Callable[..., RtspServer]) -> None:
    server = rtsp_servers()
    with streaming_on_nvdec(server.url) as (_source, ring, events):
        mark = len(events)
        server.kill()
        lost = events.wait_state(SourceState.RECONNECTING, 15.0, after=mark)
        assert lost is not None and lost.discontinuity == Discontinuity.RECONNECT, events.events[mark:]
        server.restart()
        assert events.wait_state(SourceState.STREAMING, 30.0, after=mark) is not None, events.events[mark:]
        assert wait_until(lambda: ring.head_seq - lost.at_seq >= 5, 15.0)


@pytest.mark.rtsp
def test_a_hung_rtsp_server_is_a_stall_on_nvdec_too(rtsp_servers: Callable[..., RtspServer]) -> None:
    server = rtsp_servers()
    with streaming_on_nvdec(server.url) as (_source, _ring, events):
        mark = len(events)
        frozen_s = time.monotonic()
        server.freeze()
        lost = events.wait_state(SourceState.RECONNECTING, 15.0, after=mark)
        assert lost is not None, events.events[mark:]
        assert time.monotonic() - frozen_s < 1.0 + 2.0  # stall_timeout_s 1 s + slack: the read timeout works
        server.thaw()
