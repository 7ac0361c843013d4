"""``StreamWorker``: the daemon's host of one ``StreamPipeline``: a thread that steps it, and its mailbox.

The pipeline is the only reader of its stream's ring, so every reset of the stream runs on this thread: requests
from other threads (the control socket, the source's events) queue in a small mailbox and are performed between
frames; a deferred one (a source discontinuity, the end of a file) waits until the pipeline has used the frames
before its cut (``StreamPipeline.ready``). A lossless submit that waits for the engine gives up when the worker
is stopping or a reset that is not deferred is waiting (the clip belongs to the closing segment).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from vstmon.log import get_logger
from vstmon.stage import Stage
from vstmon.stream.pipeline import ResetRequest, StreamPipeline

__all__ = ["StreamWorker"]

_log = get_logger("worker")

_WAIT_S = 0.1  # longest a worker waits for a frame before checking its mailbox and the stop event
_MAILBOX_REQUESTS = 64  # reset requests waiting for the worker (more are dropped, oldest first)


class StreamWorker(Stage):
    """One stream's consumer thread around its ``StreamPipeline`` (see the module docstring)."""

    def __init__(self, pipeline: StreamPipeline) -> None:
        super().__init__(f"worker-{pipeline.name}")
        self.pipeline = pipeline
        self.stream = pipeline.name
        pipeline.interrupted = self.interrupted
        self._requests: deque[ResetRequest] = deque(maxlen=_MAILBOX_REQUESTS)
        self._lock = threading.Lock()
        self._progress_mono_s = time.monotonic()  # the worker last handled a frame, or found none waiting

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.pipeline.start()
        super().start()

    def progress(self) -> tuple[bool, float]:
        """(frames waiting for the worker, seconds since it last handled a frame or found none to handle)."""
        busy = not self.pipeline.ring.closed and self.pipeline.pending
        return busy, time.monotonic() - self._progress_mono_s

    def stall_problem(self, since_s: float) -> str:
        return f"worker {self.stream}: no frame handled for {since_s:.0f} s with frames waiting"

    def interrupted(self) -> bool:
        """A waiting submit gives up: the worker is stopping, or a reset that is not deferred is waiting."""
        if self.stopping:
            return True
        with self._lock:
            return bool(self._requests) and not self._requests[0].deferred

    # -- requests from other threads --------------------------------------------------------------------------
    def request_reset(self, request: ResetRequest, wait_s: float | None = None) -> int | None:
        """Queue a reset for the worker thread; with ``wait_s``, wait for it and return the new segment."""
        if wait_s is not None:
            request.done = threading.Event()
        with self._lock:
            self._requests.append(request)
        if wait_s is None or request.done is None:
            return None
        if not request.done.wait(wait_s):
            return None
        return request.segment

    # -- the loop ---------------------------------------------------------------------------------------------
    def _run(self) -> None:
        pipeline = self.pipeline
        ring = pipeline.ring
        try:
            while not self.stopping:
                request = self._next_request()
                if request is not None:
                    pipeline.reset(request)
                    continue
                if not pipeline.pending:
                    if not ring.wait_for(pipeline.next_seq, _WAIT_S):
                        self._progress_mono_s = time.monotonic()  # nothing to do is not being stuck
                        if ring.closed:  # shutting down: wait for the stop event, do not spin
                            self._stop_event.wait(_WAIT_S)
                    # a frame came, or not: look at the mailbox first either way. A source reports a
                    # discontinuity before it commits the frame after it, so its reset is performed before
                    # that frame is stepped, whatever the threads' timing (as offline)
                    continue
                self._progress_mono_s = time.monotonic()
                pipeline.step()
        except Exception as error:  # a worker bug is logged; the daemon and other streams carry on
            _log.exception("stream worker failed", stream=self.stream, error=str(error))
        finally:
            with self._lock:
                pending = list(self._requests)
                self._requests.clear()
            for request in pending:
                if request.done is not None:
                    request.done.set()

    def _next_request(self) -> ResetRequest | None:
        with self._lock:
            if not self._requests:
                return None
            if not self.pipeline.ready(self._requests[0]):
                return None
            return self._requests.popleft()
