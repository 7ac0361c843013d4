"""Which decoder reads a stream: OpenCV/FFmpeg on the CPU (``cpu``) or NVIDIA's hardware decoder through the
``PyNvVideoCodec`` package (``nvdec``, :mod:`vstmon.ingest.nvdec`); ``auto`` takes NVDEC where it can.

``decode`` is set for all streams (``ingest.decode``) and per stream (``streams[].decode``, null = the global
one). The choice is :func:`choose_decode`, a pure function of what was asked, the kind of source, what this
machine has (:class:`NvdecEnvironment`, probed once by :func:`probe_nvdec`) and, once the stream is open, its
codec:

* ``cpu``: OpenCV, as always;
* ``nvdec``: NVDEC or nothing. A machine without a CUDA GPU or without the package, or a source NVDEC cannot
  read (a webcam, the test pattern, HTTP), is a configuration error found before anything starts (exit 78,
  one line naming what is missing: ``vstmon check`` and ``vstmon run`` alike); a codec NVDEC has no decoder
  for is found when the stream opens and fails that stream;
* ``auto``: NVDEC for files and RTSP streams when the GPU and the package are there and the codec is one of
  :data:`AUTO_CODECS`; OpenCV otherwise, with the reason logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

__all__ = [
    "AUTO_CODECS",
    "NVDEC_CODECS",
    "NVDEC_KINDS",
    "DecodeChoice",
    "DecodeUnavailable",
    "NvdecEnvironment",
    "choose_decode",
    "probe_nvdec",
]

DecodePath = Literal["cpu", "nvdec"]
NVDEC_KINDS = (
    "file",
    "rtsp",
)  # sources PyNvVideoCodec's FFmpeg demuxer opens (webcams, testsrc and HTTP do not)
# what NVDEC decodes at all (cudaVideoCodec), by FFmpeg-style name; a given GPU may lack some (AV1 before Ampere)
NVDEC_CODECS = frozenset({"h264", "hevc", "av1", "vp9", "vp8", "mpeg1", "mpeg2", "mpeg4", "vc1", "mjpeg"})
AUTO_CODECS = frozenset({"h264", "hevc", "av1", "vp9"})  # what ``auto`` moves to NVDEC: the camera codecs


class DecodeUnavailable(ValueError):
    """``decode: nvdec`` was asked for and cannot be had; the message names what is missing."""


@dataclass(frozen=True)
class NvdecEnvironment:
    """What NVDEC needs on this machine, each None when present or the reason it is not."""

    cuda: str | None  # a CUDA device torch can use (the decoded frames go to torch)
    package: str | None  # the PyNvVideoCodec package, importable

    @property
    def missing(self) -> list[str]:
        return [reason for reason in (self.cuda, self.package) if reason is not None]


@dataclass(frozen=True)
class DecodeChoice:
    path: DecodePath
    reason: str  # why, in words (logged with the stream)


def choose_decode(requested: str, kind: str, env: NvdecEnvironment, codec: str | None = None) -> DecodeChoice:
    """The decoder for a stream: ``requested`` auto | cpu | nvdec, the source ``kind`` (rtsp, file, webcam, http,
    testsrc), the machine, and the stream's ``codec`` once known (None before the stream is opened).

    Raises :class:`DecodeUnavailable` when ``nvdec`` was asked for and cannot be had.
    """
    if requested == "cpu":
        return DecodeChoice("cpu", "decode: cpu")
    if requested == "nvdec":
        problems = list(env.missing)
        if kind not in NVDEC_KINDS:
            problems.append(f"NVDEC reads files and rtsp:// streams, not a {kind} source")
        if codec is not None and codec not in NVDEC_CODECS:
            problems.append(f"the stream's codec {codec} has no NVDEC decoder")
        if problems:
            raise DecodeUnavailable("decode: nvdec, but " + "; ".join(problems))
        return DecodeChoice("nvdec", "decode: nvdec")
    if requested != "auto":
        raise ValueError(f"decode must be auto, cpu or nvdec; got {requested!r}")
    if kind not in NVDEC_KINDS:
        return DecodeChoice("cpu", f"decode: auto, OpenCV: NVDEC does not read {kind} sources")
    if env.missing:
        return DecodeChoice("cpu", "decode: auto, OpenCV: " + "; ".join(env.missing))
    if codec is not None and codec not in AUTO_CODECS:
        return DecodeChoice("cpu", f"decode: auto, OpenCV: codec {codec} stays on the CPU")
    return DecodeChoice("nvdec", "decode: auto, NVDEC" + (f" ({codec})" if codec else ""))


@cache
def probe_nvdec(gpu: int = 0) -> NvdecEnvironment:
    """What this machine has for NVDEC on CUDA device ``gpu`` (probed once per process: imports torch and,
    when there is a GPU, PyNvVideoCodec, which loads the driver's decoder library)."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        built = (
            "torch is built without CUDA" if torch.version.cuda is None else "no CUDA device or driver found"
        )
        cuda: str | None = f"NVDEC needs a CUDA GPU ({built})"
    elif gpu >= torch.cuda.device_count():
        cuda = f"NVDEC on cuda:{gpu} needs that GPU; {torch.cuda.device_count()} CUDA device(s) exist"
    else:
        cuda = None
    package: str | None = None
    if importlib.util.find_spec("PyNvVideoCodec") is None:
        package = (
            "NVDEC needs the PyNvVideoCodec package (pip install pynvvideocodec), which is not installed"
        )
    elif cuda is None:
        try:
            import PyNvVideoCodec  # noqa: F401
        except Exception as error:  # its import loads the driver's libnvcuvid: any failure means no NVDEC
            package = f"the PyNvVideoCodec package does not load ({type(error).__name__}: {error})"
    return NvdecEnvironment(cuda=cuda, package=package)
