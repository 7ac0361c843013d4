"""Exceptions raised by vstmon. Every one carries a message fit to show a user as is.

Each class also says how the command line exits on it (``exit_code``): configuration problems exit 78
(EX_CONFIG from sysexits.h, which the systemd unit lists in ``RestartPreventExitStatus=`` so that a bad
config is not restarted every few seconds); command-line misuse and other failures exit 2.
"""

from __future__ import annotations

__all__ = [
    "EX_CANTCREAT",
    "EX_CONFIG",
    "EX_DATAERR",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "CheckpointError",
    "ConfigError",
    "ConfigKeyError",
    "DetectorError",
    "FetchError",
    "LabelsError",
    "SourceError",
    "VstmonError",
]


EX_USAGE = 2  # command-line misuse (argparse's code) and failures that are not the configuration's
EX_DATAERR = (
    65  # sysexits.h: input data was wrong (a download whose SHA-256 does not match, a broken archive)
)
EX_UNAVAILABLE = 69  # sysexits.h: a service is unavailable (a download failed: network, DNS, HTTP errors)
EX_CANTCREAT = 73  # sysexits.h: an output file cannot be created
EX_CONFIG = 78  # sysexits.h: configuration error; the systemd unit does not restart on it


class VstmonError(Exception):
    """Base class: a problem the user can act on, described in plain words (no traceback needed).

    ``exit_code`` is the process exit status the command line uses for it.
    """

    exit_code: int = EX_USAGE


class ConfigError(VstmonError):
    """The configuration cannot be used: file, YAML, schema, a device that is not there, an endpoint that
    cannot bind. The message names the YAML key path (``config.yaml: streams[1].url: ...``), one line each."""

    exit_code = EX_CONFIG


class ConfigKeyError(ConfigError):
    """A ConfigError about one key, raised where the config file is not known (a port that cannot be bound, in
    the publisher or a server): ``key`` (``publish.endpoints[0]``) and ``detail``; the message is ``KEY: DETAIL``.
    Whoever holds the loaded config re-raises it as ``config.config_error(key, detail)``, which adds the file
    and the line (``config.yaml: publish.endpoints[0]: cannot bind ...: Address already in use (line 12)``)."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key}: {detail}")
        self.key = key
        self.detail = detail


class CheckpointError(VstmonError):
    """A checkpoint file cannot be used: unreadable, not a checkpoint, or its tensors do not fit the model."""

    exit_code = EX_CONFIG


class LabelsError(VstmonError):
    """A label list is missing, malformed, or its length does not match the classifier head."""

    exit_code = EX_CONFIG


class DetectorError(VstmonError):
    """A person-detector model cannot be used: missing, unreadable, or not an SSD graph OpenCV can run."""

    exit_code = EX_CONFIG


class FetchError(VstmonError):
    """Downloading or verifying weights failed. Exits 69 (EX_UNAVAILABLE: network, DNS, HTTP) unless the
    download arrived but is wrong (65, EX_DATAERR: SHA-256 mismatch, broken archive) or cannot be written (73,
    EX_CANTCREAT); misuse (an unknown name, a bad ``--sha256``) is a plain ``VstmonError`` (2)."""

    exit_code = EX_UNAVAILABLE

    def __init__(self, message: str, exit_code: int = EX_UNAVAILABLE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class SourceError(VstmonError):
    """A video source cannot be opened or read (the message names the stream, never its credentials)."""
