"""Compare the facts of each image extracted alone and in batches of 32.

    python -m benchmarks.batch_invariance [--images N] [--model FILE.onnx]

ONNX Runtime's float32 outputs for an image change in their last bits with the size of
the batch it runs in. The script renders the PNG files of the batch benchmark
(`benchmarks.batch.write_images`, the same seed) and extracts each one alone and in
batches of 32 with one thread. It prints one JSON object with the largest change of a
probability and every fact that differs. Only confidence facts are expected to differ,
by 1 per mille.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from service.cli import ArgumentParser

ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZE = 32


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m benchmarks.batch_invariance", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="rendered images to compare (default: 2000)")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "sortofclevr.onnx", help="ONNX model")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"invalid --images {args.images}: use 1 or more")

    from reasoning.facts import extraction_facts
    from service.images import load_image
    from service.inference import Extractor

    from .batch import write_images

    extractor = Extractor.load(args.model, provider="cpu", threads=1)
    with tempfile.TemporaryDirectory(prefix="wta-batch-invariance-") as folder:
        images = [load_image(path) for path in write_images(Path(folder), args.images)]
    alone = [extractor.extract([image])[0] for image in images]
    batched = []
    for start in range(0, len(images), BATCH_SIZE):
        batched.extend(extractor.extract(images[start : start + BATCH_SIZE]))

    largest_change = 0.0
    differences = []
    for index, (single, shared) in enumerate(zip(alone, batched)):
        for single_object, shared_object in zip(single.objects, shared.objects):
            for name, attribute in single_object.attributes.items():
                largest_change = max(largest_change, abs(attribute.confidence - shared_object.attributes[name].confidence))
        facts_single = {str(fact) for fact in extraction_facts(single)}
        facts_shared = {str(fact) for fact in extraction_facts(shared)}
        if facts_single != facts_shared:
            differences.append(
                {"image": index, "alone": sorted(facts_single - facts_shared), "batched": sorted(facts_shared - facts_single)}
            )
    summary = {
        "images": len(images),
        "batch_size": BATCH_SIZE,
        "largest_probability_change": largest_change,
        "images_with_different_facts": len(differences),
        "differences": differences,
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
