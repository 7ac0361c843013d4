"""The systemd notify protocol (sd_notify(3)): one datagram per message to ``$NOTIFY_SOCKET``.

Before ``READY=1`` systemd's ``TimeoutStartSec`` (90 s by default) runs, and the watchdog starts counting at
READY; a start-up that may take longer (a TensorRT build, a compile) runs inside ``extending_start``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

from vstmon.log import get_logger

__all__ = ["SystemdNotifier"]

_log = get_logger("sdnotify")


_EXTEND_EVERY_S = 10.0  # how often a long start-up says it is still going
_EXTEND_BY_S = 60.0  # how long each message gives it (several periods: a late message is not fatal)


class SystemdNotifier:
    """Sends ``READY=1``/``WATCHDOG=1``/``STOPPING=1`` to ``$NOTIFY_SOCKET`` when set; a no-op otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address: str | None = env.get("NOTIFY_SOCKET") or None
        if self._address and self._address.startswith("@"):  # abstract namespace
            self._address = "\0" + self._address[1:]
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        # ping at half the watchdog period, as sd_watchdog_enabled(3) advises
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if watchdog else None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, message: str) -> bool:
        """Send one notification; True when sent. Errors are logged, never raised."""
        if self._address is None:
            return False
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # never wait for systemd: a full queue drops this one message (logged) instead of stalling the tick
                self._socket.sendto(message.encode(), socket.MSG_DONTWAIT, self._address)
                return True
            except OSError as error:
                _log.warning("sd_notify failed", message=message, error=str(error))
                return False

    @contextlib.contextmanager
    def extending_start(
        self, every_s: float = _EXTEND_EVERY_S, extend_s: float = _EXTEND_BY_S
    ) -> Iterator[None]:
        """While the block runs (a warm-up before READY that may build an engine for minutes), tell systemd every
        ``every_s`` that start-up needs ``extend_s`` more (``EXTEND_TIMEOUT_USEC``), so that ``TimeoutStartSec``
        never fires. No ``WATCHDOG=1`` here: systemd's watchdog starts at READY, and the first ping follows it.
        The first message is sent on entry. A thread sends them, so a build that blocks the caller (but not the
        GIL) is covered. A no-op without ``$NOTIFY_SOCKET``."""
        if self._address is None:
            yield
            return
        message = f"EXTEND_TIMEOUT_USEC={round(extend_s * 1e6)}"
        done = threading.Event()

        def extend() -> None:
            self.notify(message)
            while not done.wait(every_s):
                self.notify(message)

        thread = threading.Thread(target=extend, name="sd-extend-start", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
