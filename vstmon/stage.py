"""``Stage``: a part of the daemon that runs on a thread of its own (a source, a stream worker, an engine, the
control socket). One way to start, stop and watch them, so that the supervisor keeps them in a list.

- ``start()`` runs ``_run`` on a daemon thread named ``name`` (once);
- ``stop()`` sets the stop event (``_run`` loops wait on it, never on a sleep) and calls ``_wake`` so that a
  loop blocked elsewhere (a condition, a socket poll) notices at once; it returns without waiting;
- ``join(timeout_s)`` waits for the thread; ``alive`` says whether it runs;
- ``progress()`` -> ``(work_waiting, seconds_since_progress)``: the watchdog's question. A stage with work waiting
  that makes no progress for ``service.progress_timeout_s`` is wedged (``service/health.py``).
"""

from __future__ import annotations

import threading

__all__ = ["Stage"]


class Stage:
    """Base of the daemon's threaded stages (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._thread = threading.Thread(target=self._run, name=self._thread_name(), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish (returns at once)."""
        self._stop_event.set()
        self._wake()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the thread; True when it has ended (or never started)."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def progress(self) -> tuple[bool, float]:
        """(work waiting, seconds since the stage last made progress or found nothing to do)."""
        return False, 0.0

    def stall_problem(self, since_s: float) -> str:
        """What a stage that ``progress`` finds stuck is doing wrong, for the log and ``STATUS=``."""
        return f"{self.name}: no progress for {since_s:.0f} s with work waiting"

    # -- for subclasses -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        raise NotImplementedError

    def _wake(self) -> None:
        """Wake a loop blocked on something other than the stop event (default: nothing to do)."""

    def _thread_name(self) -> str:
        return self.name
