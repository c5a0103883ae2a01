"""Build ASP facts from decoded images as clingo symbols.

Every value goes through `clingo.Function`, `clingo.Number` or `clingo.String`, and text
is produced only by clingo's own printing, so no symbol a model emits can inject program
text: a value that is not a plain lowercase constant becomes a quoted string.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from functools import lru_cache
from typing import TypeVar

import clingo

from service.schema import Attribute, DetectedObject, Extraction

from .errors import FactsError

__all__ = [
    "POSITION_ATTRIBUTES",
    "RESERVED_PREDICATES",
    "attribute_order",
    "attribute_predicate",
    "constant",
    "extraction_facts",
    "fact_terms",
    "fact_values",
    "per_mille",
    "constant_text",
    "render_extraction_facts",
    "render_facts",
]

T = TypeVar("T")

# x and y are written together as position(O, X, Y).
POSITION_ATTRIBUTES = ("x", "y")

# Predicate names the facts and the rule library use for their own vocabulary; an
# attribute with one of these names would be mistaken for them.
RESERVED_PREDICATES = frozenset(
    {
        "object",
        "position",
        "confidence",
        "image_size",
        "uncertain",
        "candidate",
        "chosen",
        "question",
        "answer",
    }
)

# A clingo identifier that starts with a lowercase letter, after optional underscores.
_CONSTANT = re.compile(r"_*[a-z][A-Za-z0-9_']*")
_INTEGER = re.compile(r"-?[0-9]+")
# Keywords that look like constants but cannot stand as terms.
_KEYWORDS = frozenset({"not"})
# clingo numbers are 32-bit signed integers.
_NUMBER_RANGE = (-(2**31), 2**31 - 1)

# Order in which attribute facts are written for each object.
_ATTRIBUTE_ORDER = ("shape", "colour", "size")


@lru_cache(maxsize=4096, typed=True)
def constant(value: str | int) -> clingo.Symbol:
    """Return the symbol for one value: a number, a plain constant, or a quoted string.

    Integers and decimal strings become numbers; strings such as `square` or `o1` become
    constants; anything else (capitals, spaces, punctuation, `not`) becomes a string, so
    `a). #script` turns into the term `"a). #script"`. Raises FactsError for integers
    outside clingo's 32-bit range.
    """
    if isinstance(value, bool):
        raise FactsError(f"invalid fact value {value!r}: expected a string or an integer")
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        value = int(value)
    if isinstance(value, int):
        if not _NUMBER_RANGE[0] <= value <= _NUMBER_RANGE[1]:
            raise FactsError(f"invalid fact value {value}: clingo numbers are 32-bit integers")
        return clingo.Number(value)
    if _CONSTANT.fullmatch(value) and value not in _KEYWORDS:
        return clingo.Function(value)
    return clingo.String(value)


def per_mille(probability: float) -> int:
    """Convert a probability in [0, 1] into an integer per mille (0..1000)."""
    return round(probability * 1000)


def attribute_predicate(attribute: str) -> str:
    """Return the predicate name of an attribute's facts; raises FactsError for a name that cannot be one."""
    if not _CONSTANT.fullmatch(attribute) or attribute in _KEYWORDS:
        raise FactsError(f"invalid attribute name {attribute!r}: it must be a lowercase ASP identifier")
    if attribute in RESERVED_PREDICATES:
        raise FactsError(f"invalid attribute name {attribute!r}: it is a reserved predicate of the facts")
    return attribute


@lru_cache(maxsize=4096, typed=True)
def _is_number(value: str | int) -> bool:
    return constant(value).type == clingo.SymbolType.Number


def _coordinate(obj: DetectedObject, axis: str, value: str | int) -> str | int:
    """Return a position value after checking that it is a clingo number."""
    if not _is_number(value):
        raise FactsError(f"object {obj.id!r}: {axis} must be an integer pixel coordinate, got {value!r}")
    return value


def attribute_order(attributes: Collection[str]) -> list[str]:
    """Return the attribute names other than x and y in the order `fact_terms` writes their facts."""
    known = [name for name in _ATTRIBUTE_ORDER if name in attributes]
    others = sorted(set(attributes) - set(_ATTRIBUTE_ORDER) - set(POSITION_ATTRIBUTES))
    return known + others


def _uncertain(attribute: Attribute, uncertain_below: float | None, alternatives: int) -> bool:
    return (
        uncertain_below is not None
        and alternatives > 1
        and attribute.confidence < uncertain_below
        and len(attribute.candidates) > 1
    )


def fact_terms(
    extraction: Extraction,
    *,
    alternatives: int = 0,
    uncertain_below: float | None = None,
) -> Iterator[tuple[str, list[clingo.Symbol]]]:
    """Yield each fact of an extraction as a predicate name and its argument symbols.

    With `alternatives` K > 1 and a threshold, an attribute whose confidence is below
    `uncertain_below` is written as `uncertain(O, A)` plus `candidate(O, A, V, P)` for
    its top-K candidates instead of a plain fact; rules/alternatives.lp turns those into
    a choice. For a position with one uncertain axis, the certain axis is written as a
    single candidate so that the choice rule can combine both axes.
    """
    return _facts(extraction, constant, alternatives, uncertain_below)


def _facts(
    extraction: Extraction,
    term: Callable[[str | int], T],
    alternatives: int,
    uncertain_below: float | None,
) -> Iterator[tuple[str, list[T]]]:
    """Yield the facts of `fact_terms`, with each argument made by `term` from its value."""
    yield "image_size", [term(extraction.width), term(extraction.height)]
    for obj in extraction.objects:
        name = term(obj.id)
        yield "object", [name]

        for attribute in attribute_order(obj.attributes):
            value = obj.attributes[attribute]
            predicate = attribute_predicate(attribute)
            # NOTE: only shape, colour and size have choice rules; other attributes stay certain.
            if attribute in _ATTRIBUTE_ORDER and _uncertain(value, uncertain_below, alternatives):
                yield "uncertain", [name, term(predicate)]
                for candidate in value.candidates[:alternatives]:
                    probability = term(per_mille(candidate.probability))
                    yield "candidate", [name, term(predicate), term(candidate.value), probability]
            else:
                yield predicate, [name, term(value.value)]

        if all(axis in obj.attributes for axis in POSITION_ATTRIBUTES):
            axes = [obj.attributes[axis] for axis in POSITION_ATTRIBUTES]
            unsure = [_uncertain(axis, uncertain_below, alternatives) for axis in axes]
            if any(unsure):
                for axis_name, axis, is_unsure in zip(POSITION_ATTRIBUTES, axes, unsure):
                    label = term(axis_name)
                    if is_unsure:
                        yield "uncertain", [name, label]
                        choices = [(c.value, c.probability) for c in axis.candidates[:alternatives]]
                    else:
                        choices = [(axis.value, axis.confidence)]
                    for value, probability in choices:
                        coordinate = term(_coordinate(obj, axis_name, value))
                        yield "candidate", [name, label, coordinate, term(per_mille(probability))]
            else:
                yield "position", [name, *(term(_coordinate(obj, n, a.value)) for n, a in zip(POSITION_ATTRIBUTES, axes))]

        for attribute in [*attribute_order(obj.attributes), *(a for a in POSITION_ATTRIBUTES if a in obj.attributes)]:
            confidence = per_mille(obj.attributes[attribute].confidence)
            yield "confidence", [name, term(attribute), term(confidence)]


def _value(value: str | int) -> str | int:
    return value


def fact_values(
    extraction: Extraction,
    *,
    alternatives: int = 0,
    uncertain_below: float | None = None,
) -> list[tuple[str, list[str | int]]]:
    """Return the facts of `fact_terms` with plain Python values in place of symbols.

    The list pickles in a fraction of the time the extraction takes, so it is what goes to
    another process. `constant` turns each value into the symbol `fact_terms` would give.
    """
    return list(_facts(extraction, _value, alternatives, uncertain_below))


def extraction_facts(
    extraction: Extraction,
    *,
    alternatives: int = 0,
    uncertain_below: float | None = None,
) -> list[clingo.Symbol]:
    """Return the facts of one image as clingo symbols (see `fact_terms` for the options)."""
    return [
        clingo.Function(predicate, arguments)
        for predicate, arguments in fact_terms(extraction, alternatives=alternatives, uncertain_below=uncertain_below)
    ]


def render_facts(facts: Iterable[clingo.Symbol] | Sequence[clingo.Symbol]) -> str:
    """Write facts as ASP text, one per line, using clingo's printing of each symbol."""
    return "".join(f"{fact}.\n" for fact in facts)


@lru_cache(maxsize=65536, typed=True)
def constant_text(value: str | int) -> str:
    """Return clingo's printing of `constant(value)`, cached by the Python value."""
    return str(constant(value))


def render_extraction_facts(
    extraction: Extraction,
    *,
    alternatives: int = 0,
    uncertain_below: float | None = None,
) -> str:
    """Write the facts of one image as ASP text, equal to `render_facts(extraction_facts(...))`.

    clingo prints a function term as its name followed by its printed arguments, separated
    by commas, in brackets. Each argument's printing comes from clingo once per distinct
    value and is then looked up by the Python value, because building and hashing clingo
    symbols for every fact costs more than the lookup.
    """
    lines = []
    for predicate, arguments in _facts(extraction, constant_text, alternatives, uncertain_below):
        lines.append(f"{predicate}({','.join(arguments)}).\n")
    return "".join(lines)
