"""Wall time of each default training configuration against the 15-minute budget, with its targets.

By default the section runs `python -m training --world W --out runs/bench/W --seed 0`
for every built-in world except `tiny` and times each command; the run directories stay
for inspection. With `--training-runs DIR` it reads
`DIR/<world>/metrics.json` of runs that were already made by that command, and takes the
`total_seconds` the command measured itself (from rendering to the end of the report,
without interpreter start-up and the plots).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from training.configs import default_config

from .common import Comparison, Section

__all__ = ["BUDGET_SECONDS", "WORLDS", "run"]

RUNS = Path(__file__).resolve().parent.parent / "runs" / "bench"
BUDGET_SECONDS = 15 * 60
WORLDS = ("sortofclevr", "sprites")
MIN_DECODE = 0.995  # lowest per-factor decode accuracy the default configurations must reach
MIN_SINGLE_VALUED = 0.95  # share of units whose AUC is >= 0.99 for exactly one factor value


def _train(world: str, out: Path) -> float:
    command = [sys.executable, "-m", "training", "--world", world, "--out", str(out), "--seed", "0", "--no-progress"]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def _compare(section: Section, world: str, metrics: dict, seconds: float, source: str) -> None:
    wta = metrics["wta"]
    lowest = min(wta["decode_accuracy"].values())
    section.measurements[f"{world}_seconds"] = round(seconds, 1)
    section.measurements[f"{world}_wta_train_seconds"] = round(wta["train_seconds"], 1)
    if "dense" in metrics:
        section.measurements[f"{world}_dense_train_seconds"] = round(metrics["dense"]["train_seconds"], 1)
    section.measurements[f"{world}_lowest_decode_accuracy"] = lowest
    section.measurements[f"{world}_single_valued_share"] = wta["single_valued_share"]
    # JSON turns tuples into lists, so the default is compared in its JSON form.
    if metrics["config"] != json.loads(json.dumps(asdict(default_config(world)))):
        section.notes.append(f"{world}: the run's config differs from the current default configuration")
    section.comparisons += [
        Comparison(
            f"{world}: training wall time / 15 min budget",
            seconds / BUDGET_SECONDS,
            f"{seconds / 60:.1f} min ({source}), of which WTA training {wta['train_seconds'] / 60:.1f} min",
            1.0,
            "max",
        ),
        Comparison(f"{world}: lowest per-factor decode accuracy", lowest, f"{lowest:.4f} on fresh images", MIN_DECODE),
        Comparison(
            f"{world}: single-valued unit share", wta["single_valued_share"], f"{wta['units']} units", MIN_SINGLE_VALUED
        ),
    ]


def run(args) -> Section:
    section = Section("training")
    runs: Path | None = getattr(args, "training_runs", None)
    for world in WORLDS:
        if runs is not None:
            metrics = json.loads((runs / world / "metrics.json").read_text())
            _compare(section, world, metrics, metrics["total_seconds"], f"from {runs / world}")
            continue
        out = RUNS / world
        seconds = _train(world, out)
        metrics = json.loads((out / "metrics.json").read_text())
        _compare(section, world, metrics, seconds, "the whole command")
    return section
