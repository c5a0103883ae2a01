"""Command lines end to end: `python -m reasoning.query` and `python -m reasoning.benchmark`.

Tests that decode images need the shipped model and skip while models/sortofclevr.onnx is absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import clingo
import numpy as np
import pytest
from PIL import Image

from reasoning.engine import LIBRARY

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "sortofclevr.onnx"
DEV_SET = REPO.parent / "shared" / "benchmarks" / "sortofclevr-dev"
needs_model = pytest.mark.skipif(not MODEL.is_file(), reason=f"default model {MODEL} is absent")
needs_dev_set = pytest.mark.skipif(not DEV_SET.is_dir(), reason=f"benchmark folder {DEV_SET} is absent")

SHAPES = ("square", "circle")
COLOURS = ("red", "green", "blue", "orange", "gray", "yellow")


def command(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """The command stopped (exit status 2) with one error line that contains each fragment."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def world_images(tmp_path_factory):
    """Three Sort-of-CLEVR images drawn like the public generator, with their true objects."""
    from training.worlds import SortOfClevrWorld

    images, labels = SortOfClevrWorld(plain=1.0).sample(3, np.random.default_rng(7))
    folder = tmp_path_factory.mktemp("images")
    scenes = []
    for number, (image, label) in enumerate(zip(images, labels)):
        path = folder / f"scene{number}.png"
        Image.fromarray(image).save(path)
        objects = {}
        for k, colour in enumerate(COLOURS):
            shape, x, y = label[3 * k : 3 * k + 3]
            objects[colour] = (SHAPES[shape], int(x) + 5, int(y) + 5)
        scenes.append((path, objects))
    return scenes


# --------------------------------------------------------------------------- without a model


@pytest.mark.parametrize("module", ["reasoning.query", "reasoning.benchmark"])
def test_help(module):
    result = command(module, "--help")

    assert result.returncode == 0
    assert result.stdout.startswith("usage:")


def test_query_rejects_script_before_decoding():
    result = command("reasoning.query", "missing.png", "--query", "#script (python)\nimport os\n#end.")

    assert_one_error_line(result, "--query: line 1, column 1: #script is not allowed")


def test_query_program_syntax_error_names_file(tmp_path):
    program = tmp_path / "rules.lp"
    program.write_text("a.\nb :- c(.\n")

    result = command("reasoning.query", "missing.png", "--program", str(program))

    assert_one_error_line(result, f"{program}: line 2, column 8: syntax error")


def test_query_missing_program_file(tmp_path):
    result = command("reasoning.query", "missing.png", "--program", str(tmp_path / "none.lp"))

    assert_one_error_line(result, "program file", "none.lp not found")


def test_query_invalid_show_is_usage_error():
    result = command("reasoning.query", "missing.png", "--show", "Answer")

    assert result.returncode == 2
    assert "invalid predicate 'Answer'" in result.stderr


def test_query_missing_model(tmp_path):
    result = command("reasoning.query", "missing.png", "--model", str(tmp_path / "none.onnx"))

    assert_one_error_line(result, "none.onnx")


@needs_dev_set
def test_benchmark_ground_truth_is_perfect():
    result = command("reasoning.benchmark", "sortofclevr", str(DEV_SET), "--facts", "ground-truth", "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["overall"] == 1.0
    assert report["questions"] == 1200
    assert set(report["per_type"]) == {
        "shape",
        "is_left",
        "is_top",
        "closest_shape",
        "furthest_shape",
        "count_same_shape",
        "count_between",
        "is_on_band",
        "count_obtuse",
    }
    assert report["perception_ms_per_image"] is None
    assert report["reasoning_ms_per_image"] > 0


@needs_dev_set
def test_benchmark_table_output():
    result = command("reasoning.benchmark", "sortofclevr", str(DEV_SET), "--facts", "ground-truth")

    assert result.returncode == 0, result.stderr
    assert "overall                1200   1200   100.00%" in result.stdout


@needs_dev_set
def test_benchmark_below_min_accuracy_exits_1(tmp_path):
    questions = json.loads((DEV_SET / "questions.json").read_text())
    first = questions["images"][0]["questions"][0]
    assert first["question"] == "is_top"
    # One of the 1,200 expected answers is made wrong, so ground truth scores 1199 of 1200.
    first["answer"] = "no" if first["answer"] == "yes" else "yes"
    (tmp_path / "questions.json").write_text(json.dumps(questions))
    for entry in questions["images"]:
        (tmp_path / entry["image"]).symlink_to(DEV_SET / entry["image"])

    result = command(
        "reasoning.benchmark", "sortofclevr", str(tmp_path), "--facts", "ground-truth", "--min-accuracy", "1.0"
    )

    # A missed threshold is a result, not an error: status 1, with the table on stdout.
    assert result.returncode == 1, result.stderr
    assert "overall                1199   1200" in result.stdout
    assert result.stderr.splitlines() == ["error: overall accuracy 0.9992 is below --min-accuracy 1.0"]


def test_benchmark_missing_folder(tmp_path):
    result = command("reasoning.benchmark", "sortofclevr", str(tmp_path / "nowhere"), "--facts", "ground-truth")

    assert_one_error_line(result, "questions.json")


# --------------------------------------------------------------------------- with the model


def positions(document: dict) -> dict[str, tuple[int, int]]:
    found = {}
    for fact in document["facts"]:
        symbol = clingo.parse_term(fact)
        if symbol.name == "position":
            name, x, y = symbol.arguments
            found[name.name] = (x.number, y.number)
    return found


def shapes(document: dict) -> dict[str, str]:
    found = {}
    for fact in document["facts"]:
        symbol = clingo.parse_term(fact)
        if symbol.name == "shape":
            found[symbol.arguments[0].name] = symbol.arguments[1].name
    return found


@needs_model
def test_query_decodes_and_answers(world_images):
    paths = [str(path) for path, _ in world_images]

    result = command("reasoning.query", *paths, "--query", "west(O) :- left_half(O).", "--json")

    assert result.returncode == 0, result.stderr
    documents = json.loads(result.stdout)["images"]
    assert len(documents) == len(world_images)
    for document, (_, truth) in zip(documents, world_images):
        decoded = positions(document)
        assert set(decoded) == set(truth)
        for colour, (shape, x, y) in truth.items():
            assert abs(decoded[colour][0] - x) <= 1, (colour, decoded[colour], (x, y))
            assert abs(decoded[colour][1] - y) <= 1, (colour, decoded[colour], (x, y))
        assert shapes(document) == {colour: shape for colour, (shape, _, _) in truth.items()}
        west = {f"west({colour})" for colour in decoded if 2 * decoded[colour][0] < 75}
        assert set(document["answer"]["models"][0]) == west


@needs_model
def test_query_maps_positions_of_resized_image(world_images, tmp_path):
    path, truth = world_images[0]
    large = tmp_path / "large.png"
    Image.open(path).resize((150, 150), Image.NEAREST).save(large)

    result = command("reasoning.query", str(large), "--facts-only", "--json")

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)["images"][0]
    assert (document["width"], document["height"]) == (150, 150)
    decoded = positions(document)
    for colour, (_, x, y) in truth.items():
        # A pixel centre x of the 75 px image covers 2x and 2x + 1 in the 150 px one.
        assert abs(decoded[colour][0] - (2 * x + 0.5)) <= 2.5, (colour, decoded[colour], (x, y))
        assert abs(decoded[colour][1] - (2 * y + 0.5)) <= 2.5, (colour, decoded[colour], (x, y))


@needs_model
def test_facts_only_output_loads_into_clingo(world_images):
    path, _ = world_images[0]

    result = command("reasoning.query", str(path), "--facts-only")

    assert result.returncode == 0, result.stderr
    control = clingo.Control()
    for rules in LIBRARY:
        control.load(str(rules))
    control.add("base", [], result.stdout)
    control.ground([("base", [])])
    closest = [a for a in control.symbolic_atoms.by_signature("closest", 2) if a.is_fact]
    assert len(closest) == len(COLOURS)


@needs_model
def test_query_alternatives_report_certain_and_possible(world_images):
    path, _ = world_images[0]

    result = command(
        "reasoning.query", str(path), "--alternatives", "3", "--query", "west(O) :- left_half(O).", "--json"
    )

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)["images"][0]["answer"]
    assert answer["certain"] is not None
    assert set(answer["certain"]) <= set(answer["possible"])


@needs_model
def test_query_limit_error_is_one_line(world_images):
    path, _ = world_images[0]

    result = command(
        "reasoning.query", str(path), "--query", "p(X) :- X = 1..100000000.", "--memory-mib", "128", "--wall-seconds", "5"
    )

    assert_one_error_line(result, "(memory_mib)")


@needs_model
@needs_dev_set
def test_benchmark_with_model_reaches_accuracy():
    result = command("reasoning.benchmark", "sortofclevr", str(DEV_SET), "--json", timeout=300)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["overall"] >= 0.99, report["mistakes"]
    assert report["perception_ms_per_image"] > 0


def test_query_logs_ignored_exif_orientation(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 9  # Orientation; valid values are 1 to 8
    Image.open(REPO / "examples" / "sortofclevr.png").convert("RGB").save(path, exif=exif, quality=95, subsampling=0)

    result = command("reasoning.query", str(path), "--facts-only")

    assert result.returncode == 0, result.stderr
    assert "object(red)." in result.stdout
    assert result.stderr.strip().splitlines() == [
        f"WARNING service.images: {path}: ignoring EXIF orientation 9: valid values are 1 to 8"
    ]
