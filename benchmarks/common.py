"""The record every benchmark section returns, and small timing helpers shared by the sections."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal

__all__ = ["Comparison", "Section", "best_of", "best_of_interleaved", "least_cpu", "percentile"]


@dataclass
class Comparison:
    """One ratio of two measurements from the same run, with its target when it has one.

    `direction` is "min" when `ratio >= target` meets the target and "max" when
    `ratio <= target` does.
    """

    name: str
    ratio: float
    measured: str  # the two measurements behind the ratio, in words with their units
    target: float | None = None
    direction: Literal["min", "max"] = "min"

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio >= self.target if self.direction == "min" else self.ratio <= self.target

    def to_json(self) -> dict:
        return {**asdict(self), "met": self.met}


@dataclass
class Section:
    """The results of one benchmark section: its comparisons and the raw numbers behind them."""

    name: str
    comparisons: list[Comparison] = field(default_factory=list)
    measurements: dict[str, float | int | str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "comparisons": [c.to_json() for c in self.comparisons],
            "measurements": self.measurements,
            "notes": self.notes,
        }


def best_of(function: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """Return the fastest of `repeats` timed calls of `function`, in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def best_of_interleaved(functions: dict[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Return the fastest timed call of each function, in seconds, timing them in turns.

    Each round calls every function once, so a slow phase of a shared machine affects all
    of them alike instead of one measurement alone.
    """
    for _ in range(warmup):
        for function in functions.values():
            function()
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def least_cpu(function: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """Return the least CPU time of this process (all its threads) over `repeats` calls of `function`, in seconds."""
    for _ in range(warmup):
        function()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        function()
        best = min(best, time.process_time() - start)
    return best


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0-100) of `values`, interpolating between closest ranks."""
    if not values:
        raise ValueError("percentile of an empty list")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]
