"""Export a training run to one self-describing ONNX file and verify it against PyTorch.

The graph takes `uint8 [batch, height, width, 3]` RGB images. Per WTA group it returns the
winning unit (`winners`, int64, lowest index on ties) and its softmax probability
(`confidences`), and with `top_k > 0` also `top_indices` and `top_probs` `[batch, groups, k]`.
The symbol table travels as JSON in `metadata_props` under `service.symbols.METADATA_KEY`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from service.symbols import FORMAT_VERSION, METADATA_KEY, SymbolTable, parse_symbol_table
from training.model import WTANet, _standardise_groups
from training.report import CHECKPOINT, SYMBOLS
from training.train import TrainConfig
from training.worlds import make_world

__all__ = ["ExportError", "GraphWrapper", "load_checkpoint", "load_run", "export_run", "verify_export"]

log = logging.getLogger(__name__)

OPSET = 18
FLOAT_MAX = float(np.finfo(np.float32).max)


class ExportError(RuntimeError):
    """Export or its verification failed; the message names the check and the difference found."""


class GraphWrapper(nn.Module):
    """The inference graph: WTA argmax with guarded logits, winner probabilities and top-k."""

    def __init__(self, net: WTANet, top_k: int) -> None:
        super().__init__()
        self.net = net.eval()
        self.top_k = top_k
        sizes = net.sizes
        units, width = sum(sizes), max(sizes)
        # index[g, s] points at the flat unit, or at an extra padding column for s >= size.
        index = torch.full((len(sizes), width), units, dtype=torch.long)
        start = 0
        for g, size in enumerate(sizes):
            index[g, :size] = torch.arange(start, start + size)
            start += size
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("padding", index == units, persistent=False)

    def forward(self, image: torch.Tensor):
        flat = self.net.unit_logits(image)  # [B, U]
        norm = self.net.norm
        if isinstance(norm, nn.BatchNorm1d):
            # Eval-mode BatchNorm written out, because the exporter needs a static unit count.
            normalised = (flat - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
            flat = torch.where(self.net.normalised, normalised, flat)
        # Non-finite logits (NaN, inf) become finite before the argmax, so a winner is always a real unit.
        flat = torch.where(torch.isnan(flat), torch.full_like(flat, -FLOAT_MAX), flat)
        flat = torch.clamp(flat, -FLOAT_MAX, FLOAT_MAX)
        extended = torch.cat([flat, torch.zeros_like(flat[:, :1])], dim=1)  # [B, U + 1]
        padded = extended[:, self.index]  # [B, G, S]
        padded = padded.masked_fill(self.padding, float("-inf"))
        if self.net.config.normalise_logits == "group":
            padded = _standardise_groups(padded, ~self.padding)

        winners = padded.argmax(dim=-1)  # [B, G], first maximum on ties
        probs = torch.softmax(padded, dim=-1)
        confidences = probs.gather(-1, winners.unsqueeze(-1)).squeeze(-1)
        if self.top_k == 0:
            return winners, confidences
        top_probs, top_indices = torch.topk(probs, self.top_k, dim=-1)
        return winners, confidences, top_indices, top_probs


def load_checkpoint(path: str | Path) -> tuple[WTANet, TrainConfig]:
    """Rebuild the trained network in eval mode from a checkpoint file written by training."""
    from training.model import ModelConfig, group_specs

    checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
    config = TrainConfig.from_dict(checkpoint["config"])
    world = make_world(config.world)
    model_config = ModelConfig(**{**vars(config.model), "tasks": config.tasks})
    net = WTANet(model_config, group_specs(world.factors, model_config.group_scale), world.height, world.width)
    net.load_state_dict(checkpoint["state_dict"])
    return net.eval(), config


def load_run(run_dir: str | Path) -> tuple[WTANet, SymbolTable, TrainConfig]:
    """Rebuild the trained network and its symbol table from a run directory."""
    run = Path(run_dir)
    for name in (CHECKPOINT, SYMBOLS):
        if not (run / name).is_file():
            raise ExportError(f"{run}: missing {name}; is this a directory written by 'python -m training'?")
    net, config = load_checkpoint(run / CHECKPOINT)
    table = parse_symbol_table((run / SYMBOLS).read_text(), str(run / SYMBOLS))
    return net, table, config


def export_run(run_dir: str | Path, out: str | Path, *, top_k: int = 3) -> SymbolTable:
    """Export the run at `run_dir` to `out`, stamp the symbol table, and verify it against PyTorch."""
    import onnx

    net, table, config = load_run(run_dir)
    top_k = min(top_k, max(net.sizes))
    table = table.model_copy(update={"top_k": top_k, "format_version": FORMAT_VERSION})
    wrapper = GraphWrapper(net, top_k).eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    outputs = ["winners", "confidences"] + (["top_indices", "top_probs"] if top_k else [])
    example = torch.zeros(2, table.input.height, table.input.width, 3, dtype=torch.uint8)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (example,),
            str(out),
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["image", *outputs]},
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load(str(out))
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = table.to_json()
    model.producer_name = "wta-bridge"
    model.doc_string = f"WTA encoder for world {table.world!r}; symbol table in metadata key {METADATA_KEY!r}."
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out))
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)

    try:
        verify_export(wrapper, out, config.world, seed=config.seed)
    except ExportError:
        out.unlink(missing_ok=True)  # a model that failed verification must not look exported
        raise
    return table


def verify_export(wrapper: GraphWrapper, path: str | Path, world_name: str, *, seed: int = 0, images: int = 1000) -> dict:
    """Compare ONNX Runtime with PyTorch; raise ExportError on any differing winner.

    Runs `images` fresh images of the world at batch sizes 1, 2, 7 and 64, plus blank
    images (all 0 and all 255, where logits tie most). Confidences must agree within 1e-4.
    """
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    world = make_world(world_name)
    data, _ = world.sample(images, np.random.default_rng(seed + 12345))
    blank = np.stack([np.zeros_like(data[0]), np.full_like(data[0], 255)])
    started = time.perf_counter()
    checked = 0
    worst = 0.0
    for batch in (1, 2, 7, 64):
        # Batch 1 and 2 are slow per image in PyTorch; a tenth of the images covers them.
        count = len(data) if batch >= 7 else len(data) // 10
        for start in range(0, count, batch):
            chunk = data[start : start + batch]
            worst = max(worst, _compare(wrapper, session, chunk, f"batch size {batch}, images {start}..{start + len(chunk) - 1}"))
            checked += len(chunk)
    worst = max(worst, _compare(wrapper, session, blank, "blank images"))
    report = {"images": checked + len(blank), "max_confidence_difference": worst, "seconds": time.perf_counter() - started}
    log.info("verified %s: %s", path, json.dumps(report))
    return report


def _compare(wrapper: GraphWrapper, session, images: np.ndarray, what: str) -> float:
    with torch.no_grad():
        expected = [t.numpy() for t in wrapper(torch.from_numpy(images))]
    actual = session.run(None, {"image": images})
    if not np.array_equal(expected[0], actual[0]):
        where = np.argwhere(expected[0] != actual[0])[0]
        raise ExportError(
            f"verification failed on {what}: image {where[0]} group {where[1]} wins unit "
            f"{actual[0][tuple(where)]} in ONNX Runtime but {expected[0][tuple(where)]} in PyTorch"
        )
    difference = float(np.abs(expected[1] - actual[1]).max())
    if difference > 1e-4:
        raise ExportError(f"verification failed on {what}: confidences differ by {difference:.2e} (limit 1e-4)")
    return difference
