"""`RecordWriter` writes the same bytes as the slow path: Extractor.decode, reasoning.facts and format_record."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# WTABRIDGE_TEST_MODEL points the tests at another export of the same contract.
MODEL = Path(os.environ.get("WTABRIDGE_TEST_MODEL", ROOT / "models" / "sortofclevr.onnx"))
if not MODEL.is_file():
    pytest.skip(f"model {MODEL} is missing; export one with python -m export", allow_module_level=True)

from reasoning.errors import FactsError
from service import batch
from service.inference import Extractor
from service.record_text import RecordWriter
from service.symbols import SymbolTable
from training.worlds import SortOfClevrWorld

FORMATS = ["jsonl", "lp"]


@pytest.fixture(scope="module")
def extractor() -> Extractor:
    return Extractor.load(MODEL, provider="cpu", threads=1)


def slow_record(extractor: Extractor, fmt: str, outputs: dict, row: int, size: tuple[int, int], image: str) -> str:
    """Write one image's record through the slow path: Extractor.decode, reasoning.facts and format_record."""
    one = {key: value[row : row + 1] for key, value in outputs.items()}
    extraction = extractor.decode(one, [size], [image])[0]
    try:
        facts = batch._facts_text(extraction)
    except FactsError as error:
        return batch.format_record(fmt, image, error=f"{image}: cannot write facts: {error}")
    return batch.format_record(fmt, image, extraction=extraction, facts=facts)


def varied_images() -> list[np.ndarray]:
    """Scenes at the model's size and resized, plus noise and a blank image that give low confidences."""
    rng = np.random.default_rng(5)
    scenes, _ = SortOfClevrWorld().sample(4, rng)
    resized = [
        np.asarray(Image.fromarray(scenes[1]).resize((150, 150), Image.BILINEAR)),
        np.asarray(Image.fromarray(scenes[2]).resize((100, 60), Image.BILINEAR)),
        np.asarray(Image.fromarray(scenes[3]).resize((37, 91), Image.BILINEAR)),
    ]
    noise = rng.integers(0, 256, size=(80, 120, 3), dtype=np.uint8)
    blank = np.full((75, 75, 3), 255, dtype=np.uint8)
    return [scenes[0], *resized, noise, blank, scenes[1]]


def run_batch(extractor: Extractor, images: list[np.ndarray]) -> tuple[dict, list[tuple[int, int]], list[str]]:
    outputs = extractor.run(np.stack([extractor.prepare(image) for image in images]))
    sizes = [(image.shape[1], image.shape[0]) for image in images]
    names = [f'images/scene {index} "quoted" \u00e9.png' for index in range(len(images))]
    return outputs, sizes, names


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_matches_slow_path(extractor, fmt):
    outputs, sizes, names = run_batch(extractor, varied_images())
    writer = RecordWriter(extractor.symbol_table, extractor.width, extractor.height, fmt)

    texts = writer.records(outputs, sizes, names)

    assert len(texts) == len(names)
    for row, (text, size, name) in enumerate(zip(texts, sizes, names)):
        assert text is not None, f"image {row} ({size}) fell back to the slow path"
        assert text == slow_record(extractor, fmt, outputs, row, size, name), f"image {row} ({size})"


def test_varied_images_have_low_confidences(extractor):
    outputs, _, _ = run_batch(extractor, varied_images())
    assert outputs["confidences"].min() < 0.5
    assert "top_probs" in outputs
    assert outputs["top_probs"][:, :, 1:].max() > 0.1  # runner-up candidates that show in the records


def edited_outputs(extractor: Extractor) -> tuple[dict, list[tuple[int, int]], list[str]]:
    """Real outputs with clamped, zero, NaN and out-of-range confidences and candidates."""
    outputs, sizes, names = run_batch(extractor, varied_images())
    outputs = {key: value.copy() for key, value in outputs.items()}
    units = len(extractor.symbol_table.groups[1].units)
    outputs["confidences"][0, 0] = np.nan
    outputs["confidences"][0, 1] = -0.0
    outputs["confidences"][1, 0] = 1.5
    outputs["confidences"][1, 1] = -0.25
    outputs["confidences"][2, 2] = 0.0005  # close to half a per mille, where the rounding decides
    # Group 1 is a position group, whose three candidates all name units.
    outputs["top_probs"][0, 1, 1] = 0.0
    outputs["top_probs"][0, 1, 2] = np.nan
    outputs["top_probs"][1, 1, 1] = -0.0
    outputs["top_probs"][1, 1, 2] = 1.25
    outputs["top_probs"][2, 1, 0] = -1.0
    outputs["top_indices"][2, 1, 1] = units  # past the last unit: left out
    outputs["top_indices"][2, 1, 2] = units + 100
    return outputs, sizes, names


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_matches_slow_path_on_edge_values(extractor, fmt):
    outputs, sizes, names = edited_outputs(extractor)
    writer = RecordWriter(extractor.symbol_table, extractor.width, extractor.height, fmt)

    texts = writer.records(outputs, sizes, names)

    for row, (text, size, name) in enumerate(zip(texts, sizes, names)):
        assert text is not None, f"image {row} fell back to the slow path"
        assert text == slow_record(extractor, fmt, outputs, row, size, name), f"image {row}"


def test_writer_leaves_uncovered_images_to_slow_path(extractor):
    outputs, sizes, names = run_batch(extractor, varied_images())
    outputs = {key: value.copy() for key, value in outputs.items()}
    outputs["winners"][1, 0] = len(extractor.symbol_table.groups[0].units)  # no such unit
    outputs["winners"][2, 3] = -1
    outputs["top_indices"][3, 0, 2] = -1  # a negative index means the unit counted from the end
    writer = RecordWriter(extractor.symbol_table, extractor.width, extractor.height, "jsonl")

    texts = writer.records(outputs, sizes, names)

    assert [row for row, text in enumerate(texts) if text is None] == [1, 2, 3]


# --------------------------------------------------------------------------- a table with every kind of slot


class _Session:
    """The two methods Extractor.__init__ calls; decoding never runs the session."""

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def get_outputs(self) -> list:
        return []


def units(values: list[str | None], pixels: list[float] | None = None) -> list[dict]:
    result = []
    for index, value in enumerate(values):
        unit = {"value": value, "status": "dead" if value is None else "named", "purity": 1.0}
        if pixels is not None:
            unit["pixel"] = None if value is None else pixels[index]
        result.append(unit)
    return result


def synthetic_table(extra_attribute: str = "material") -> SymbolTable:
    """Fixed attributes (one replaced by a group), quoted constants, numeric strings, dead units, an unused group."""
    return SymbolTable.model_validate(
        {
            "format_version": 1,
            "world": "synthetic",
            "input": {"height": 10, "width": 20},
            "entities": ["O1", "o2", "empty"],
            "entity_attributes": {"O1": {"colour": "Dark Red", "size": "5"}, "o2": {"colour": "blue"}},
            "top_k": 3,
            "groups": [
                {"factor": "O1.size", "entity": "O1", "attribute": "size", "units": units(["small", None, "7"])},
                {
                    "factor": "O1.x",
                    "entity": "O1",
                    "attribute": "x",
                    "axis": "x",
                    "units": units(["0", "9", None, "19"], [0.0, 9.0, 9.5, 19.0]),
                },
                {
                    "factor": "O1.y",
                    "entity": "O1",
                    "attribute": "y",
                    "axis": "y",
                    "units": units(["0", "4", "9"], [0.0, 4.0, 9.0]),
                },
                {"factor": None, "units": units(["a", "b"])},
                {
                    "factor": "o2.shape",
                    "entity": "o2",
                    "attribute": "shape",
                    "units": units(["square", "Big Circle", "not"]),
                },
                {
                    "factor": "o2.extra",
                    "entity": "o2",
                    "attribute": extra_attribute,
                    "units": units(["wood", "a). #script"]),
                },
                {
                    "factor": "o2.x",
                    "entity": "o2",
                    "attribute": "x",
                    "axis": "x",
                    "units": units(["3", "15"], [3.0, 15.0]),
                },
            ],
        }
    )


def synthetic_outputs(table: SymbolTable, count: int, seed: int) -> dict[str, np.ndarray]:
    """Random outputs whose winners are live units; candidates also name dead and missing units."""
    rng = np.random.default_rng(seed)
    groups = len(table.groups)
    winners = np.zeros((count, groups), dtype=np.int64)
    for g, group in enumerate(table.groups):
        live = [u for u, unit in enumerate(group.units) if unit.value is not None]
        winners[:, g] = rng.choice(live, size=count)
    confidences = rng.random((count, groups)).astype(np.float32)
    top_indices = rng.integers(0, 5, size=(count, groups, 3))
    top_probs = rng.random((count, groups, 3)).astype(np.float32)
    top_probs[rng.random((count, groups, 3)) < 0.2] = 0.0
    top_probs[rng.random((count, groups, 3)) < 0.05] = np.nan
    return {"winners": winners, "confidences": confidences, "top_indices": top_indices, "top_probs": top_probs}


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_matches_slow_path_on_synthetic_table(fmt):
    table = synthetic_table()
    extractor = Extractor(Path("synthetic.onnx"), _Session(), table)
    outputs = synthetic_outputs(table, 24, seed=3)
    sizes = [(20, 10), (40, 20), (33, 7), (20, 10)] * 6
    names = [f"image{index}" for index in range(24)]
    writer = RecordWriter(table, 20, 10, fmt)

    texts = writer.records(outputs, sizes, names)

    for row, (text, size, name) in enumerate(zip(texts, sizes, names)):
        assert text is not None, f"image {row} fell back to the slow path"
        assert text == slow_record(extractor, fmt, outputs, row, size, name), f"image {row} ({size})"


def test_synthetic_records_cover_fixed_and_quoted_values():
    table = synthetic_table()
    outputs = synthetic_outputs(table, 8, seed=4)
    text = "".join(RecordWriter(table, 20, 10, "lp").records(outputs, [(20, 10)] * 8, [f"i{n}" for n in range(8)]))
    assert 'object("O1").' in text
    assert 'colour("O1","Dark Red").' in text
    assert "position(o2," not in text  # o2 has an x but no y
    assert 'confidence("O1",colour,1000).' in text


def test_writer_falls_back_when_facts_fail():
    table = synthetic_table(extra_attribute="position")  # a reserved predicate: every record is an error
    extractor = Extractor(Path("synthetic.onnx"), _Session(), table)
    outputs = synthetic_outputs(table, 4, seed=5)
    sizes, names = [(20, 10)] * 4, [f"image{index}" for index in range(4)]

    texts = RecordWriter(table, 20, 10, "jsonl").records(outputs, sizes, names)

    assert texts == [None] * 4
    assert "cannot write facts" in slow_record(extractor, "jsonl", outputs, 0, sizes[0], names[0])


# --------------------------------------------------------------------------- the command


@pytest.fixture
def folder(tmp_path) -> Path:
    """Scenes of several sizes and formats, noise, and bad files between them."""
    rng = np.random.default_rng(11)
    scenes, _ = SortOfClevrWorld().sample(6, rng)
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(scenes[0]).save(root / "a_scene.png")
    (root / "b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    Image.fromarray(scenes[1]).resize((150, 150), Image.BILINEAR).save(root / "c_large.png")
    Image.fromarray(scenes[2]).resize((100, 60), Image.BILINEAR).save(root / "d_wide.png")
    Image.fromarray(np.zeros((3, 3, 3), dtype=np.uint8)).save(root / "e_tiny.png")  # below the minimum side
    Image.fromarray(rng.integers(0, 256, size=(75, 75, 3), dtype=np.uint8)).save(root / "f_noise.png")
    Image.fromarray(scenes[3]).save(root / "g_scene.jpg", quality=90)
    (root / "h_empty.png").write_bytes(b"")
    Image.fromarray(np.full((75, 75, 3), 255, dtype=np.uint8)).save(root / "i_blank.png")
    for index in (4, 5):
        Image.fromarray(scenes[index]).save(root / f"j_scene{index}.png")
    return root


def run_command(folder: Path, out: Path, fmt: str) -> int:
    argv = [str(folder), "--out", str(out), "--format", fmt, "--model", str(MODEL), "--threads", "1"]
    return batch.main(argv + ["--batch-size", "4", "--no-progress"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_command_output_matches_slow_path(folder, tmp_path, fmt, monkeypatch, capsys):
    fast, slow = tmp_path / f"fast.{fmt}", tmp_path / f"slow.{fmt}"
    written = []
    records = RecordWriter.records

    def counting(self, outputs, sizes, images):
        texts = records(self, outputs, sizes, images)
        written.extend(text for text in texts if text is not None)
        return texts

    monkeypatch.setattr(RecordWriter, "records", counting)
    fast_status = run_command(folder, fast, fmt)
    monkeypatch.setattr(RecordWriter, "records", lambda self, outputs, sizes, images: [None] * len(images))
    slow_status = run_command(folder, slow, fmt)
    capsys.readouterr()

    assert fast_status == slow_status == 1  # the corrupt, tiny and empty files fail
    assert len(written) == 8
    assert fast.read_bytes() == slow.read_bytes()
