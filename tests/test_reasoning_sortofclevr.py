"""The Sort-of-CLEVR program: each question type, ties, batching, and the dev set from ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import clingo
import clingo.ast
import numpy as np
import pytest

from reasoning.engine import LIBRARY
from reasoning.benchmark import _answer_all
from reasoning.facts import extraction_facts, fact_values, render_facts
from reasoning.sortofclevr import (
    COLOURS,
    QUESTION_TYPES,
    TERNARY_TYPES,
    Question,
    QuestionFileError,
    Scene,
    SortOfClevrReasoner,
    ground_truth_extraction,
    load_scenes,
    index_by_image,
    question_terms,
)

REPO = Path(__file__).resolve().parents[1]
DEV_SET = REPO.parent / "shared" / "benchmarks" / "sortofclevr-dev"
needs_dev_set = pytest.mark.skipif(not DEV_SET.is_dir(), reason=f"benchmark folder {DEV_SET} is absent")

# The same questions answered with the general rule library instead of sortofclevr.lp.
LIBRARY_ANSWERS = """
lib(Q, S) :- question(Q, shape, C), colour(O, C), shape(O, S).
lib(Q, yes) :- question(Q, is_left, C), colour(O, C), left_half(O).
lib(Q, no) :- question(Q, is_left, C), colour(O, C), right_half(O).
lib(Q, yes) :- question(Q, is_top, C), colour(O, C), top_half(O).
lib(Q, no) :- question(Q, is_top, C), colour(O, C), bottom_half(O).
lib(Q, S) :- question(Q, closest_shape, C), colour(O, C), closest(O, P), shape(P, S).
lib(Q, S) :- question(Q, furthest_shape, C), colour(O, C), furthest(O, P), shape(P, S).
lib(Q, N) :- question(Q, count_same_shape, C), colour(O, C), count_same_shape(O, N).
lib(Q, N) :- question(Q, count_between, C, D), colour(A, C), colour(B, D), count_between(A, B, N).
lib(Q, yes) :- question(Q, is_on_band, C, D), colour(A, C), colour(B, D), band_occupied(A, B).
lib(Q, no) :- question(Q, is_on_band, C, D), colour(A, C), colour(B, D), A != B, not band_occupied(A, B).
lib(Q, N) :- question(Q, count_obtuse, C, D), colour(A, C), colour(B, D), count_obtuse(A, B, N).
"""


def make_scene(objects, questions) -> Scene:
    entries = [{"colour": c, "shape": s, "x": x, "y": y} for c, s, x, y in objects]
    return Scene("scene.png", entries, [Question(*q) for q in questions])


def solve_alone(scene: Scene) -> list[list]:
    return SortOfClevrReasoner().answer([(ground_truth_extraction(scene, 75, 75), scene.questions)])[0]


def all_questions(colour_pairs) -> list[Question]:
    questions = []
    for first, second in colour_pairs:
        for kind in QUESTION_TYPES:
            questions.append(Question(kind, first, second if kind in TERNARY_TYPES else None))
    return questions


# --------------------------------------------------------------------------- reference answers


def reference_answer(objects: dict[str, tuple[str, int, int]], question: Question):
    """Answer one question in plain Python with integer arithmetic, as a second opinion."""
    shape, x, y = objects[question.colour]
    others = [c for c in COLOURS if c in objects and c != question.colour]
    kind = question.type
    if kind == "shape":
        return shape
    if kind == "is_left":
        return "yes" if 2 * x < 75 else "no"
    if kind == "is_top":
        return "yes" if 2 * y < 75 else "no"

    def distance(c):
        return (objects[c][1] - x) ** 2 + (objects[c][2] - y) ** 2

    if kind == "closest_shape":
        return objects[min(others, key=lambda c: (distance(c), COLOURS.index(c)))][0]
    if kind == "furthest_shape":
        return objects[min(others, key=lambda c: (-distance(c), COLOURS.index(c)))][0]
    if kind == "count_same_shape":
        return sum(objects[c][0] == shape for c in others)

    _, bx, by = objects[question.colour2]
    thirds = [objects[c][1:] for c in others if c != question.colour2]
    if kind == "count_between":
        return sum(min(x, bx) <= cx <= max(x, bx) and min(y, by) <= cy <= max(y, by) for cx, cy in thirds)
    if kind == "is_on_band":
        dx, dy = bx - x, by - y
        if dx == 0:
            return "yes" if any(cx == x for cx, _ in thirds) else "no"
        return "yes" if any(abs((cy - y) * dx - dy * (cx - x)) <= 12 * abs(dx) for cx, cy in thirds) else "no"
    if kind == "count_obtuse":
        count = 0
        for cx, cy in thirds:
            corners = [(x, y), (bx, by), (cx, cy)]
            cross = (bx - x) * (cy - y) - (by - y) * (cx - x)
            dots = []
            for i in range(3):
                (px, py), (qx, qy), (rx, ry) = corners[i], corners[(i + 1) % 3], corners[(i + 2) % 3]
                dots.append((qx - px) * (rx - px) + (qy - py) * (ry - py))
            count += cross != 0 and min(dots) <= 0
        return count
    raise AssertionError(kind)


def random_scenes(count: int, seed: int) -> list[Scene]:
    """Six objects at integer centres in [5, 70), at least 10 px apart, with every question type."""
    rng = np.random.default_rng(seed)
    scenes = []
    while len(scenes) < count:
        centres: list[tuple[int, int]] = []
        while len(centres) < len(COLOURS):
            x, y = (int(v) for v in rng.integers(5, 70, size=2))
            # Share an x with an earlier object now and then, so vertical lines occur.
            if centres and rng.random() < 0.2:
                x = centres[int(rng.integers(len(centres)))][0]
            if all((x - a) ** 2 + (y - b) ** 2 >= 100 for a, b in centres):
                centres.append((x, y))
        shapes = rng.choice(["square", "circle"], size=len(COLOURS))
        objects = [(c, str(s), x, y) for c, s, (x, y) in zip(COLOURS, shapes, centres)]
        pairs = [tuple(str(c) for c in rng.choice(COLOURS, size=2, replace=False)) for _ in range(4)]
        scene = make_scene(objects, [])
        scene.questions = all_questions(pairs)
        scenes.append(scene)
    return scenes


# --------------------------------------------------------------------------- question types


def test_one_object_questions():
    scene = make_scene(
        [("red", "square", 37, 38), ("green", "circle", 38, 37)],
        [("shape", "red"), ("shape", "green"), ("is_left", "red"), ("is_left", "green"), ("is_top", "red"), ("is_top", "green")],
    )

    assert solve_alone(scene) == [["square"], ["circle"], ["yes"], ["no"], ["no"], ["yes"]]


def test_closest_and_furthest_ties():
    # From red, blue and green are both at distance 10, and yellow and orange both at 40.
    scene = make_scene(
        [
            ("red", "circle", 30, 30),
            ("blue", "circle", 40, 30),
            ("green", "square", 30, 40),
            ("yellow", "circle", 70, 30),
            ("orange", "square", 30, 70),
        ],
        [("closest_shape", "red"), ("furthest_shape", "red")],
    )

    assert solve_alone(scene) == [["square"], ["square"]]


def test_count_questions():
    scene = make_scene(
        [
            ("red", "square", 10, 10),
            ("green", "circle", 30, 10),
            ("blue", "square", 10, 40),
            ("orange", "circle", 50, 10),
            ("gray", "square", 20, 60),
            ("yellow", "circle", 40, 15),
        ],
        [
            ("count_same_shape", "red"),
            ("count_between", "red", "green"),
            ("count_obtuse", "red", "green"),
            ("is_on_band", "red", "green"),
            ("is_on_band", "blue", "gray"),
        ],
    )

    # No object lies in the flat box between red and green at y = 10. Orange is collinear
    # with them (180 degrees), so it is not obtuse, but it lies on their line.
    assert solve_alone(scene) == [[2], [0], [2], ["yes"], ["no"]]


def test_band_on_vertical_line():
    scene = make_scene(
        [("red", "square", 20, 10), ("green", "circle", 20, 30), ("blue", "square", 20, 70), ("orange", "circle", 21, 50)],
        [("is_on_band", "red", "green"), ("is_on_band", "blue", "orange")],
    )

    assert solve_alone(scene) == [["yes"], ["no"]]


def test_missing_colour_gets_no_answer():
    scene = make_scene([("red", "square", 10, 10)], [("shape", "blue"), ("count_between", "red", "blue")])

    assert solve_alone(scene) == [[], []]


def test_unknown_colour_is_quoted():
    scene = make_scene([("red", "square", 10, 10)], [("shape", "Red). evil(1"), ("shape", "red")])

    assert solve_alone(scene) == [[], ["square"]]


def test_index_by_image_reserves_variable():
    statements = []
    clingo.ast.parse_string("p(ImageIndex) :- q(ImageIndex).", statements.append)

    with pytest.raises(ValueError, match="ImageIndex"):
        index_by_image(statements)


def test_index_by_image_keeps_static_facts():
    statements = []
    clingo.ast.parse_string("rank(red, 1). p(X, R) :- colour(X, C), rank(C, R). #show p/2.", statements.append)

    rewritten = [str(statement) for statement in index_by_image(statements)]

    assert "rank(red,1)." in rewritten
    assert "p(ImageIndex,X,R) :- colour(ImageIndex,X,C); rank(C,R)." in rewritten
    assert "#show p/3." in rewritten


def test_batch_matches_single_images():
    scenes = random_scenes(12, seed=3)
    reasoner = SortOfClevrReasoner()
    items = [(ground_truth_extraction(s, 75, 75), s.questions) for s in scenes]

    together = reasoner.answer(items)
    alone = [reasoner.answer([item])[0] for item in items]

    assert together == alone


def test_fact_values_give_same_answers():
    scenes = random_scenes(12, seed=5)
    reasoner = SortOfClevrReasoner()
    extractions = [ground_truth_extraction(s, 75, 75) for s in scenes]

    from_extractions = reasoner.answer([(e, s.questions) for e, s in zip(extractions, scenes)])
    from_values = reasoner.answer([(fact_values(e), s.questions) for e, s in zip(extractions, scenes)])

    assert from_values == from_extractions


def test_worker_processes_give_same_answers():
    scenes = random_scenes(9, seed=7)
    items = [(ground_truth_extraction(s, 75, 75), s.questions) for s in scenes]

    serial, _ = _answer_all(items, batch_size=64, workers=1)
    parallel, _ = _answer_all(items, batch_size=64, workers=2)

    assert parallel == serial


def test_random_scenes_match_reference():
    scenes = random_scenes(150, seed=11)
    answers = SortOfClevrReasoner().answer([(ground_truth_extraction(s, 75, 75), s.questions) for s in scenes])

    for scene, derived in zip(scenes, answers):
        objects = {o["colour"]: (o["shape"], o["x"], o["y"]) for o in scene.objects}
        for question, values in zip(scene.questions, derived):
            assert values == [reference_answer(objects, question)], (scene.objects, question)


def test_program_agrees_with_library():
    scenes = random_scenes(40, seed=5)
    reasoner = SortOfClevrReasoner()

    for scene in scenes:
        extraction = ground_truth_extraction(scene, 75, 75)
        facts = render_facts(extraction_facts(extraction))
        facts += render_facts(clingo.Function(n, a) for n, a in question_terms(scene.questions))
        control = clingo.Control()
        for path in LIBRARY:
            control.load(str(path))
        control.add("base", [], facts + LIBRARY_ANSWERS)
        control.ground([("base", [])])
        library = [[] for _ in scene.questions]
        with control.solve(yield_=True) as handle:
            for model in handle:
                for symbol in model.symbols(atoms=True):
                    if symbol.name == "lib":
                        number, value = symbol.arguments
                        library[number.number].append(value.number if value.type == clingo.SymbolType.Number else value.name)

        assert reasoner.answer([(extraction, scene.questions)])[0] == library


# --------------------------------------------------------------------------- question files


@needs_dev_set
def test_dev_set_ground_truth_all_correct():
    scenes = load_scenes(DEV_SET)
    answers = SortOfClevrReasoner().answer([(ground_truth_extraction(s, 75, 75), s.questions) for s in scenes])

    wrong = [
        (scene.image, number, question, derived)
        for scene, image_answers in zip(scenes, answers)
        for number, (question, derived) in enumerate(zip(scene.questions, image_answers))
        if derived != [question.answer]
    ]
    assert sum(len(s.questions) for s in scenes) == 1200
    assert wrong == []


def test_question_file_errors_name_entry(tmp_path):
    path = tmp_path / "questions.json"
    path.write_text(json.dumps({"images": [{"image": "a.png", "questions": [{"question": "colour_of", "colour": "red"}]}]}))

    with pytest.raises(QuestionFileError, match=r"images\[0\]\.questions\[0\]: unknown question type 'colour_of'"):
        load_scenes(tmp_path)


def test_ternary_question_needs_second_colour(tmp_path):
    path = tmp_path / "questions.json"
    path.write_text(json.dumps({"images": [{"image": "a.png", "questions": [{"question": "count_between", "colour": "red"}]}]}))

    with pytest.raises(QuestionFileError, match="needs 'colour2'"):
        load_scenes(tmp_path)


def test_missing_question_file(tmp_path):
    with pytest.raises(QuestionFileError, match="not found"):
        load_scenes(tmp_path)
