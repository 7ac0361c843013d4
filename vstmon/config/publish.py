"""The ``publish`` section (ZeroMQ PUB endpoints, the control socket) and its ``curve`` keys. The key files
are read by ``vstmon.service.preflight`` after validation, not here: the schema does no I/O.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from vstmon.config.base import StrictModel, check_endpoint, fail_at

__all__ = ["CurveConfig", "PublishConfig"]


class CurveConfig(StrictModel):
    """ZeroMQ CURVE (encryption and client keys) for the PUB and control sockets; off while both are null."""

    secret_key: Path | None = Field(
        None,
        description="the daemon's secret key file (NAME.key_secret from `vstmon keys generate DIR`, mode 0600); "
        "null = CURVE off",
    )
    allowed_keys: Path | None = Field(
        None,
        description="directory of the public key files (NAME.key) of the clients allowed to connect; the only "
        "ones that can subscribe or send control commands; required with secret_key",
    )

    @property
    def enabled(self) -> bool:
        return self.secret_key is not None

    @model_validator(mode="after")
    def _both_or_neither(self) -> CurveConfig:
        if self.secret_key is not None and self.allowed_keys is None:
            raise fail_at(
                ("allowed_keys",),
                "required with secret_key: a directory of the clients' public key files (NAME.key)",
                None,
            )
        if self.secret_key is None and self.allowed_keys is not None:
            raise fail_at(
                ("secret_key",),
                "required with allowed_keys: the daemon's secret key file (`vstmon keys generate DIR` makes one)",
                None,
            )
        return self


class PublishConfig(StrictModel):
    """The ZeroMQ PUB socket(s) for labels and events, and the REP control socket."""

    endpoints: list[str] = Field(
        default_factory=lambda: ["tcp://*:5556"],
        min_length=1,
        max_length=64,
        description="ZeroMQ PUB bind endpoints: tcp://HOST:PORT, ipc://PATH or inproc://NAME",
    )
    control: str | None = Field(
        "tcp://127.0.0.1:5557", description="REP control socket (keep it local); null disables control"
    )
    top_k: int = Field(5, ge=1, le=1000, description="labels per message")
    heartbeat_s: float = Field(
        5.0, ge=0.1, le=3600, description="seconds between status messages (per stream and overall)"
    )
    sndhwm: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="messages queued per subscriber before dropping (a PUB never blocks)",
    )
    curve: CurveConfig = Field(
        default_factory=CurveConfig,
        description="CURVE for the PUB and control sockets: only clients with an allowed key connect",
    )

    @field_validator("endpoints")
    @classmethod
    def _check_endpoints(cls, value: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        for index, endpoint in enumerate(value):
            problem = check_endpoint(endpoint)
            if problem is None and endpoint in seen and not endpoint.endswith(":*"):
                problem = f"endpoint {endpoint!r} repeats endpoints[{seen[endpoint]}]"
            if problem is not None:
                raise fail_at((index,), problem, endpoint)
            seen[endpoint] = index
        return value

    @field_validator("control")
    @classmethod
    def _check_control(cls, value: str | None) -> str | None:
        if value is not None and (problem := check_endpoint(value)) is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _control_is_not_a_pub_endpoint(self) -> PublishConfig:
        # (a port of "*" is a fresh port the OS picks at each bind: never the same address twice)
        if self.control is not None and not self.control.endswith(":*") and self.control in self.endpoints:
            raise fail_at(("control",), f"{self.control!r} is also in publish.endpoints", self.control)
        return self
