"""Encoder inference: ONNX Runtime against PyTorch eager, and achieved GFLOP/s against numpy sgemm.

Both runtimes compute the exported graph on the same weights and the same rendered
images. The ONNX side is the session `service.inference.Extractor` opens, with the
product's settings. The PyTorch side is `export.onnx_export.GraphWrapper` around the
network rebuilt from the training checkpoint next to the model (`models/X.pt` for
`models/X.onnx`), so both return the same winners, and the section checks that they do.

FLOPs are counted from the ONNX graph: a multiply-add is 2 FLOPs in every Conv, MatMul,
Gemm and Einsum node, with shapes from ONNX shape inference at the measured batch size.
Elementwise operators (the colour basis's exp, reductions, softmax) are not counted, so
the achieved GFLOP/s is a lower bound on the arithmetic the encoder does.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from service.cpus import usable_cpus
from service.inference import Extractor
from training.worlds import make_world

from .common import Comparison, Section, best_of, best_of_interleaved

__all__ = ["run", "count_flops", "sgemm_gflops"]

BATCH_SIZES = (1, 64)
TARGET_SPEEDUP_AT_64 = 3.0
SEED = 0


# --------------------------------------------------------------------------- FLOP count


def _shapes(model, batch: int) -> dict[str, list[int]]:
    """Infer every tensor's shape with the graph's batch dimension fixed to `batch`."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if not dims:
            continue
        first = dims[0]
        if first.dim_param:
            first.Clear()
            first.dim_value = batch
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    shapes: dict[str, list[int]] = {}
    for value in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    for initializer in inferred.graph.initializer:
        shapes[initializer.name] = list(initializer.dims)
    for node in inferred.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    shapes[node.output[0]] = list(attribute.t.dims)
    return shapes


def _einsum_flops(node, shapes: dict[str, list[int]]) -> int:
    equation = next(a.s.decode() for a in node.attribute if a.name == "equation")
    operands = equation.replace(" ", "").split("->")[0].split(",")
    if "..." in equation:
        raise ValueError(f"Einsum {node.name!r}: equation {equation!r} uses '...', which count_flops does not expand")
    sizes: dict[str, int] = {}
    for letters, name in zip(operands, node.input):
        for letter, size in zip(letters, shapes[name]):
            sizes[letter] = size
    # Every combination of all indices is one multiply-add.
    return 2 * math.prod(sizes.values())


def count_flops(path: str | Path, batch: int) -> dict[str, int]:
    """Count the FLOPs of one run of the graph at `batch` images, per operator type.

    Raises ValueError when a counted node's shapes cannot be inferred.
    """
    import onnx

    model = onnx.load(str(path))
    shapes = _shapes(model, batch)
    counts = {"Conv": 0, "MatMul": 0, "Gemm": 0, "Einsum": 0}
    for node in model.graph.node:
        if node.op_type not in counts:
            continue
        missing = [name for name in [*node.input[:2], node.output[0]] if name not in shapes]
        if missing:
            raise ValueError(f"{node.op_type} node {node.name!r}: shape inference left {missing} unknown")
        output = shapes[node.output[0]]
        if node.op_type == "Conv":
            weight = shapes[node.input[1]]  # [out channels, in channels / groups, *kernel]
            counts["Conv"] += 2 * math.prod(output) * math.prod(weight[1:])
        elif node.op_type == "MatMul":
            counts["MatMul"] += 2 * math.prod(output) * shapes[node.input[0]][-1]
        elif node.op_type == "Gemm":
            transposed = any(a.name == "transA" and a.i for a in node.attribute)
            inner = shapes[node.input[0]][0 if transposed else 1]
            counts["Gemm"] += 2 * math.prod(output) * inner
        else:
            counts["Einsum"] += _einsum_flops(node, shapes)
    return counts


def sgemm_gflops(size: int, repeats: int) -> tuple[float, float]:
    """Measure numpy float32 matrix multiplication of two `size` x `size` matrices; return (GFLOP/s, seconds)."""
    rng = np.random.default_rng(SEED)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty((size, size), dtype=np.float32)
    seconds = best_of(lambda: np.matmul(a, b, out=out), repeats=repeats, warmup=2)
    return 2 * size**3 / seconds / 1e9, seconds


# --------------------------------------------------------------------------- PyTorch side


def _torch_wrapper(checkpoint: Path, top_k: int, threads: int):
    """Rebuild the exported graph in PyTorch from the training checkpoint."""
    import torch

    from export.onnx_export import GraphWrapper, load_checkpoint

    torch.set_num_threads(threads)
    net, _ = load_checkpoint(checkpoint)
    return GraphWrapper(net, top_k).eval()


def _check_same_winners(wrapper, session, images: np.ndarray, batch: int) -> None:
    """Raise RuntimeError when PyTorch and ONNX Runtime pick a different winner for any image."""
    import torch

    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        with torch.inference_mode():
            expected = wrapper(torch.from_numpy(chunk))[0].numpy()
        actual = session.run(["winners"], {"image": chunk})[0]
        if not np.array_equal(expected, actual):
            image, group = np.argwhere(expected != actual)[0]
            raise RuntimeError(
                f"PyTorch and ONNX Runtime disagree at batch size {batch}: image {start + image} group {group} "
                f"wins unit {expected[image, group]} in PyTorch but {actual[image, group]} in ONNX Runtime; "
                "the checkpoint and the ONNX file do not hold the same weights"
            )


# --------------------------------------------------------------------------- section


def run(args: argparse.Namespace) -> Section:
    section = Section("inference")
    threads = usable_cpus()
    extractor = Extractor.load(args.model, provider="cpu", threads=threads)
    session = extractor.session
    table = extractor.symbol_table
    images, _ = make_world(table.world).sample(max(BATCH_SIZES), np.random.default_rng(SEED))
    repeats = 2 if args.quick else 20
    warmup = 1 if args.quick else 2
    # Batch 1 calls take well under a millisecond, so each timed call runs several images one by one.
    singles = 2 if args.quick else 32
    section.measurements.update({"model": Path(args.model).name, "threads": threads, "repeats": repeats})

    def ort_call(batch: int):
        if batch == 1:
            return lambda: [session.run(None, {"image": images[i : i + 1]}) for i in range(singles)]
        return lambda: session.run(None, {"image": images[:batch]})

    checkpoint = Path(args.model).with_suffix(".pt")
    wrapper = None
    try:
        import torch
    except ImportError:
        section.notes.append("PyTorch is not installed (the `train` extra), so ONNX Runtime was not compared with it.")
    else:
        if checkpoint.is_file():
            wrapper = _torch_wrapper(checkpoint, table.top_k, threads)
            section.measurements["torch_threads"] = torch.get_num_threads()
        else:
            section.notes.append(
                f"No checkpoint {checkpoint.name} next to {Path(args.model).name}, so ONNX Runtime was not compared with PyTorch."
            )

    if wrapper is not None:
        import torch

        for batch in BATCH_SIZES:
            _check_same_winners(wrapper, session, images, batch)
        section.measurements["winners_agree"] = "yes"

        def torch_call(batch: int):
            def call():
                with torch.inference_mode():
                    if batch == 1:
                        for i in range(singles):
                            wrapper(torch.from_numpy(images[i : i + 1]))
                    else:
                        wrapper(torch.from_numpy(images[:batch]))

            return call

        for batch in BATCH_SIZES:
            times = best_of_interleaved({"ort": ort_call(batch), "torch": torch_call(batch)}, repeats=repeats, warmup=warmup)
            per_call = singles if batch == 1 else 1
            ort_ms, torch_ms = times["ort"] / per_call * 1e3, times["torch"] / per_call * 1e3
            section.measurements[f"ort_ms_batch_{batch}"] = round(ort_ms, 4)
            section.measurements[f"torch_ms_batch_{batch}"] = round(torch_ms, 4)
            section.comparisons.append(
                Comparison(
                    name=f"ONNX Runtime speed-up over PyTorch eager, batch {batch}",
                    ratio=torch_ms / ort_ms,
                    measured=f"PyTorch {torch_ms:.3f} ms vs ONNX Runtime {ort_ms:.3f} ms per batch",
                    target=TARGET_SPEEDUP_AT_64 if batch == 64 else None,
                )
            )

    batch = max(BATCH_SIZES)
    flops = count_flops(args.model, batch)
    total = sum(flops.values())
    sgemm_size = 512 if args.quick else 1024
    # sgemm runs before and after the encoder and the faster run is the peak, so a busy
    # phase of a shared machine during one of them does not lower the reference.
    peak = sgemm_gflops(sgemm_size, repeats)[0]
    ort_seconds = best_of(ort_call(batch), repeats=repeats, warmup=warmup)
    peak = max(peak, sgemm_gflops(sgemm_size, repeats)[0])
    achieved = total / ort_seconds / 1e9
    section.measurements.update(
        {
            "flops_batch_64": total,
            **{f"flops_{op.lower()}": count for op, count in flops.items() if count},
            "encoder_gflops": round(achieved, 3),
            "sgemm_size": sgemm_size,
            "sgemm_gflops": round(peak, 2),
        }
    )
    section.comparisons.append(
        Comparison(
            name="encoder GFLOP/s as a fraction of numpy sgemm",
            ratio=achieved / peak,
            measured=(
                f"encoder {achieved:.2f} GFLOP/s ({total / batch / 1e6:.2f} MFLOP per image, batch {batch}) "
                f"vs sgemm {peak:.1f} GFLOP/s ({sgemm_size} x {sgemm_size}, float32)"
            ),
        )
    )
    return section
