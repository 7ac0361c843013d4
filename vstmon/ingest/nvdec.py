"""Reading a file or an RTSP stream with NVIDIA's hardware decoder (NVDEC) through ``PyNvVideoCodec``: its
FFmpeg demuxer, its decoder, and DLPack to hand each frame to torch without a copy through the host.

NEEDS A GPU: nothing in this module has run on the machines it was written on (no GPU there). Its tests are
marked ``gpu`` (tests/test_nvdec.py); the choice of decoder (:mod:`vstmon.ingest.decode`) and the GPU frame
arithmetic (:mod:`vstmon.ingest.gpu_frames`) are tested on the CPU.

API used (PyNvVideoCodec 2.x, NVIDIA's programming guide and its samples): ``CreateDemuxer(filename=URL)`` (an
iterator of packets; ``GetNvCodecId()``, ``FrameRate()``, ``GetTimebaseNum()/Den()``), ``CreateDecoder(gpuid,
codec, cudacontext, cudastream, usedevicememory, outputColorType)`` with ``Decode(packet) -> [DecodedFrame]``;
a frame with ``OutputColorType.RGB`` is an ``(H, W, 3)`` uint8 device buffer that ``torch.from_dlpack`` takes,
and ``getPTS()`` is its timestamp in the stream's time base. The decoder runs its colour conversion on torch's
current CUDA stream, so torch work queued after it sees the finished frame.

Why a thread per reader: the demuxer has no read timeout (``CreateDemuxer`` takes only the URL), and a reader
that blocks forever on a hung camera would keep the source from ever declaring the stall. So a worker thread
demuxes and decodes, and :meth:`NvdecReader.read` waits for its next frame at most ``read_timeout_s``, as an
OpenCV read does. A worker stuck in FFmpeg on a hung server cannot be interrupted: on ``close`` it is left to
end when its connection does (it holds one decoder session and its surfaces until then; counted in
``abandoned_workers``).

Memory per reader: the decoder's surfaces (NVDEC's, ~8-20 frames at the stream's resolution, NV12) and at most
``_QUEUE_FRAMES`` + 1 decoded RGB frames (1080p: 6.2 MB each) in device memory.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np
import torch

from vstmon.ingest.decode import DecodeUnavailable, choose_decode, probe_nvdec
from vstmon.log import get_logger

__all__ = ["NvdecReader", "NvdecUnsupported", "codec_name"]

_QUEUE_FRAMES = 2  # decoded frames waiting for read(); a live reader drops the oldest beyond this (counted)
_END = object()  # the worker's last item: end of stream (or the error that ended it, as an exception)
_log = get_logger("ingest")
abandoned_workers = 0  # readers closed while their worker was still blocked in the demuxer (process-wide)


class NvdecUnsupported(Exception):
    """``decode: auto`` opened the stream and found NVDEC cannot decode it (codec, GPU): use OpenCV instead."""


def codec_name(nv_codec: Any) -> str:
    """PyNvVideoCodec's ``cudaVideoCodec`` value -> the FFmpeg-style name :mod:`vstmon.ingest.decode` uses."""
    name = getattr(nv_codec, "name", str(nv_codec)).rsplit(".", 1)[-1].lower()
    return {"jpeg": "mjpeg", "h265": "hevc"}.get(name, name)


class NvdecReader:
    """One opened file or RTSP stream on NVDEC, with the ``capture.Reader`` interface plus :meth:`read_tensor`.

    ``read()`` gives the frame as the CPU path does (an ``(H, W, 3)`` uint8 BGR host array; one device-to-host copy
    of the decoded frame), so the rest of the pipeline runs unchanged; ``read_tensor()`` gives it where it is, an
    ``(H, W, 3)`` uint8 RGB CUDA tensor, for consumers that keep frames on the GPU
    (:class:`~vstmon.ingest.gpu_frames.GpuFrameRing`). Use one of the two per reader.
    """

    def __init__(
        self,
        target: str,
        display: str,
        *,
        kind: str,
        requested: str,
        gpu: int,
        open_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        self.display, self.kind, self.live = display, kind, kind != "file"
        self.device = torch.device("cuda", gpu)
        self.read_timeout_s = float(read_timeout_s)
        self.fps = 0.0
        self.dropped_frames = 0  # live: decoded frames no read() took in time
        self._ts_s: float | None = None
        self._frames: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_FRAMES)
        self._opened = threading.Event()
        self._stop = threading.Event()
        self._open_error: BaseException | None = None
        self._ended = False
        self._worker = threading.Thread(
            target=self._work, args=(target, requested, gpu), name=f"nvdec {display}", daemon=True
        )
        self._worker.start()
        if not self._opened.wait(open_timeout_s):
            self.close()
            raise TimeoutError(f"NVDEC open of {display} timed out after {open_timeout_s:.1f} s")
        if self._open_error is not None:
            raise self._open_error

    # -- the worker thread ------------------------------------------------------------------------------------
    def _open(self, target: str, requested: str, gpu: int) -> tuple[Any, Any, float]:
        import PyNvVideoCodec as nvc

        demuxer = nvc.CreateDemuxer(filename=target)
        codec = codec_name(demuxer.GetNvCodecId())
        try:
            choice = choose_decode(requested, self.kind, probe_nvdec(gpu), codec)
        except DecodeUnavailable as error:
            raise ValueError(f"{self.display}: {error}") from None
        if choice.path != "nvdec":
            raise NvdecUnsupported(choice.reason)
        torch.cuda.set_device(self.device)
        try:
            decoder = nvc.CreateDecoder(
                gpuid=gpu,
                codec=demuxer.GetNvCodecId(),
                cudacontext=0,  # the primary context, which torch uses too
                cudastream=torch.cuda.current_stream(self.device).cuda_stream,
                usedevicememory=True,
                outputColorType=nvc.OutputColorType.RGB,
            )
        except nvc.PyNvVCExceptionUnsupported as error:
            if requested == "auto":
                raise NvdecUnsupported(
                    f"decode: auto, OpenCV: NVDEC refuses {codec} here ({error})"
                ) from None
            raise ValueError(
                f"{self.display}: decode: nvdec, but NVDEC refuses {codec} here ({error})"
            ) from None
        self.fps = float(demuxer.FrameRate() or 0.0)
        if not 0.0 < self.fps < 1000.0:
            self.fps = 0.0
        time_base_s = demuxer.GetTimebaseNum() / max(1, demuxer.GetTimebaseDen())
        _log.info("stream decoded on NVDEC", stream=self.display, codec=codec, gpu=gpu, reason=choice.reason)
        return demuxer, decoder, time_base_s

    def _put(self, item: Any) -> bool:
        """Queue one item for read(); a live stream drops its oldest frame rather than wait. False: stopping."""
        while not self._stop.is_set():
            try:
                self._frames.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self.live and item is not _END:
                    try:
                        self._frames.get_nowait()
                        self.dropped_frames += 1
                    except queue.Empty:
                        pass
        return False

    def _work(self, target: str, requested: str, gpu: int) -> None:
        try:
            demuxer, decoder, time_base_s = self._open(target, requested, gpu)
        except BaseException as error:  # handed to the constructor, which raises it in the caller's thread
            self._open_error = error
            self._opened.set()
            return
        self._opened.set()
        try:
            for packet in demuxer:
                for frame in decoder.Decode(packet):
                    rgb = torch.from_dlpack(frame).clone()  # (H, W, 3) uint8: out of the decoder's surface
                    if not self._put((rgb, float(frame.getPTS()) * time_base_s)):
                        return
                if self._stop.is_set():
                    return
            self._put(_END)
        except Exception as error:  # a broken connection or stream: read() reports it as the end of frames
            _log.warning(
                "NVDEC reader stopped", stream=self.display, error=f"{type(error).__name__}: {error}"
            )
            self._put(_END)

    # -- the Reader interface ---------------------------------------------------------------------------------
    def read_tensor(self) -> torch.Tensor | None:
        """The next frame as an (H, W, 3) uint8 RGB CUDA tensor, or None (end, failure, or no frame within
        ``read_timeout_s``: the source counts that as no progress, as with OpenCV)."""
        if self._ended:
            return None
        try:
            item = self._frames.get(timeout=self.read_timeout_s)
        except queue.Empty:
            return None
        if item is _END:
            self._ended = True
            return None
        frame, self._ts_s = item
        return frame

    def read(self) -> np.ndarray | None:
        """The next frame as the CPU path gives it: (H, W, 3) uint8 BGR on the host, or None."""
        frame = self.read_tensor()
        if frame is None:
            return None
        return frame.flip(-1).cpu().numpy()  # RGB -> BGR, one device-to-host copy

    @property
    def stream_ts_s(self) -> float | None:
        """The stream clock (PTS) of the frame just read: files only, as with OpenCV (live sources use the
        arrival clock)."""
        return None if self.live else self._ts_s

    def close(self) -> None:
        global abandoned_workers
        self._stop.set()
        self._worker.join(timeout=1.0)
        if self._worker.is_alive():
            abandoned_workers += 1
            _log.warning("NVDEC worker still blocked in the demuxer; left to end with its connection",
                         stream=self.display)  # fmt: skip
