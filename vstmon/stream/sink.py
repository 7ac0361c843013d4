"""``ClipSink``: where a stream pipeline hands its clips, as the pipeline sees it.

The daemon's ``Engine`` (a thread batching across streams) and the offline ``SyncEngine`` of ``vstmon classify``
(batches run in the caller's thread) both are one; so is a proxy to an engine in another process. The pipeline
never imports them: it depends on this interface only (arrows point down, from inference to stream types).

Keys: a clip stream's ``Clip.key`` (the stream name, or ``"<stream>/<subject>"`` per subject).
"""

from __future__ import annotations

from typing import Protocol

from vstmon.types import Clip

__all__ = ["ClipSink"]


class ClipSink(Protocol):
    def submit(self, clip: Clip, block: bool = False, timeout_s: float | None = None) -> bool:
        """Queue ``clip`` (its frames are read until it is taken); at most one pending clip per key: a newer one
        replaces the pending one (counted). ``block``: wait up to ``timeout_s`` for the key's slot instead
        (lossless files); False when not queued."""
        ...

    def discard(self, key: str, before_segment: int) -> int:
        """Drop the key's pending and in-flight clips of segments before ``before_segment``."""
        ...

    def forget(self, key: str) -> int:
        """The clip stream is gone: drop its pending clips, never deliver its in-flight results."""
        ...

    def wait_idle(self, key: str, timeout_s: float) -> bool:
        """Wait until the key has no pending or in-flight clip (its results were delivered)."""
        ...
