"""End-to-end batch extraction against raw ONNX Runtime on the same images.

The section renders Sort-of-CLEVR images into PNG files in a temporary folder and runs
`python -m service.batch` in this process (`service.batch.main`) on all of them and, in
separate runs, on the first batch only. The difference of the two times is the marginal
time: what the extra images cost once the imports, the model load and the session are
paid for. The reference is `InferenceSession.run` on the same images, already decoded
and stacked into batches of the same size, with one thread per usable core. The command
runs with its default thread count, which leaves one core to decoding and writing.

Efficiency = raw time per image / end-to-end marginal time per image. At 1.0 the command
adds nothing to inference. Below it, the rest of the time goes to decoding PNG files,
turning the graph outputs into objects and facts, and writing records.

The command's stages are also timed alone in CPU time: decoding, the model on one thread
and writing records. Their sum shared out over the cores is the least marginal time any
schedule of these stages could reach, which bounds the efficiency on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from service import batch as batch_cli
from service.cpus import usable_cpus
from service.images import load_image
from service.inference import Extractor
from service.record_text import RecordWriter
from training.worlds import SortOfClevrWorld

from .common import Comparison, Section, best_of_interleaved, least_cpu

__all__ = ["run", "write_images"]

IMAGES = 2000
QUICK_IMAGES = 200
BATCH_SIZE = 32  # the default --batch-size of service.batch
TARGET_EFFICIENCY = 0.6
SEED = 0


def write_images(folder: Path, count: int, seed: int = SEED) -> list[Path]:
    """Render `count` Sort-of-CLEVR images into PNG files `folder/00000.png`, ...; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for start in range(0, count, 500):
        images, _ = SortOfClevrWorld().sample(min(500, count - start), rng)
        for offset, image in enumerate(images):
            path = folder / f"{start + offset:05d}.png"
            Image.fromarray(image).save(path)
            paths.append(path)
    return paths


def _extract(folder: Path, out_dir: Path, model: Path) -> None:
    """Run service.batch in process, with its default thread count, on every image of `folder` into a fresh output file."""
    handle = tempfile.NamedTemporaryFile(dir=out_dir, suffix=".jsonl", delete=False)
    handle.close()
    Path(handle.name).unlink()  # service.batch creates it; an existing file would be read for finished images
    argv = [str(folder), "--out", handle.name, "--model", str(model), "--provider", "cpu"]
    argv += ["--batch-size", str(BATCH_SIZE), "--no-progress"]
    messages = io.StringIO()
    with contextlib.redirect_stderr(messages):
        status = batch_cli.main(argv)
    if status != 0:
        raise RuntimeError(f"python -m service.batch {' '.join(argv)} exited with status {status}: {messages.getvalue().strip()}")
    Path(handle.name).unlink()


def run(args: argparse.Namespace) -> Section:
    section = Section("batch")
    count = QUICK_IMAGES if args.quick else IMAGES
    repeats = 1 if args.quick else 3
    threads = usable_cpus()
    model = Path(args.model)

    with tempfile.TemporaryDirectory(prefix="wta-bench-batch-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        paths = write_images(root / "all", count)
        first = root / "first"
        first.mkdir()
        for path in paths[:BATCH_SIZE]:
            (first / path.name).write_bytes(path.read_bytes())
        render_seconds = time.perf_counter() - started

        extractor = Extractor.load(model, provider="cpu", threads=threads)
        decoded = np.stack([load_image(path) for path in paths])
        batches = [np.ascontiguousarray(decoded[i : i + BATCH_SIZE]) for i in range(0, count, BATCH_SIZE)]

        def raw() -> None:
            for chunk in batches:
                extractor.session.run(None, {"image": chunk})

        def decode_only() -> None:
            for path in paths:
                load_image(path)

        # The CPU time each stage of the command needs per image, measured alone: decoding,
        # the model on one thread (its cheapest setting in CPU time) and writing jsonl records.
        single = Extractor.load(model, provider="cpu", threads=1)
        results = [single.run(chunk) for chunk in batches]
        writer = RecordWriter(single.symbol_table, single.width, single.height, "jsonl")
        names = [str(path) for path in paths]
        sizes = [(image.shape[1], image.shape[0]) for image in decoded]

        def write_records() -> None:
            for start, result in zip(range(0, count, BATCH_SIZE), results):
                writer.records(result, sizes[start : start + BATCH_SIZE], names[start : start + BATCH_SIZE])

        stage_cpu = {
            "decode": least_cpu(decode_only, repeats=repeats) / count,
            "model": least_cpu(lambda: [single.run(chunk) for chunk in batches], repeats=repeats) / count,
            "records": least_cpu(write_records, repeats=repeats) / count,
        }
        del single

        outputs = root / "out"
        outputs.mkdir()
        times = best_of_interleaved(
            {
                "all": lambda: _extract(root / "all", outputs, model),
                "first": lambda: _extract(first, outputs, model),
                "raw": raw,
                "decode": decode_only,
            },
            repeats=repeats,
            warmup=1,
        )

    marginal = (times["all"] - times["first"]) / (count - BATCH_SIZE)
    if marginal <= 0:
        raise RuntimeError(
            f"service.batch took {times['all']:.3f} s for {count} images but {times['first']:.3f} s for {BATCH_SIZE}; "
            "the machine was too busy to measure the marginal time, so rerun the section"
        )
    raw_per_image = times["raw"] / count
    decode_per_image = times["decode"] / count
    # With every core busy and nothing lost to waiting, the command needs at least the
    # stages' CPU time shared out over the cores.
    least_marginal = sum(stage_cpu.values()) / threads
    section.measurements.update(
        {
            "images": count,
            "batch_size": BATCH_SIZE,
            "raw_threads": threads,
            "batch_threads": batch_cli.default_threads(),
            "repeats": repeats,
            "render_and_write_s": round(render_seconds, 3),
            "end_to_end_s": round(times["all"], 4),
            "first_batch_s": round(times["first"], 4),
            "marginal_ms_per_image": round(marginal * 1e3, 4),
            "raw_ms_per_image": round(raw_per_image * 1e3, 4),
            "decode_ms_per_image": round(decode_per_image * 1e3, 4),
            **{f"{stage}_cpu_ms_per_image": round(value * 1e3, 4) for stage, value in stage_cpu.items()},
        }
    )
    section.comparisons.append(
        Comparison(
            name=f"batch extraction efficiency, {count} PNG files",
            ratio=raw_per_image / marginal,
            measured=(
                f"raw ONNX Runtime {raw_per_image * 1e3:.3f} ms vs service.batch {marginal * 1e3:.3f} ms "
                f"marginal per image, batches of {BATCH_SIZE}"
            ),
            target=TARGET_EFFICIENCY,
        )
    )
    section.comparisons.append(
        Comparison(
            name=f"bound on the efficiency: raw time / ((decoding + model on 1 thread + records) CPU time / {threads} cores)",
            ratio=raw_per_image / least_marginal,
            measured=(
                f"raw ONNX Runtime {raw_per_image * 1e3:.3f} ms vs ({stage_cpu['decode'] * 1e3:.3f} +"
                f" {stage_cpu['model'] * 1e3:.3f} + {stage_cpu['records'] * 1e3:.3f}) / {threads}"
                f" = {least_marginal * 1e3:.3f} ms per image"
            ),
        )
    )
    # Reading and decoding the files on one thread sets a floor for the command that no
    # overlap with inference removes on a machine with few cores.
    section.comparisons.append(
        Comparison(
            name="raw ONNX Runtime time / reading and decoding the same PNG files, per image",
            ratio=raw_per_image / decode_per_image,
            measured=f"raw ONNX Runtime {raw_per_image * 1e3:.3f} ms vs load_image {decode_per_image * 1e3:.3f} ms per image",
        )
    )
    return section
