"""``vstmon run --config config.yaml`` (the default command): the daemon under signals, until SIGTERM/SIGINT.

The config is read and checked before the daemon (and torch) is imported: a missing or bad file fails in a
fraction of a second, with one line per problem (exit 78).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vstmon.config import Config, load_config
from vstmon.errors import VstmonError
from vstmon.log import configure_logging, get_logger, redact_url
from vstmon.service.preflight import preflight

if TYPE_CHECKING:
    from vstmon.service.daemon import Daemon

__all__ = ["add_arguments", "run"]

_log = get_logger("daemon")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="the YAML config file (see config.yaml)")
    parser.add_argument(
        "--allow-untrained",
        action="store_true",
        help="if model.checkpoint does not exist (yet), run with untrained weights (labels meaningless, marked "
        "untrained) instead of exiting 78; for a first run without the weights",
    )


def untrained_if_missing(config: Config, source: str) -> Config:
    """``--allow-untrained``: ``config`` with ``model.checkpoint: null`` when its file does not exist, said loudly.

    Only a missing file is forgiven: a checkpoint that exists but cannot be read or does not fit still fails.
    """
    checkpoint = config.model.checkpoint
    if checkpoint is None or Path(checkpoint).exists():
        return config
    _log.warning(
        f"{source}: model.checkpoint {checkpoint} does not exist: running with UNTRAINED weights "
        "(--allow-untrained). Labels are MEANINGLESS (every one carries untrained=true) until the weights are "
        "there: `vstmon weights fetch NAME` (vstmon weights list), then restart the daemon"
    )
    return config.model_copy(update={"model": config.model.model_copy(update={"checkpoint": None})})


def run(args: argparse.Namespace) -> int:
    """The daemon under a supervisor: SIGTERM/SIGINT stop it (a second SIGINT exits at once, code 130), SIGHUP
    reloads the config file (``ExecReload=``). Handlers only set flags and stay installed until the process exits;
    this loop does the work."""
    config = load_config(args.config)
    configure_logging(config.log.level, config.log.format)
    given = config
    if args.allow_untrained:
        config = untrained_if_missing(config, str(args.config))
    preflight(config)  # a missing device, checkpoint or label file: one line, exit 78
    from vstmon.model.bundle import load_model_and_labels  # torch: only once the config is good
    from vstmon.service.daemon import Daemon

    # untrained because the checkpoint is missing: said once, loudly, above; the loader need not say it again
    loaded = load_model_and_labels(config, warn=False) if config is not given else None

    daemon = Daemon(config, loaded)
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
                _reload(daemon, args.config, args.allow_untrained)
        _log.info("stopping")
    finally:
        daemon.stop()
    _exit_now()
    return 0  # not reached


def _exit_now() -> None:
    """End the process once the daemon has stopped: every message was published and every socket closed.

    Not through the interpreter's finalisation: it resets the signal handlers first (a second SIGTERM from a
    service manager that grew impatient would then kill the process, exit -15), and a stage thread still busy
    past the shutdown deadline (an engine in a long CPU forward) would be torn down in native code (SIGABRT).
    Both were seen on a loaded 2-core machine."""
    lingering = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    stages = [name for name in lingering if name.startswith(("engine-", "worker-", "source-"))]
    if stages:
        _log.warning(
            "stage threads still busy after the shutdown deadline; exiting without them", threads=stages
        )
    zmq = sys.modules.get("zmq")
    if zmq is not None:  # closed sockets send what they still hold within their linger: let them, then end
        zmq.Context.instance().destroy(linger=500)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _reload(daemon: Daemon, path: str, allow_untrained: bool) -> None:
    """Re-read and check the config file; apply it, or keep running on the old one and say why."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")
    try:
        config = load_config(path)
        if allow_untrained:
            config = untrained_if_missing(config, str(path))
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
