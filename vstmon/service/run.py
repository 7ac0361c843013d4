"""``vstmon run --config config.yaml`` (the default command): the daemon under signals, until SIGTERM/SIGINT.

The config is read and checked before the daemon (and torch) is imported: a missing or bad file fails in a
fraction of a second, with one line per problem (exit 78).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from vstmon.config import load_config
from vstmon.errors import VstmonError
from vstmon.log import configure_logging, get_logger, redact_url
from vstmon.service.check import preflight

if TYPE_CHECKING:
    from vstmon.service.daemon import Daemon

__all__ = ["add_arguments", "run"]

_log = get_logger("daemon")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="the YAML config file (see config.yaml)")


def run(args: argparse.Namespace) -> int:
    """The daemon under a supervisor: SIGTERM/SIGINT stop it (a second SIGINT exits at once, code 130), SIGHUP
    reloads the config file (``ExecReload=``). Handlers only set flags and stay installed until the process exits;
    this loop does the work."""
    config = load_config(args.config)
    preflight(config)  # a missing device, checkpoint or label file: one line, exit 78
    configure_logging(config.log.level, config.log.format)
    from vstmon.service.daemon import Daemon  # torch and the pipeline: only once the config is good

    daemon = Daemon(config)
    reload_requested = threading.Event()

    def on_stop(signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT and daemon.stop_requested:
            os.write(2, b"vstmon: second interrupt: exiting at once\n")
            os._exit(130)  # on purpose: whoever presses Ctrl-C twice wants it gone now
        daemon.request_stop()

    def on_hangup(_signum: int, _frame: Any) -> None:
        reload_requested.set()
        daemon.wake()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hangup)
    try:
        daemon.start()
        while not daemon.wait(1.0):
            if reload_requested.is_set():
                reload_requested.clear()
                _reload(daemon, args.config)
        _log.info("stopping")
    finally:
        daemon.stop()
    return 0


def _reload(daemon: Daemon, path: str) -> None:
    """Re-read and check the config file; apply it, or keep running on the old one and say why."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")
    try:
        config = load_config(path)
        preflight(config)
    except VstmonError as error:
        message = redact_url(str(error)).replace("\n", "; ")
        _log.error("reload refused: the config has errors; still running on the previous one", error=message)
        daemon.notifier.notify(
            f"READY=1\nSTATUS=reload refused (still running the previous config): {message}"
        )
        return
    needs_restart = daemon.reload(config)
    status = "reloaded" + (f"; needs a restart for: {', '.join(needs_restart)}" if needs_restart else "")
    daemon.notifier.notify(f"READY=1\nSTATUS={status}")
