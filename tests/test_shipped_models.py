"""Every shipped model loads with ONNX Runtime alone and decodes fresh images of its world.

Each model card `models/NAME.md` states the minimum per-factor decode accuracy that this
test enforces, on a line `Minimum decode accuracy per factor: 0.NN`.
"""

import re
from pathlib import Path

import numpy as np
import pytest

from service.inference import Extractor
from training.worlds import make_world

MODELS = sorted((Path(__file__).resolve().parent.parent / "models").glob("*.onnx"))
THRESHOLD = re.compile(r"^Minimum decode accuracy per factor: (0\.\d+|1\.0+)\s*$", re.MULTILINE)


def test_models_are_shipped():
    assert {path.stem for path in MODELS} >= {"sortofclevr", "sprites"}


@pytest.mark.parametrize("path", MODELS, ids=[path.stem for path in MODELS])
def test_shipped_model_meets_its_card(path):
    card = path.with_suffix(".md")
    assert card.is_file(), f"{path.name} has no model card {card.name}"
    match = THRESHOLD.search(card.read_text())
    assert match, f"{card.name} states no 'Minimum decode accuracy per factor' line"
    threshold = float(match.group(1))
    assert path.stat().st_size < 8_000_000, "shipped models stay small"

    extractor = Extractor.load(path, provider="cpu")
    table = extractor.symbol_table
    world = make_world(table.world)
    images, labels = world.sample(1000, np.random.default_rng(20261204))
    outputs = extractor.run(images)
    for g, group in enumerate(table.groups):
        if group.factor is None:
            continue
        f = [factor.name for factor in world.factors].index(group.factor)
        values = np.array([u.value if u.value is not None else "" for u in group.units], dtype=object)
        decoded = values[outputs["winners"][:, g]]
        truth = np.array(world.factors[f].values, dtype=object)[labels[:, f]]
        accuracy = float((decoded == truth).mean())
        assert accuracy >= threshold, f"{path.name}: factor {group.factor} decodes {accuracy:.4f} < {threshold}"
    named = {group.factor for group in table.groups if group.factor is not None}
    assert named == {factor.name for factor in world.factors}, "every factor is named by some group"


@pytest.mark.parametrize("path", MODELS, ids=[path.stem for path in MODELS])
def test_batch_size_changes_only_confidences(path):
    from reasoning.facts import extraction_facts

    extractor = Extractor.load(path, provider="cpu", threads=1)
    images, _ = make_world(extractor.symbol_table.world).sample(200, np.random.default_rng(5))
    alone = [extractor.extract([image])[0] for image in images]
    batched = [extraction for start in range(0, 200, 32) for extraction in extractor.extract(list(images[start : start + 32]))]

    for single, shared in zip(alone, batched):
        facts_single, facts_shared = extraction_facts(single), extraction_facts(shared)
        assert len(facts_single) == len(facts_shared)
        for fact, other in zip(facts_single, facts_shared):
            if fact.name != "confidence":
                assert fact == other
                continue
            # The float32 outputs change in their last bits with the batch, so rounding to
            # per mille may land on the two sides of an edge: 1 apart at the most.
            assert fact.arguments[:2] == other.arguments[:2]
            assert abs(fact.arguments[2].number - other.arguments[2].number) <= 1
