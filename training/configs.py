"""Default training configurations per world; these are the documented, reproducible recipes."""

from __future__ import annotations

from dataclasses import replace

from .model import ModelConfig
from .train import TrainConfig

__all__ = ["default_config"]

_DEFAULTS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(world="tiny", steps=1000, pool_size=3000, calibration_size=1000, test_size=1000, tasks=64, few_shot_sizes=(16,), restarts=3, restart_steps=200),
    "sprites": TrainConfig(world="sprites", steps=4000, pool_size=30000),
    "sortofclevr": TrainConfig(
        world="sortofclevr",
        steps=3000,
        pool_size=30000,
        temperature_start=0.3,  # 65-unit groups need a sharper start than 1.0 to carry signal
        temperature_end=0.02,
        model=ModelConfig(pixel_channels=(), overlap_weight=0.1),
    ),
}


def default_config(world: str) -> TrainConfig:
    """Return the default recipe for a built-in world, or a generic one for a labelled folder."""
    if world in _DEFAULTS:
        return replace(_DEFAULTS[world])
    return TrainConfig(world=world, steps=2000, pool_size=0, model=ModelConfig())
