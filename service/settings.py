"""Server settings as one pydantic model, filled from defaults, environment variables and flags.

Every field `name` has the flag `--name` (underscores become dashes) and the environment
variable `WTABRIDGE_NAME`. A flag wins over the environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reasoning.engine import Limits

from .cli import ArgumentParser
from .images import DEFAULT_MAX_PIXELS, MIN_MAX_PIXELS
from .inference import DEFAULT_MODEL

__all__ = ["ENV_PREFIX", "Settings", "SettingsError", "build_parser", "env_name", "flag_name", "load_settings"]

ENV_PREFIX = "WTABRIDGE_"
_REASONING = Limits()  # Query uses the reasoning engine's own default limits


class SettingsError(ValueError):
    """A setting with an invalid value; the message names the flag and the variable."""


class Settings(BaseModel):
    """Configuration of `python -m service`; each field has a flag and an environment variable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Path = Field(DEFAULT_MODEL, description="ONNX model file with a symbol table in its metadata")
    host: str = Field(
        "127.0.0.1", min_length=1, description="address to listen on; 0.0.0.0 or [::] listens on every interface"
    )
    port: int = Field(50051, ge=0, le=65535, description="TCP port to listen on; 0 picks a free port")
    provider: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="ONNX Runtime execution provider; auto takes CUDA when it loads, CPU otherwise"
    )
    threads: int | None = Field(
        None,
        ge=1,
        description=(
            "ONNX Runtime intra-op threads; unset uses the CPUs this process may use (affinity mask and cgroup quota)"
        ),
    )

    # Micro-batching: a batch runs when it is full or when its first request has waited the delay.
    # At the default delay of 0 a batch takes the requests that queued while the previous one ran:
    # a request that finds the model idle runs at once, and batches grow with the load.
    max_batch_size: int = Field(16, ge=1, description="maximum images in one ONNX Runtime call")
    max_batch_delay_ms: float = Field(
        0.0, ge=0.0, description="maximum time a request waits for others to join its batch, in milliseconds"
    )

    # Limits on requests.
    max_message_bytes: int = Field(
        32 * 2**20, ge=1024, description="maximum request message size in bytes; larger messages get RESOURCE_EXHAUSTED"
    )
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=MIN_MAX_PIXELS,
        description="maximum image size in pixels (width x height); larger images get RESOURCE_EXHAUSTED",
    )
    max_concurrent_rpcs: int = Field(
        64,
        ge=1,
        description=(
            "maximum RPCs in progress at once, streams and health checks included; further calls get RESOURCE_EXHAUSTED"
        ),
    )
    max_query_images: int = Field(16, ge=1, description="maximum images in one Query request")

    # Query: limits of the reasoning engine, one job per image.
    max_program_bytes: int = Field(
        _REASONING.program_bytes, ge=1, description="maximum size of a Query program in UTF-8 bytes"
    )
    solve_timeout_s: float = Field(
        _REASONING.wall_seconds, gt=0.0, description="maximum wall-clock time to ground and solve one image, in seconds"
    )
    solve_memory_mib: int = Field(
        _REASONING.memory_mib, ge=16, description="maximum memory a reasoning job may add to its worker process, in MiB"
    )
    max_answer_sets: int = Field(_REASONING.max_models, ge=1, description="maximum answer sets reported per image")
    max_atoms: int = Field(_REASONING.max_atoms, ge=1, description="maximum atoms reported per answer set")
    reasoning_workers: int = Field(
        2, ge=1, description="clingo worker processes; further Query jobs wait for a free one"
    )

    grace_s: float = Field(
        10.0,
        ge=0.0,
        description="on SIGTERM or SIGINT, seconds running RPCs may take to finish before they are cancelled",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="logging level")

    @property
    def address(self) -> str:
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 literal
        return f"{host}:{self.port}"

    def reasoning_limits(self) -> Limits:
        """Return the reasoning engine's limits for one Query job."""
        return Limits(
            wall_seconds=self.solve_timeout_s,
            memory_mib=self.solve_memory_mib,
            program_bytes=self.max_program_bytes,
            max_models=self.max_answer_sets,
            max_atoms=self.max_atoms,
        )


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _default_text(field: str) -> str:
    default = Settings.model_fields[field].default
    if field == "model":
        return "models/sortofclevr.onnx in the project"
    return "unset" if default is None else str(default)


_METAVARS = {
    "model": "FILE",
    "host": "HOST",
    "max_batch_delay_ms": "MS",
    "solve_timeout_s": "SECONDS",
    "grace_s": "SECONDS",
}


def build_parser(prog: str = "python -m service") -> argparse.ArgumentParser:
    """Return an argument parser with one flag per settings field.

    Flags default to `argparse.SUPPRESS`, so only the flags given on the command line
    appear in the parsed namespace and override the environment.
    """
    parser = ArgumentParser(
        prog=prog,
        description="Serve symbol extraction and ASP queries over gRPC (wtabridge.v1.Symbols).",
        epilog=f"Every flag can also be set by an environment variable: {ENV_PREFIX} and the field name in capitals.",
    )
    for name, field in Settings.model_fields.items():
        choices = getattr(field.annotation, "__args__", None) if name in ("provider", "log_level") else None
        parser.add_argument(
            flag_name(name),
            dest=name,
            default=argparse.SUPPRESS,
            choices=choices,
            metavar=None if choices else _METAVARS.get(name, "N"),
            help=f"{field.description} (default: {_default_text(name)}; env {env_name(name)})",
        )
    return parser


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from `environ` (default `os.environ`) and the flags in `argv`.

    Raises SettingsError naming the flag and the variable when a value is invalid;
    argparse itself exits with status 2 on an unknown flag.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for name in Settings.model_fields:
        text = environ.get(env_name(name), "")
        if text.strip():
            values[name] = text.strip()
            sources[name] = env_name(name)
    for name, text in vars(build_parser().parse_args(argv)).items():
        values[name] = text
        sources[name] = flag_name(name)
    try:
        return Settings.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        source = sources.get(name, name)
        raise SettingsError(f"invalid setting {source}={values.get(name)!r}: {first['msg']}") from None
