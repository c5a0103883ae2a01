"""Write a training run: checkpoint, symbol table, metrics.json and the plots."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from service.symbols import FORMAT_VERSION, GroupSymbols, InputSpec, SymbolTable, UnitSymbol

from .naming import Naming
from .worlds import SortOfClevrWorld, World

if TYPE_CHECKING:
    from .train import TrainConfig, TrainedModel

__all__ = ["build_symbol_table", "save_run", "CHECKPOINT", "SYMBOLS", "METRICS"]

CHECKPOINT = "checkpoint.pt"
SYMBOLS = "symbols.json"
METRICS = "metrics.json"


def build_symbol_table(world: World, naming: Naming, metrics: dict) -> SymbolTable:
    """Describe every group and unit for the runtime: factor, entity, value and pixel."""
    groups = []
    for group in naming.groups:
        if group.factor is None:
            units = [UnitSymbol(value=None, status="dead" if u.status == "dead" else "mixed", purity=0.0) for u in group.units]
            groups.append(GroupSymbols(factor=None, units=units))
            continue
        factor = world.factors[group.factor]
        units = []
        for unit in group.units:
            if unit.value is None:
                units.append(UnitSymbol(value=None, status="dead", purity=0.0))
                continue
            pixel = factor.pixel_centre(unit.value) if factor.axis is not None else None
            units.append(UnitSymbol(value=factor.values[unit.value], status=unit.status, purity=unit.purity, pixel=pixel))
        groups.append(
            GroupSymbols(factor=factor.name, entity=factor.entity, attribute=factor.attribute, axis=factor.axis, units=units)
        )
    entities = world.entities or ["o1"]
    if not world.entities:
        for g in groups:
            if g.factor is not None:
                g.entity = "o1"
    entity_attributes = {colour: {"colour": colour} for colour in entities} if isinstance(world, SortOfClevrWorld) else {}
    return SymbolTable(
        format_version=FORMAT_VERSION,
        world=world.name,
        input=InputSpec(height=world.height, width=world.width),
        entities=entities,
        entity_attributes=entity_attributes,
        groups=groups,
        metrics=metrics,
    )


def _summary_metrics(report: dict) -> dict:
    """Select the part of the report that travels inside the model file."""
    wta = report["wta"]
    decode = wta["decode_accuracy"]
    return {
        "seed": report["seed"],
        "hard_task_accuracy": wta["hard_task_accuracy"],
        "min_decode_accuracy": min(decode.values()),
        "mean_decode_accuracy": float(np.mean(list(decode.values()))),
        "single_valued_share": wta["single_valued_share"],
        "dead_units": wta["dead_units"],
        "mixed_units": wta["mixed_units"],
    }


def save_run(out: Path, config: "TrainConfig", world: World, trained: "TrainedModel", report: dict, auc: np.ndarray) -> None:
    assert trained.naming is not None
    table = build_symbol_table(world, trained.naming, _summary_metrics(report))
    torch.save(
        {
            "config": asdict(config),
            "state_dict": trained.net.state_dict(),
            "group_sizes": trained.net.sizes,
        },
        out / CHECKPOINT,
    )
    (out / SYMBOLS).write_text(table.model_dump_json(indent=1))
    (out / METRICS).write_text(json.dumps(report, indent=1))
    _plot_heatmap(out / "auc_heatmap.png", world, trained.naming, auc)
    _plot_curves(out / "curves.png", report)


def _plot_heatmap(path: Path, world: World, naming: Naming, auc: np.ndarray) -> None:
    """Unit x factor-value AUC, units ordered by the value they name: a symbolic code is a diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offsets = np.concatenate([[0], np.cumsum([f.size for f in world.factors])[:-1]])
    order, unit = [], 0
    keys = []
    for group in naming.groups:
        for u in group.units:
            key = offsets[group.factor] + u.value if (group.factor is not None and u.value is not None) else 10**9
            keys.append((key, unit))
            unit += 1
    order = [u for _, u in sorted(keys)]
    figure, axes = plt.subplots(figsize=(7, 6))
    image = axes.imshow(auc[order], aspect="auto", cmap="viridis", vmin=0.5, vmax=1.0, interpolation="nearest")
    for boundary in offsets[1:]:
        axes.axvline(boundary - 0.5, color="white", linewidth=0.3)
    axes.set_xlabel("factor value (factors in order: " + ", ".join(f.name for f in world.factors[:6]) + (" ..." if len(world.factors) > 6 else "") + ")")
    axes.set_ylabel("WTA unit (sorted by named value; unnamed last)")
    axes.set_title(f"{world.name}: AUC of each unit's win for each factor value")
    figure.colorbar(image, ax=axes, label="AUC")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_curves(path: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    curves = report["curves"]
    steps = [c["step"] for c in curves]
    left.plot(steps, [c["loss"] for c in curves], label="WTA")
    right.plot(steps, [c["hard_task_accuracy"] for c in curves], label="WTA, hard code")
    right.plot(steps, [c["soft_task_accuracy"] for c in curves], label="WTA, soft code", linestyle="--")
    if report.get("dense_curves"):
        dense = report["dense_curves"]
        left.plot([c["step"] for c in dense], [c["loss"] for c in dense], label="dense")
        right.plot([c["step"] for c in dense], [c["hard_task_accuracy"] for c in dense], label="dense")
    left.set_xlabel("step")
    left.set_ylabel("task loss (smoothed)")
    left.legend()
    right.set_xlabel("step")
    right.set_ylabel("task accuracy on fresh images")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
