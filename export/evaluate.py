"""Check a model file against the true objects of a Sort-of-CLEVR question file.

`python -m export.evaluate MODEL DIR` decodes every image listed in `DIR/questions.json`
with ONNX Runtime alone and prints shape accuracy, the share of centres decoded exactly
to the pixel, the share within 1 px, and the largest centre error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from service.cli import ArgumentParser, silence_broken_stdout
from service.images import ImageError, load_image
from service.inference import Extractor, ModelError
from service.symbols import SymbolTableError

__all__ = ["evaluate_objects", "main"]


def evaluate_objects(extractor: Extractor, folder: Path) -> dict:
    """Compare decoded objects with the `objects` lists of `folder/questions.json`."""
    index = json.loads((folder / "questions.json").read_text())
    entries = index["images"]
    images = [load_image(folder / entry["image"]) for entry in entries]
    extractions = extractor.extract(images, [entry["image"] for entry in entries])
    shapes = exact = near = total = 0
    worst = 0
    misses = []
    for entry, extraction in zip(entries, extractions):
        decoded = {obj.id: obj for obj in extraction.objects}
        for truth in entry["objects"]:
            total += 1
            obj = decoded.get(truth["colour"])
            if obj is None or obj.position is None or "shape" not in obj.attributes:
                misses.append(f"{entry['image']}: {truth['colour']} not decoded")
                worst = max(worst, 10**6)
                continue
            x, y = obj.position
            error = max(abs(x - truth["x"]), abs(y - truth["y"]))
            worst = max(worst, error)
            exact += error == 0
            near += error <= 1
            shapes += obj.attributes["shape"].value == truth["shape"]
            if error or obj.attributes["shape"].value != truth["shape"]:
                misses.append(
                    f"{entry['image']}: {truth['colour']} true {truth['shape']} ({truth['x']}, {truth['y']}),"
                    f" decoded {obj.attributes['shape'].value} ({x}, {y})"
                )
    return {
        "images": len(entries),
        "objects": total,
        "shape_accuracy": shapes / total,
        "centre_exact": exact / total,
        "centre_within_1px": near / total,
        "max_centre_error_px": worst,
        "misses": misses,
    }


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m export.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="ONNX model file")
    parser.add_argument("folder", help="folder with questions.json and its images")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if not (folder / "questions.json").is_file():
        print(f"error: {folder / 'questions.json'} not found", file=sys.stderr)
        return 2
    try:
        report = evaluate_objects(Extractor.load(args.model, provider="cpu"), folder)
    except (ModelError, SymbolTableError, ImageError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(report, indent=1), flush=True)
    except BrokenPipeError:
        return silence_broken_stdout()
    return 0


if __name__ == "__main__":
    sys.exit(main())
