"""Command line: answer a Sort-of-CLEVR question file and report accuracy and time per image.

    python -m reasoning.benchmark sortofclevr DIR [--facts model|ground-truth] [--json]

With `--facts ground-truth` the facts come from the objects listed in DIR/questions.json,
which checks the rules apart from perception; otherwise the model decodes each image.
Perception runs in batches of `--batch-size` images on ONNX Runtime's threads. Reasoning
splits the images into batches of at most `--batch-size`, at least one per worker, and
answers them in `--workers` processes. Each is reported as wall-clock milliseconds per
image, measured after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from service.cli import ArgumentParser, silence_broken_stdout
from service.cpus import usable_cpus
from service.schema import Extraction

from .errors import ReasoningError
from .facts import fact_values
from .sortofclevr import QUESTION_TYPES, Scene, SortOfClevrReasoner, ground_truth_extraction, load_scenes

__all__ = ["main", "build_parser", "Report", "run_benchmark"]

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
MAX_LISTED_MISTAKES = 20


class UsageError(Exception):
    """A command-line value that cannot be used; printed as one line."""


@dataclass
class Report:
    """Accuracy per question type and overall, with times per image in milliseconds."""

    directory: str
    facts: str
    images: int = 0
    questions: int = 0
    correct: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    per_type: dict[str, dict[str, float]] = field(default_factory=dict)
    perception_ms_per_image: float | None = None  # None with ground-truth facts
    reasoning_ms_per_image: float = 0.0
    workers: int = 1  # reasoning processes
    mistakes: list[dict] = field(default_factory=list)

    @property
    def overall(self) -> float:
        return self.correct / self.questions if self.questions else 0.0

    def to_json(self) -> dict:
        return {
            "world": "sortofclevr",
            "directory": self.directory,
            "facts": self.facts,
            "images": self.images,
            "questions": self.questions,
            "correct": self.correct,
            "overall": self.overall,
            "per_type": self.per_type,
            "batch_size": self.batch_size,
            "perception_ms_per_image": self.perception_ms_per_image,
            "reasoning_ms_per_image": self.reasoning_ms_per_image,
            "reasoning_workers": self.workers,
            "mistakes": self.mistakes,
        }


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise UsageError(f"{path}: image listed in questions.json not found") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UsageError(f"{path}: cannot read image: {error}") from None


def _batches(items: Sequence, size: int) -> list[Sequence]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _ground_truth(directory: Path, scenes: Sequence[Scene]) -> list[Extraction]:
    return [ground_truth_extraction(scene, *_image_size(directory / scene.image)) for scene in scenes]


def _perceive(directory: Path, scenes: Sequence[Scene], model: Path | None, batch_size: int) -> tuple[list[Extraction], float]:
    """Decode every image with the model; return the extractions and the seconds per image."""
    try:
        from service.images import load_image
        from service.inference import Extractor
    except ImportError as error:
        raise UsageError(f"in-process decoding is not available: {error}; use --facts ground-truth") from None
    extractor = Extractor.load(model)
    batches = _batches(list(scenes), batch_size)

    def decode(batch: Sequence[Scene]) -> list[Extraction]:
        images = [load_image(directory / scene.image) for scene in batch]
        return extractor.extract(images, [scene.image for scene in batch])

    decode(batches[0])  # warm-up: the first run of a session allocates its buffers
    extractions: list[Extraction] = []
    started = time.perf_counter()
    for batch in batches:
        extractions.extend(decode(batch))
    return extractions, (time.perf_counter() - started) / max(len(scenes), 1)


def _matches(expected: object, answers: list[str | int]) -> bool:
    return len(answers) == 1 and str(answers[0]) == str(expected)


# The reasoner of a worker process of `_answer_all`, built once per process.
_worker_reasoner: SortOfClevrReasoner | None = None


def _start_worker() -> None:
    global _worker_reasoner
    _worker_reasoner = SortOfClevrReasoner()


def _answer_in_worker(batch: Sequence) -> list[list[list[str | int]]]:
    assert _worker_reasoner is not None, "worker started without its reasoner"
    return _worker_reasoner.answer(batch)


def _answer_all(items: Sequence, batch_size: int, workers: int) -> tuple[list[list[list[str | int]]], float]:
    """Answer the questions of every image; return the answers and the seconds they took after a warm-up.

    With several workers the images are split into at least one batch per worker, and each
    worker process grounds its batches with its own clingo instance. The clingo calls hold
    Python's interpreter lock, so threads would not run them in parallel.
    """
    if workers <= 1 or len(items) < 2:
        reasoner = SortOfClevrReasoner()
        batches = _batches(items, batch_size)
        reasoner.answer(batches[0])  # warm-up, like perception
        started = time.perf_counter()
        answers = [answer for batch in batches for answer in reasoner.answer(batch)]
        return answers, time.perf_counter() - started

    size = min(batch_size, math.ceil(len(items) / workers))

    def compact() -> list[Sequence]:
        # Plain fact values pickle about ten times faster than the extractions.
        return _batches([(fact_values(extraction), questions) for extraction, questions in items], size)

    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker) as pool:
        # Two untimed rounds start every worker and warm its clingo instance.
        for _ in range(2):
            list(pool.map(_answer_in_worker, compact()))
        started = time.perf_counter()
        answers = [answer for batch in pool.map(_answer_in_worker, compact()) for answer in batch]
        return answers, time.perf_counter() - started


def run_benchmark(
    directory: str | Path,
    *,
    facts: str = "model",
    model: Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 1,
) -> Report:
    """Answer every question of `directory`/questions.json and score the answers.

    `workers` processes answer the questions in parallel; perception uses every core
    through ONNX Runtime's threads.
    """
    directory = Path(directory)
    if batch_size < 1:
        raise UsageError(f"invalid --batch-size {batch_size}: use 1 or more")
    if workers < 1:
        raise UsageError(f"invalid --workers {workers}: use 1 or more")
    scenes = load_scenes(directory)
    report = Report(directory=str(directory), facts=facts, batch_size=batch_size, images=len(scenes))
    if not scenes:
        raise UsageError(f"{directory}/questions.json lists no images")

    if facts == "ground-truth":
        extractions = _ground_truth(directory, scenes)
    else:
        extractions, seconds = _perceive(directory, scenes, model, batch_size)
        report.perception_ms_per_image = seconds * 1000

    items = [(extraction, scene.questions) for extraction, scene in zip(extractions, scenes)]
    answers, seconds = _answer_all(items, batch_size, workers)
    report.reasoning_ms_per_image = seconds / len(scenes) * 1000
    report.workers = workers

    counts = {kind: [0, 0] for kind in QUESTION_TYPES}
    for scene, image_answers in zip(scenes, answers):
        for number, (question, derived) in enumerate(zip(scene.questions, image_answers)):
            right = _matches(question.answer, derived)
            counts[question.type][0] += right
            counts[question.type][1] += 1
            if not right and len(report.mistakes) < MAX_LISTED_MISTAKES:
                report.mistakes.append(
                    {
                        "image": scene.image,
                        "question": number,
                        "type": question.type,
                        "colour": question.colour,
                        "colour2": question.colour2,
                        "expected": question.answer,
                        "answers": derived,
                    }
                )
    for kind, (right, total) in counts.items():
        if total:
            report.per_type[kind] = {"correct": right, "total": total, "accuracy": right / total}
    report.correct = sum(right for right, _ in counts.values())
    report.questions = sum(total for _, total in counts.values())
    return report


def _print_report(report: Report, out) -> None:
    print(f"sortofclevr {report.directory}: {report.images} images, {report.questions} questions, facts from {report.facts}", file=out)
    print(f"{'question type':<18} {'correct':>8} {'total':>6} {'accuracy':>9}", file=out)
    for kind, row in report.per_type.items():
        print(f"{kind:<18} {row['correct']:>8} {row['total']:>6} {row['accuracy']:>9.2%}", file=out)
    print(f"{'overall':<18} {report.correct:>8} {report.questions:>6} {report.overall:>9.2%}", file=out)
    if report.perception_ms_per_image is None:
        print("perception: not measured (ground-truth facts)", file=out)
    else:
        print(f"perception: {report.perception_ms_per_image:.3f} ms per image", file=out)
    print(
        f"reasoning:  {report.reasoning_ms_per_image:.3f} ms per image"
        f" (batches of up to {report.batch_size}, {report.workers} worker processes)",
        file=out,
    )
    for mistake in report.mistakes:
        print(
            f"mistake: {mistake['image']} question {mistake['question']} ({mistake['type']}):"
            f" expected {mistake['expected']}, got {mistake['answers']}",
            file=out,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m reasoning.benchmark",
        description="Answer a Sort-of-CLEVR question file with perception and the rules, and report accuracy.",
    )
    parser.add_argument("world", choices=["sortofclevr"], help="benchmark world")
    parser.add_argument("directory", type=Path, metavar="DIR", help="folder with questions.json and the images")
    parser.add_argument(
        "--facts",
        choices=["model", "ground-truth"],
        default="model",
        help="take facts from the model or from the objects in questions.json (default: model)",
    )
    parser.add_argument("--model", type=Path, help="ONNX model file (default: models/sortofclevr.onnx)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"images per perception batch and per grounding (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that answer questions in parallel (default: the CPUs this process may use)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument(
        "--min-accuracy",
        type=float,
        metavar="P",
        help="exit with status 1 when overall accuracy is below P (a fraction, for example 0.99)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        workers = usable_cpus() if args.workers is None else args.workers
        report = run_benchmark(
            args.directory, facts=args.facts, model=args.model, batch_size=args.batch_size, workers=workers
        )
    except (UsageError, ReasoningError, ValueError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    try:
        if args.json:
            json.dump(report.to_json(), sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            _print_report(report, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        return silence_broken_stdout()
    if args.min_accuracy is not None and report.overall < args.min_accuracy:
        print(f"error: overall accuracy {report.overall:.4f} is below --min-accuracy {args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
