"""Facts built from extractions: vocabulary, quoting of hostile symbols, and alternatives."""

from __future__ import annotations

import clingo
import pytest

from reasoning.errors import FactsError
from reasoning.facts import (
    constant,
    extraction_facts,
    fact_terms,
    fact_values,
    per_mille,
    render_extraction_facts,
    render_facts,
)
from service.schema import Attribute, Candidate, DetectedObject, Extraction


def attribute(value, confidence=1.0, candidates=()):
    return Attribute(
        value=value,
        confidence=confidence,
        candidates=[Candidate(value=v, probability=p) for v, p in candidates],
    )


def one_object(object_id="o1", **attributes) -> Extraction:
    return Extraction(
        image="test.png",
        width=64,
        height=48,
        objects=[DetectedObject(id=object_id, attributes=attributes)],
    )


def parsed(text: str) -> set[str]:
    """Ground the text with clingo and return its atoms, so that tests check what clingo reads."""
    control = clingo.Control()
    control.add("base", [], text)
    control.ground([("base", [])])
    return {str(atom.symbol) for atom in control.symbolic_atoms}


def test_facts_follow_vocabulary():
    extraction = one_object(
        shape=attribute("square", 0.9876),
        colour=attribute("red"),
        x=attribute(12, 0.5),
        y=attribute(30),
        size=attribute("large", 0.25),
    )

    facts = [str(fact) for fact in extraction_facts(extraction)]

    assert facts == [
        "image_size(64,48)",
        "object(o1)",
        "shape(o1,square)",
        "colour(o1,red)",
        "size(o1,large)",
        "position(o1,12,30)",
        "confidence(o1,shape,988)",
        "confidence(o1,colour,1000)",
        "confidence(o1,size,250)",
        "confidence(o1,x,500)",
        "confidence(o1,y,1000)",
    ]


def test_rendered_facts_parse_back_unchanged():
    extraction = one_object(shape=attribute("circle"), x=attribute(1), y=attribute(2))
    facts = extraction_facts(extraction)

    assert parsed(render_facts(facts)) == {str(fact) for fact in facts}


def test_hostile_symbol_becomes_string():
    hostile = "a). #script (python) import os #end. b("
    extraction = one_object(object_id=hostile, shape=attribute("x). evil :- "), x=attribute(3), y=attribute(4))

    facts = extraction_facts(extraction)
    atoms = parsed(render_facts(facts))

    assert clingo.Function("object", [clingo.String(hostile)]) in facts
    assert clingo.Function("shape", [clingo.String(hostile), clingo.String("x). evil :- ")]) in facts
    assert "evil" not in atoms
    assert atoms == {str(fact) for fact in facts}



def test_render_extraction_facts_equals_render_facts():
    hostile = "a). #script (python) import os #end. b("
    extractions = [
        one_object(shape=attribute("circle", 0.5), x=attribute(1, 0.25), y=attribute(2)),
        one_object(object_id=hostile, shape=attribute("x). evil :- "), x=attribute(3), y=attribute(4)),
        one_object(object_id="Red", shape=attribute('say "hi"\\'), x=attribute("12"), y=attribute(-4)),
        one_object(shape=attribute("circle", 0.5), x=attribute(1, 0.25), y=attribute(2)),  # cached values
    ]

    for extraction in extractions:
        assert render_extraction_facts(extraction) == render_facts(extraction_facts(extraction))


def test_fact_values_match_fact_terms():
    extraction = one_object(object_id="Red", shape=attribute("a). b"), x=attribute("12"), y=attribute(-4))

    values = [(name, [constant(value) for value in arguments]) for name, arguments in fact_values(extraction)]

    assert values == list(fact_terms(extraction))


def test_render_extraction_facts_with_alternatives():
    uncertain = Attribute(
        value="circle",
        confidence=0.4,
        candidates=[Candidate(value="circle", probability=0.4), Candidate(value="square", probability=0.35)],
    )
    extraction = one_object(shape=uncertain, x=attribute(1, 0.25), y=attribute(2))

    text = render_extraction_facts(extraction, alternatives=2, uncertain_below=0.9)

    assert text == render_facts(extraction_facts(extraction, alternatives=2, uncertain_below=0.9))
    assert "candidate(o1,shape,square,350)." in text

@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("square", clingo.Function("square")),
        ("o1", clingo.Function("o1")),
        ("_hidden", clingo.Function("_hidden")),
        ("Square", clingo.String("Square")),
        ("two words", clingo.String("two words")),
        ("not", clingo.String("not")),
        ("", clingo.String("")),
        ('quote"inside', clingo.String('quote"inside')),
        ("42", clingo.Number(42)),
        ("-7", clingo.Number(-7)),
        (5, clingo.Number(5)),
    ],
)
def test_constant_kinds(value, expected):
    assert constant(value) == expected


def test_constant_rejects_bool_and_large_numbers():
    with pytest.raises(FactsError, match="invalid fact value"):
        constant(True)
    with pytest.raises(FactsError, match="32-bit"):
        constant(2**31)


def test_per_mille_rounds():
    assert per_mille(0.0) == 0
    assert per_mille(0.9994) == 999
    assert per_mille(0.9996) == 1000
    assert per_mille(1.0) == 1000


@pytest.mark.parametrize("name", ["position", "object", "answer", "Shape", "two words", "not"])
def test_attribute_name_rejected(name):
    extraction = one_object(**{name: attribute("v")})

    with pytest.raises(FactsError, match=repr(name)):
        extraction_facts(extraction)


def test_position_must_be_integer():
    extraction = one_object(x=attribute("left"), y=attribute(3))

    with pytest.raises(FactsError, match="x must be an integer"):
        extraction_facts(extraction)


def test_extra_attribute_becomes_predicate():
    extraction = one_object(texture=attribute("striped"))

    facts = [str(fact) for fact in extraction_facts(extraction)]

    assert "texture(o1,striped)" in facts
    assert "confidence(o1,texture,1000)" in facts


def test_alternatives_write_candidates():
    extraction = one_object(
        shape=attribute("square", 0.6, [("square", 0.6), ("circle", 0.3), ("triangle", 0.1)]),
        colour=attribute("red", 0.95, [("red", 0.95), ("blue", 0.05)]),
        x=attribute(10, 0.99, [(10, 0.99), (11, 0.01)]),
        y=attribute(20, 0.5, [(20, 0.5), (21, 0.4), (22, 0.1)]),
    )

    facts = {str(fact) for fact in extraction_facts(extraction, alternatives=2, uncertain_below=0.9)}

    # Shape is below the threshold: a choice over the top 2 values, no plain fact.
    assert "uncertain(o1,shape)" in facts
    assert "candidate(o1,shape,square,600)" in facts
    assert "candidate(o1,shape,circle,300)" in facts
    assert "candidate(o1,shape,triangle,100)" not in facts
    assert "shape(o1,square)" not in facts
    # Colour is above the threshold and stays a plain fact.
    assert "colour(o1,red)" in facts
    assert "uncertain(o1,colour)" not in facts
    # y is uncertain, so x becomes a single candidate and no position fact is written.
    assert "uncertain(o1,y)" in facts
    assert "uncertain(o1,x)" not in facts
    assert "candidate(o1,x,10,990)" in facts
    assert "candidate(o1,x,11,10)" not in facts
    assert {"candidate(o1,y,20,500)", "candidate(o1,y,21,400)"} <= facts
    assert not any(fact.startswith("position(") for fact in facts)


def test_alternatives_need_candidates():
    extraction = one_object(shape=attribute("square", 0.2))

    facts = {str(fact) for fact in extraction_facts(extraction, alternatives=3, uncertain_below=0.9)}

    assert "shape(o1,square)" in facts
    assert "uncertain(o1,shape)" not in facts


def test_alternatives_off_by_default():
    extraction = one_object(shape=attribute("square", 0.2, [("square", 0.2), ("circle", 0.8)]))

    facts = {str(fact) for fact in extraction_facts(extraction)}

    assert "shape(o1,square)" in facts
    assert not any(fact.startswith("candidate(") for fact in facts)
