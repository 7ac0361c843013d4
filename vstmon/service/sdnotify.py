"""The systemd notify protocol (sd_notify(3)): one datagram per message to ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import os
import socket
import threading

from vstmon.log import get_logger

__all__ = ["SystemdNotifier"]

_log = get_logger("sdnotify")


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

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
