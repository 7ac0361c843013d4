"""The typed configuration tree: ``load_config(path) -> Config``.

Unknown keys are rejected (with the closest known name, when one is close); every error names its YAML key
path and line (``config.yaml: streams[1].url: ... (line 12)``), one line per key. Every numeric field has lower
and upper bounds; NaN and infinities are refused everywhere. ``${VAR}`` (or ``${VAR:-default}``) in any string
is replaced from the environment, so secrets such as camera passwords stay out of the file. Top-level keys
starting with ``x-`` are ignored, so settings shared by many cameras can live there
(``x-camera: &camera {transport: udp}``, then ``- <<: *camera``).

The package, one responsibility a module:

- ``base``: ``StrictModel`` (the strict base), ``LocatedModel`` (a file's root: ``where(path)``), shared
  validators (``check_crop_size``, ``check_endpoint``);
- one module a section: ``model`` (model, clip), ``inference``, ``streams``, ``segments`` (reset,
  smoothing), ``subjects``, ``publish`` (+ curve), ``service`` (service, log, metrics, view); ``root``:
  ``Config``; ``arch_names``: the model names, without importing the model;
- ``reader``: the hardened YAML reader (size, UTF-8, alias/graph measurement, duplicate keys, key lines);
  ``env``: ``${VAR}`` expansion; ``load``: validation and error lines, ``load_config``;
- ``reference``: renders the shipped config.yaml from the schema.
"""

from __future__ import annotations

from vstmon.config.arch_names import ARCH_NAMES
from vstmon.config.base import KeyLocations, LocatedModel, StrictModel, check_crop_size, check_endpoint
from vstmon.config.inference import InferenceConfig, TritonServerConfig
from vstmon.config.load import EXTENSION_PREFIX, load_config, load_yaml_model, parse_config, validate_model
from vstmon.config.model import ClipConfig, ModelConfig
from vstmon.config.publish import CurveConfig, PublishConfig
from vstmon.config.reader import MAX_DEPTH, MAX_EXPANDED_CHARS, MAX_EXPANDED_NODES, MAX_FILE_BYTES
from vstmon.config.root import Config
from vstmon.config.segments import ResetConfig, SceneChangeConfig, SmoothingConfig
from vstmon.config.service import (
    LogConfig,
    MetricsConfig,
    ServiceConfig,
    ViewConfig,
    WorkersConfig,
    worker_processes,
)
from vstmon.config.streams import IngestConfig, ReconnectConfig, StreamConfig, stream_decode
from vstmon.config.subjects import SubjectsConfig

__all__ = [
    "ARCH_NAMES",
    "EXTENSION_PREFIX",
    "MAX_DEPTH",
    "MAX_EXPANDED_CHARS",
    "MAX_EXPANDED_NODES",
    "MAX_FILE_BYTES",
    "ClipConfig",
    "Config",
    "CurveConfig",
    "InferenceConfig",
    "IngestConfig",
    "KeyLocations",
    "LocatedModel",
    "LogConfig",
    "MetricsConfig",
    "ModelConfig",
    "PublishConfig",
    "ReconnectConfig",
    "ResetConfig",
    "SceneChangeConfig",
    "ServiceConfig",
    "SmoothingConfig",
    "StreamConfig",
    "StrictModel",
    "SubjectsConfig",
    "TritonServerConfig",
    "ViewConfig",
    "WorkersConfig",
    "check_crop_size",
    "check_endpoint",
    "load_config",
    "load_yaml_model",
    "parse_config",
    "stream_decode",
    "validate_model",
    "worker_processes",
]
