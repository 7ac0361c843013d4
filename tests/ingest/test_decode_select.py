"""``decode: auto | cpu | nvdec``: which decoder reads a stream (vstmon/ingest/decode.py), the config keys, and the
clear refusal (exit 78, one line naming what is missing) of ``nvdec`` where it cannot run. CPU only: this machine
has neither a CUDA GPU nor PyNvVideoCodec, which is what the refusals need; NVDEC itself is tests/test_nvdec.py.
"""

from __future__ import annotations

import textwrap
import threading
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import run_vstmon
from tests.helpers.rtsp_fixtures import EventLog
from tests.helpers.videos import decode_index, make_video
from vstmon.config import Config, StreamConfig, parse_config, stream_decode
from vstmon.errors import EX_CONFIG, ConfigError
from vstmon.ingest.decode import DecodeUnavailable, NvdecEnvironment, choose_decode, probe_nvdec
from vstmon.ingest.ring import RingBuffer
from vstmon.ingest.source import Source
from vstmon.types import SourceState

READY = NvdecEnvironment(cuda=None, package=None)
NO_GPU = NvdecEnvironment(cuda="NVDEC needs a CUDA GPU (no CUDA device or driver found)", package=None)
NO_PACKAGE = NvdecEnvironment(
    cuda=None, package="NVDEC needs the PyNvVideoCodec package (pip install pynvvideocodec)"
)
needs_no_nvdec = pytest.mark.skipif(
    not probe_nvdec().missing, reason="this machine can run NVDEC: the refusals cannot happen here"
)


# -- the choice ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env", [READY, NO_GPU, NO_PACKAGE])
@pytest.mark.parametrize("kind", ["rtsp", "file", "webcam", "http", "testsrc"])
def test_cpu_is_always_opencv(env: NvdecEnvironment, kind: str) -> None:
    assert choose_decode("cpu", kind, env, "h264").path == "cpu"


@pytest.mark.parametrize(
    ("kind", "env", "codec", "path", "reason"),
    [
        ("rtsp", READY, None, "nvdec", "decode: auto, NVDEC"),  # before the stream is opened
        ("rtsp", READY, "h264", "nvdec", "NVDEC (h264)"),
        ("file", READY, "hevc", "nvdec", "NVDEC (hevc)"),
        ("file", READY, "av1", "nvdec", "NVDEC (av1)"),
        ("rtsp", NO_GPU, "h264", "cpu", "OpenCV: NVDEC needs a CUDA GPU"),
        ("file", NO_PACKAGE, None, "cpu", "OpenCV: NVDEC needs the PyNvVideoCodec package"),
        ("webcam", READY, None, "cpu", "NVDEC does not read webcam sources"),
        ("http", READY, "mjpeg", "cpu", "NVDEC does not read http sources"),
        ("testsrc", READY, None, "cpu", "NVDEC does not read testsrc sources"),
        ("file", READY, "mpeg4", "cpu", "codec mpeg4 stays on the CPU"),  # NVDEC could, auto leaves it
        ("file", READY, "msmpeg4v3", "cpu", "codec msmpeg4v3 stays on the CPU"),  # vtest.avi's codec
    ],
)
def test_auto_takes_nvdec_only_where_gpu_package_source_and_codec_allow(
    kind: str, env: NvdecEnvironment, codec: str | None, path: str, reason: str
) -> None:
    choice = choose_decode("auto", kind, env, codec)
    assert choice.path == path and reason in choice.reason


def test_nvdec_asked_for_is_nvdec_when_everything_is_there() -> None:
    assert choose_decode("nvdec", "rtsp", READY, None).path == "nvdec"
    assert choose_decode("nvdec", "file", READY, "mpeg4").path == "nvdec"  # asked for: any codec NVDEC has


@pytest.mark.parametrize(
    ("kind", "env", "codec", "message"),
    [
        ("rtsp", NO_GPU, None, "decode: nvdec, but NVDEC needs a CUDA GPU"),
        ("file", NO_PACKAGE, "h264", "decode: nvdec, but NVDEC needs the PyNvVideoCodec package"),
        ("webcam", READY, None, "NVDEC reads files and rtsp:// streams, not a webcam source"),
        ("file", READY, "msmpeg4v3", "the stream's codec msmpeg4v3 has no NVDEC decoder"),
    ],
)
def test_nvdec_asked_for_and_missing_names_what_is_missing(
    kind: str, env: NvdecEnvironment, codec: str | None, message: str
) -> None:
    with pytest.raises(DecodeUnavailable, match=message) as info:
        choose_decode("nvdec", kind, env, codec)
    assert "\n" not in str(info.value)


def test_both_missing_are_named_in_one_line() -> None:
    both = NvdecEnvironment(cuda=NO_GPU.cuda, package=NO_PACKAGE.package)
    with pytest.raises(DecodeUnavailable) as info:
        choose_decode("nvdec", "rtsp", both)
    assert (
        "CUDA GPU" in str(info.value) and "PyNvVideoCodec" in str(info.value) and "\n" not in str(info.value)
    )


@needs_no_nvdec
def test_this_machine_is_probed_as_it_is() -> None:
    env = probe_nvdec()
    if not torch.cuda.is_available():
        assert env.cuda is not None and env.cuda.startswith("NVDEC needs a CUDA GPU")
    assert env.missing and choose_decode("auto", "rtsp", env, "h264").path == "cpu"


# -- the config keys -------------------------------------------------------------------------------------------------
def test_decode_is_cpu_unless_asked_and_a_stream_overrides_the_global_setting() -> None:
    config = parse_config(
        {
            "ingest": {"decode": "auto", "gpu": 1},
            "streams": [
                {"name": "a", "url": "testsrc://"},
                {"name": "b", "url": "testsrc://", "decode": "cpu"},
            ],
        }
    )
    assert [stream_decode(config.ingest, s) for s in config.streams] == ["auto", "cpu"]
    assert config.ingest.gpu == 1
    assert Config().ingest.decode == "cpu"  # today's path stays the default
    assert StreamConfig(name="c", url="testsrc://").decode is None  # null: ingest.decode


def test_a_bad_decode_value_names_its_key() -> None:
    with pytest.raises(ConfigError, match=r"streams\[0\]\.decode: .*'auto', 'cpu' or 'nvdec'"):
        parse_config({"streams": [{"name": "a", "url": "testsrc://", "decode": "gpu"}]})
    with pytest.raises(ConfigError, match=r"ingest\.decode: "):
        parse_config({"ingest": {"decode": "NVDEC"}})


# -- vstmon check and vstmon run refuse nvdec here ---------------------------------------------------------------------
def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(body))
    return path


@needs_no_nvdec
@pytest.mark.parametrize("command", [("check", "--no-model"), ()], ids=["check", "run"])
def test_nvdec_without_gpu_or_package_exits_78_naming_what_is_missing(tmp_path: Path, command: tuple) -> None:
    path = _config(
        tmp_path,
        """\
        ingest: {decode: nvdec}
        streams: [{name: cam, url: 'rtsp://127.0.0.1:9/x'}, {name: door, url: 'rtsp://127.0.0.1:9/y'}]
        model: {checkpoint: null}
        publish: {endpoints: ['ipc://pub.sock'], control: null}
        """,
    )
    done = run_vstmon(*command, "--config", str(path), cwd=tmp_path)
    assert done.returncode == EX_CONFIG, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines  # two streams, one key that asked: one line
    assert lines[0].startswith(f"vstmon: error: {path}: ingest.decode: nvdec, but ")
    env = probe_nvdec()
    for reason in env.missing:
        assert reason in lines[0]
    assert "Traceback" not in done.stderr


@needs_no_nvdec
def test_each_stream_that_asks_for_nvdec_gets_its_line_and_a_webcam_is_named(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        """\
        streams:
          - {name: cam, url: 'rtsp://127.0.0.1:9/x', decode: nvdec}
          - {name: pattern, url: 'testsrc://', decode: nvdec}
          - {name: other, url: 'testsrc://', decode: auto}
        """,
    )
    done = run_vstmon("check", "--no-model", "--config", str(path), cwd=tmp_path)
    assert done.returncode == EX_CONFIG
    keys = [line.split(": ")[3] for line in done.stderr.strip().splitlines()]
    assert keys == ["streams[0].decode", "streams[1].decode", "streams[1].decode"]
    assert "stream pattern is a testsrc source; NVDEC reads files and rtsp:// streams" in done.stderr


def test_auto_and_cpu_pass_the_check_here(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        """\
        ingest: {decode: auto}
        streams: [{name: cam, url: 'testsrc://'}, {name: door, url: 'testsrc://', decode: cpu}]
        """,
    )
    done = run_vstmon("check", "--no-model", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr


# -- auto on this machine reads through OpenCV as before ---------------------------------------------------------------
@needs_no_nvdec
def test_auto_reads_a_real_h264_file_with_opencv_here(tmp_path: Path) -> None:
    video = make_video(tmp_path / "clip.mp4", 30, 25.0, size=(320, 240), codec="h264")
    ring = RingBuffer(40, 64, 64, lossless=True)
    events = EventLog()
    source = Source(StreamConfig(name="cam", url=str(video)), ring, 64, events, decode="auto", gpu=0)
    source.start()
    try:
        assert events.wait_state(SourceState.ENDED, timeout_s=30), events.states()
    finally:
        source.stop()
        source.join()
    assert [decode_index(ring.frame(seq)) for seq in range(30)] == list(range(30))  # every frame, in order
    assert not [t for t in threading.enumerate() if t.name.startswith("nvdec")]
