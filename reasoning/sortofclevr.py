"""Sort-of-CLEVR questions: the question file format and a fast reasoner for the trusted rules.

`SortOfClevrReasoner` answers the questions of many images with rules/sortofclevr.lp in
one grounding. Grounding a small program costs about the same for one image as for
dozens, so the reasoner rewrites the program once: every predicate that depends on
the facts gets the image index as a first argument. Each rule then only joins atoms of
one image, and the answers equal those of solving each image alone (a test checks this).
"""

from __future__ import annotations

import json
from itertools import chain
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import clingo
import clingo.ast as ast

from service.schema import Attribute, DetectedObject, Extraction

from .engine import RULES_DIR
from .errors import ReasoningError
from .facts import constant, fact_terms

# The facts of one image as `reasoning.facts.fact_values` returns them.
FactValues = list[tuple[str, list[str | int]]]

__all__ = [
    "SORTOFCLEVR_RULES",
    "COLOURS",
    "QUESTION_TYPES",
    "TERNARY_TYPES",
    "Question",
    "Scene",
    "QuestionFileError",
    "load_scenes",
    "ground_truth_extraction",
    "question_terms",
    "index_by_image",
    "SortOfClevrReasoner",
]

SORTOFCLEVR_RULES = RULES_DIR / "sortofclevr.lp"
COLOURS = ("red", "green", "blue", "orange", "gray", "yellow")
QUESTION_TYPES = (
    "shape",
    "is_left",
    "is_top",
    "closest_shape",
    "furthest_shape",
    "count_same_shape",
    "count_between",
    "is_on_band",
    "count_obtuse",
)
# Question types about two named objects; the others name one.
TERNARY_TYPES = frozenset({"count_between", "is_on_band", "count_obtuse"})

# Variable that carries the image index through the rewritten rules.
IMAGE_VARIABLE = "ImageIndex"


class QuestionFileError(ReasoningError, ValueError):
    """A questions.json that does not follow the format; the message names the entry."""


@dataclass(frozen=True)
class Question:
    """One question about one image; `answer` is the expected answer when the file has one."""

    type: str
    colour: str
    colour2: str | None = None
    answer: str | int | None = None


@dataclass
class Scene:
    """One image of a question file with its true objects and its questions."""

    image: str  # file name, relative to the question file's folder
    objects: list[dict] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


def _question(entry: object, where: str) -> Question:
    if not isinstance(entry, dict):
        raise QuestionFileError(f"{where}: expected an object, got {type(entry).__name__}")
    kind = entry.get("question")
    if kind not in QUESTION_TYPES:
        raise QuestionFileError(f"{where}: unknown question type {kind!r} (known: {', '.join(QUESTION_TYPES)})")
    colour = entry.get("colour")
    if not isinstance(colour, str):
        raise QuestionFileError(f"{where}: missing 'colour'")
    colour2 = entry.get("colour2")
    if kind in TERNARY_TYPES and not isinstance(colour2, str):
        raise QuestionFileError(f"{where}: question {kind!r} needs 'colour2'")
    return Question(kind, colour, colour2 if kind in TERNARY_TYPES else None, entry.get("answer"))


def load_scenes(path: str | Path) -> list[Scene]:
    """Read a Sort-of-CLEVR question file (a folder's questions.json, or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "questions.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QuestionFileError(f"{path}: not found; a benchmark folder needs questions.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise QuestionFileError(f"{path}: cannot read question file: {error}") from None

    images = document.get("images") if isinstance(document, dict) else None
    if not isinstance(images, list):
        raise QuestionFileError(f"{path}: missing list 'images'")
    scenes = []
    for index, image in enumerate(images):
        where = f"{path}, images[{index}]"
        if not isinstance(image, dict) or not isinstance(image.get("image"), str):
            raise QuestionFileError(f"{where}: missing 'image' file name")
        questions = image.get("questions", [])
        objects = image.get("objects", [])
        if not isinstance(questions, list) or not isinstance(objects, list):
            raise QuestionFileError(f"{where}: 'questions' and 'objects' must be lists")
        parsed = [_question(q, f"{where}.questions[{n}]") for n, q in enumerate(questions)]
        scenes.append(Scene(image["image"], objects, parsed))
    return scenes


def ground_truth_extraction(scene: Scene, width: int, height: int) -> Extraction:
    """Turn the true objects of a scene into an extraction with confidence 1, keyed by colour."""
    objects = []
    for number, entry in enumerate(scene.objects):
        try:
            colour, x, y, shape = entry["colour"], int(entry["x"]), int(entry["y"]), entry["shape"]
        except (KeyError, TypeError, ValueError):
            raise QuestionFileError(
                f"{scene.image}, objects[{number}]: needs 'colour', integer 'x' and 'y', and 'shape'"
            ) from None
        attributes = {
            "shape": Attribute(value=shape, confidence=1.0),
            "colour": Attribute(value=colour, confidence=1.0),
            "x": Attribute(value=x, confidence=1.0),
            "y": Attribute(value=y, confidence=1.0),
        }
        objects.append(DetectedObject(id=colour, attributes=attributes))
    return Extraction(image=scene.image, width=width, height=height, objects=objects)


def question_terms(questions: Sequence[Question]) -> Iterator[tuple[str, list[clingo.Symbol]]]:
    """Yield `question(Id, Type, Colour)` or `question(Id, Type, Colour, Colour2)` as name and arguments.

    Ids are positions in `questions`, starting at 0.
    """
    for number, question in enumerate(questions):
        arguments = [constant(number), constant(question.type), constant(question.colour)]
        if question.colour2 is not None:
            arguments.append(constant(question.colour2))
        yield "question", arguments


def _variables(node: ast.AST) -> Iterator[str]:
    if node.ast_type == ast.ASTType.Variable:
        yield node.name
    for key in node.child_keys:
        child = getattr(node, key)
        if child is None:
            continue
        for item in [child] if isinstance(child, ast.AST) else child:
            yield from _variables(item)


def _static_predicates(statements: Sequence[ast.AST]) -> set[str]:
    """Return the predicates that only facts of the program define, such as colour_rank/2."""
    static: set[str] = set()
    dynamic: set[str] = set()
    for statement in statements:
        if statement.ast_type != ast.ASTType.Rule:
            continue
        head = statement.head
        is_fact = (
            not statement.body
            and head.ast_type == ast.ASTType.Literal
            and head.atom.ast_type == ast.ASTType.SymbolicAtom
            and head.atom.symbol.ast_type == ast.ASTType.Function
        )
        for name in _atom_names(head):
            (static if is_fact else dynamic).add(name)
    return static - dynamic


def _atom_names(head: ast.AST) -> Iterator[str]:
    if head.ast_type == ast.ASTType.SymbolicAtom and head.symbol.ast_type == ast.ASTType.Function:
        yield head.symbol.name
    for key in head.child_keys:
        child = getattr(head, key)
        if child is None:
            continue
        for item in [child] if isinstance(child, ast.AST) else child:
            yield from _atom_names(item)


class _ImageIndexer(ast.Transformer):
    def __init__(self, static: set[str]) -> None:
        self.static = static

    def visit_SymbolicAtom(self, atom: ast.AST) -> ast.AST:
        term = atom.symbol
        if term.ast_type != ast.ASTType.Function or term.name in self.static:
            return atom
        image = ast.Variable(term.location, IMAGE_VARIABLE)
        return atom.update(symbol=term.update(arguments=[image, *term.arguments]))


def index_by_image(statements: Sequence[ast.AST]) -> list[ast.AST]:
    """Rewrite a program so that it solves many images at once, each under its own index.

    Every predicate except those defined only by facts gets the image index as its first
    argument, in rule heads, bodies and aggregates alike, and #defined and #show
    signatures grow by one. Raises ValueError if the program already uses the index
    variable's name.
    """
    static = _static_predicates(statements)
    indexer = _ImageIndexer(static)
    rewritten = []
    for statement in statements:
        if IMAGE_VARIABLE in set(_variables(statement)):
            raise ValueError(f"program uses the variable {IMAGE_VARIABLE}, which index_by_image reserves")
        kind = statement.ast_type
        if kind in (ast.ASTType.Defined, ast.ASTType.ShowSignature) and statement.name not in static:
            rewritten.append(statement.update(arity=statement.arity + 1))
        elif kind == ast.ASTType.Rule:
            rewritten.append(indexer(statement))
        else:
            rewritten.append(statement)
    return rewritten


def _body_predicates(statements: Sequence[ast.AST]) -> set[str]:
    """Return the names of the predicates that rule bodies of the program read."""
    names: set[str] = set()
    for statement in statements:
        if statement.ast_type == ast.ASTType.Rule:
            for literal in statement.body:
                names.update(_atom_names(literal))
    return names


def _value(symbol: clingo.Symbol) -> str | int:
    if symbol.type == clingo.SymbolType.Number:
        return symbol.number
    if symbol.type == clingo.SymbolType.String:
        return symbol.string
    if not symbol.arguments:
        return symbol.name
    return str(symbol)


class SortOfClevrReasoner:
    """Answer Sort-of-CLEVR questions for a batch of images with one grounding.

    The rules are trusted and run in this process without the worker limits. Facts of
    image k carry k as their first argument, in the same vocabulary as `extraction_facts`.
    """

    def __init__(self, rules: str | Path = SORTOFCLEVR_RULES) -> None:
        statements: list[ast.AST] = []
        ast.parse_string(Path(rules).read_text(encoding="utf-8"), statements.append)
        self._statements = index_by_image(statements)
        # Facts of other predicates cannot change the answers, so they are not added.
        self._inputs = _body_predicates(statements)

    def answer(
        self, batch: Sequence[tuple[Extraction | FactValues, Sequence[Question]]]
    ) -> list[list[list[str | int]]]:
        """Return, per image and per question, the list of answers the rules derive.

        Each image comes as its extraction or as its `fact_values`. A correct program
        derives exactly one answer per question. A question about a colour that no object
        has gets an empty list.
        """
        errors: list[str] = []

        def keep_errors(code: clingo.MessageCode, message: str) -> None:
            if code == clingo.MessageCode.RuntimeError:
                errors.append(message.strip())

        control = clingo.Control(["--single-shot"], logger=keep_errors)
        try:
            with ast.ProgramBuilder(control) as builder:
                for statement in self._statements:
                    builder.add(statement)
            # Facts go straight to the backend, which skips printing and parsing them.
            # clingo 5.8 grounds rules against backend facts as it does against parsed ones.
            with control.backend() as backend:
                for index, (extraction, questions) in enumerate(batch):
                    image = clingo.Number(index)
                    if isinstance(extraction, Extraction):
                        facts = fact_terms(extraction)
                    else:
                        facts = ((name, [constant(value) for value in values]) for name, values in extraction)
                    for name, arguments in chain(facts, question_terms(questions)):
                        if name in self._inputs:
                            backend.add_rule([backend.add_atom(clingo.Function(name, [image, *arguments]))])
            control.ground([("base", [])])
        except RuntimeError:
            raise ReasoningError(f"Sort-of-CLEVR rules failed: {' '.join(errors) or 'grounding failed'}") from None

        answers: list[list[list[str | int]]] = [[[] for _ in questions] for _, questions in batch]
        with control.solve(yield_=True) as handle:
            for model in handle:
                for symbol in model.symbols(shown=True):
                    image, question, value = symbol.arguments
                    answers[image.number][question.number].append(_value(value))
        return answers
