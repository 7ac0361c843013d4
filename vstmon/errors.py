"""Exceptions raised by vstmon. Every one carries a message fit to show a user as is."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "FetchError",
    "LabelsError",
    "SourceError",
    "VstmonError",
]


class VstmonError(Exception):
    """Base class: a problem the user can act on, described in plain words (no traceback needed)."""


class ConfigError(VstmonError):
    """The configuration is invalid; the message names the YAML key path (e.g. ``streams[1].url``)."""


class CheckpointError(VstmonError):
    """A checkpoint file cannot be used: unreadable, not a checkpoint, or its tensors do not fit the model."""


class LabelsError(VstmonError):
    """A label list is missing, malformed, or its length does not match the classifier head."""


class FetchError(VstmonError):
    """Downloading or verifying an official checkpoint failed."""


class SourceError(VstmonError):
    """A video source cannot be opened or read (the message names the stream, never its credentials)."""
