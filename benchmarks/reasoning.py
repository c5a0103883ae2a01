"""Reasoning against perception: time per image to answer all 30 Sort-of-CLEVR questions.

`reasoning.benchmark.run_benchmark` decodes every image with the model (perception:
reading the PNG file, ONNX Runtime, and turning the outputs into objects) and then
answers every question with the Sort-of-CLEVR rules (reasoning: one clingo grounding and
solve per batch, in one worker process per usable core, as perception uses every core
through ONNX Runtime's threads). Both are timed per image after a warm-up; the section
repeats the whole benchmark and keeps the fastest time of each.

The images come from the public dev set (`--dev-set`) when it is present. Otherwise the
section renders scenes with `training.worlds.SortOfClevrWorld` and asks 30 questions of
each, 10 about one object, 10 about two and 10 about three, the mix of the dev set's
question types. Those questions carry no expected answers, so only their times count.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from reasoning.benchmark import run_benchmark
from reasoning.sortofclevr import COLOURS
from service.cpus import usable_cpus
from training.worlds import SortOfClevrWorld

from .common import Comparison, Section

__all__ = ["run", "write_scenes"]

RENDERED_SCENES = 64
QUICK_SCENES = 16
SEED = 0
# Question types by the number of objects they name; each image gets QUESTIONS_PER_KIND of each kind.
ONE_OBJECT = ("shape", "is_left", "is_top")
TWO_OBJECTS = ("closest_shape", "furthest_shape", "count_same_shape")
THREE_OBJECTS = ("count_between", "is_on_band", "count_obtuse")
QUESTIONS_PER_KIND = 10


def write_scenes(folder: Path, count: int, seed: int = SEED) -> Path:
    """Render `count` scenes with 30 questions each as PNG files and `folder/questions.json`; return `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    world = SortOfClevrWorld()
    rng = np.random.default_rng(seed)
    images, labels = world.sample(count, rng)
    entries = []
    for number, (image, label) in enumerate(zip(images, labels)):
        name = f"{number:04d}.png"
        Image.fromarray(image).save(folder / name)
        objects = [
            {
                "colour": colour,
                "x": int(label[3 * k + 1]) + world.LOW,
                "y": int(label[3 * k + 2]) + world.LOW,
                "shape": world.SHAPES[int(label[3 * k])],
            }
            for k, colour in enumerate(COLOURS)
        ]
        questions = []
        for kinds, colours in ((ONE_OBJECT, 1), (TWO_OBJECTS, 1), (THREE_OBJECTS, 2)):
            for _ in range(QUESTIONS_PER_KIND):
                chosen = rng.choice(len(COLOURS), size=colours, replace=False)
                question = {"question": str(rng.choice(kinds)), "colour": COLOURS[chosen[0]]}
                if colours == 2:
                    question["colour2"] = COLOURS[chosen[1]]
                questions.append(question)
        entries.append({"image": name, "objects": objects, "questions": questions})
    (folder / "questions.json").write_text(json.dumps({"images": entries}), encoding="utf-8")
    return folder


def run(args: argparse.Namespace) -> Section:
    section = Section("reasoning")
    repeats = 2 if args.quick else 7
    dev_set = Path(args.dev_set) if args.dev_set else None

    with tempfile.TemporaryDirectory(prefix="wta-bench-reasoning-") as tmp:
        if dev_set is not None and (dev_set / "questions.json").is_file():
            directory, source = dev_set, "dev set"
        else:
            count = QUICK_SCENES if args.quick else RENDERED_SCENES
            directory, source = write_scenes(Path(tmp), count), "rendered scenes"
            section.notes.append(
                f"The dev set {dev_set} is absent, so the section used {count} rendered scenes with unscored questions."
            )
        workers = usable_cpus()
        reports = [run_benchmark(directory, facts="model", model=args.model, workers=workers) for _ in range(repeats)]

    report = reports[0]
    perception = min(r.perception_ms_per_image for r in reports)
    reasoning = min(r.reasoning_ms_per_image for r in reports)
    section.measurements.update(
        {
            "source": source,
            "images": report.images,
            "questions": report.questions,
            "batch_size": report.batch_size,
            "reasoning_workers": report.workers,
            "repeats": repeats,
            "perception_ms_per_image": round(perception, 4),
            "reasoning_ms_per_image": round(reasoning, 4),
        }
    )
    if source == "dev set":
        section.measurements["accuracy"] = round(report.overall, 4)
    section.comparisons.append(
        Comparison(
            name=f"reasoning time / perception time, {report.questions // max(report.images, 1)} questions per image",
            ratio=reasoning / perception,
            measured=f"reasoning {reasoning:.3f} ms vs perception {perception:.3f} ms per image ({report.images} images, {source})",
            target=1.0,
            direction="max",
        )
    )
    return section
