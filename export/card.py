"""Write a model card (`NAME.md` beside `NAME.onnx`) from a training run's metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["write_card"]


def write_card(run_dir: str | Path, model: str | Path, command: str, limits: str = "", timing_note: str = "") -> Path:
    """Write the card next to `model` and return its path.

    The card states the training command and seed, input size, metrics on fresh images,
    and the minimum per-factor decode accuracy that the shipped-model test enforces: the
    measured minimum rounded down to whole percent, less one point for sampling noise.
    """
    run, model = Path(run_dir), Path(model)
    metrics = json.loads((run / "metrics.json").read_text())
    wta = metrics["wta"]
    decode = wta["decode_accuracy"]
    lowest = min(decode.values())
    threshold = max(0.0, math.floor(lowest * 100) / 100 - 0.01)
    config = metrics["config"]
    world = metrics["world"]
    lines = [
        f"# {model.stem}",
        "",
        f"WTA encoder for the `{world}` world, exported by `python -m export` with its symbol",
        "table in the model file's metadata.",
        "",
        "## How it was made",
        "",
        "```",
        command,
        f"python -m export {run} --out {model}",
        "```",
        "",
        f"Seed {metrics['seed']}, {config['steps']} steps of batch {config['batch_size']}, {config['tasks']} tasks,"
        f" WTA mode `{config['wta_mode']}`, temperature {config['temperature_start']} to {config['temperature_end']}.",
        f"Training took {wta['train_seconds'] / 60:.1f} min for the WTA network and {metrics['total_seconds'] / 60:.1f} min"
        " for the whole command, including rendering, the dense baseline and the report. " + (timing_note or ""),
        "",
        "## Input and output",
        "",
        "`image`: `uint8 [batch, height, width, 3]` RGB; see the symbol table's `input` for the size.",
        "Outputs `winners` and `confidences` per group, and `top_indices`, `top_probs` (top 3).",
        "",
        "## Execution providers",
        "",
        "Verified under ONNX Runtime's CPU provider at export: identical winners to PyTorch on",
        "2,202 images at batch sizes 1, 2, 7 and 64 and on blank images.",
        "NOTE: the CUDA provider has not been run on this file, because no GPU was available",
        "when it was built. The graph uses only standard opset-18 operators (Conv, Einsum,",
        "ReduceLogSumExp, ArgMax, Softmax, TopK and elementwise operators).",
        "",
        "## Metrics on fresh images of the world",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| hard-code task accuracy | {wta['hard_task_accuracy']:.4f} |",
        f"| soft-code task accuracy | {wta['soft_task_accuracy']:.4f} |",
        f"| lowest per-factor decode accuracy | {lowest:.4f} |",
        f"| mean per-factor decode accuracy | {sum(decode.values()) / len(decode):.4f} |",
        f"| single-valued units (AUC >= 0.99 for one value) | {wta['single_valued_share']:.4f} |",
        f"| mutual information gap | {wta['mig']:.4f} |",
        f"| units: named, mixed, dead | {wta['named_units']}, {wta['mixed_units']}, {wta['dead_units']} |",
        "",
        "Per factor:",
        "",
        "| factor | decode accuracy |",
        "| --- | --- |",
        *[f"| {name} | {value:.4f} |" for name, value in decode.items()],
        "",
        f"Minimum decode accuracy per factor: {threshold:.2f}",
        "",
        "`tests/test_shipped_models.py` enforces that line on 1,000 freshly generated images.",
        "",
        "## Limits",
        "",
        limits or "Trained only on images of its procedural world; other scenes are out of distribution.",
        "",
    ]
    card = model.with_suffix(".md")
    card.write_text("\n".join(lines))
    return card
