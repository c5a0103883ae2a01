"""The rule library (spatial.lp, attributes.lp, alternatives.lp) against hand-placed objects, ties included."""

from __future__ import annotations

import clingo

from reasoning.engine import ALTERNATIVES_RULES, LIBRARY
from reasoning.facts import render_facts


def scene(*objects, width=75, height=75) -> str:
    """Facts for objects given as (id, shape, x, y); the id doubles as the colour."""
    facts = [clingo.Function("image_size", [clingo.Number(width), clingo.Number(height)])]
    for name, shape, x, y in objects:
        key = clingo.Function(name)
        facts += [
            clingo.Function("object", [key]),
            clingo.Function("colour", [key, key]),
            clingo.Function("shape", [key, clingo.Function(shape)]),
            clingo.Function("position", [key, clingo.Number(x), clingo.Number(y)]),
        ]
    return render_facts(facts)


def derive(facts: str, predicate: str, files=LIBRARY, extra: str = "") -> set[str]:
    """Return the atoms of `predicate` in the single answer set of the library over `facts`."""
    control = clingo.Control(["0"])
    for path in files:
        control.load(str(path))
    control.add("base", [], facts + extra)
    control.ground([("base", [])])
    models = []
    with control.solve(yield_=True) as handle:
        for model in handle:
            models.append({str(s) for s in model.symbols(atoms=True) if s.name == predicate})
    assert len(models) == 1, f"expected one answer set, got {len(models)}"
    return models[0]


def test_axis_order():
    facts = scene(("red", "square", 10, 50), ("blue", "circle", 30, 20))

    assert derive(facts, "left_of") == {"left_of(red,blue)"}
    assert derive(facts, "right_of") == {"right_of(blue,red)"}
    assert derive(facts, "above") == {"above(blue,red)"}
    assert derive(facts, "below") == {"below(red,blue)"}


def test_equal_coordinates_are_not_ordered():
    facts = scene(("red", "square", 10, 50), ("blue", "circle", 10, 50))

    assert derive(facts, "left_of") == set()
    assert derive(facts, "above") == set()


def test_halves_split_at_middle():
    # 37.5 is the middle of 75 px: 37 is left and above it, 38 is not.
    facts = scene(("red", "square", 37, 37), ("blue", "circle", 38, 38))

    assert derive(facts, "left_half") == {"left_half(red)"}
    assert derive(facts, "right_half") == {"right_half(blue)"}
    assert derive(facts, "top_half") == {"top_half(red)"}
    assert derive(facts, "bottom_half") == {"bottom_half(blue)"}


def test_halves_of_even_width():
    # For a 40 px image the middle is 20: x = 20 is on the right half.
    facts = scene(("red", "square", 19, 20), ("blue", "circle", 20, 19), width=40, height=40)

    assert derive(facts, "left_half") == {"left_half(red)"}
    assert derive(facts, "top_half") == {"top_half(blue)"}


def test_squared_distance():
    facts = scene(("red", "square", 10, 10), ("blue", "circle", 13, 14))

    assert derive(facts, "distance2") == {"distance2(red,blue,25)", "distance2(blue,red,25)"}


def test_closest_and_furthest_without_ties():
    facts = scene(("red", "square", 10, 10), ("green", "circle", 20, 10), ("blue", "square", 60, 60))

    assert derive(facts, "closest") == {"closest(red,green)", "closest(green,red)", "closest(blue,green)"}
    assert derive(facts, "furthest") == {"furthest(red,blue)", "furthest(green,blue)", "furthest(blue,red)"}


def test_closest_tie_goes_to_colour_order():
    # blue and green are both 10 px from red; green comes first in the colour order.
    facts = scene(("red", "square", 20, 20), ("blue", "circle", 30, 20), ("green", "square", 20, 30))

    assert "closest(red,green)" in derive(facts, "closest")
    assert "closest(red,blue)" not in derive(facts, "closest")


def test_furthest_tie_goes_to_colour_order():
    # orange and gray are both 40 px from yellow; orange comes before gray.
    facts = scene(("yellow", "square", 30, 30), ("gray", "circle", 70, 30), ("orange", "square", 30, 70))

    assert "furthest(yellow,orange)" in derive(facts, "furthest")
    assert "furthest(yellow,gray)" not in derive(facts, "furthest")


def test_tie_between_unranked_colours_uses_id():
    facts = scene(("red", "square", 20, 20), ("zeta", "circle", 30, 20), ("alpha", "square", 20, 30))

    assert "closest(red,alpha)" in derive(facts, "closest")


def test_ranked_colour_beats_unranked_in_tie():
    facts = scene(("red", "square", 20, 20), ("alpha", "circle", 30, 20), ("yellow", "square", 20, 30))

    assert "closest(red,yellow)" in derive(facts, "closest")


def test_between_uses_closed_box():
    facts = scene(
        ("red", "square", 10, 10),
        ("green", "circle", 30, 40),
        ("blue", "square", 20, 25),  # inside
        ("orange", "circle", 30, 10),  # on the corner
        ("gray", "square", 31, 20),  # one pixel outside
    )

    inside = {atom for atom in derive(facts, "between") if atom.endswith(",red,green)")}

    assert inside == {"between(blue,red,green)", "between(orange,red,green)"}


def test_on_band_within_twelve_pixels():
    # The line y = x / 2 + 10 through red (0, 10) and green (40, 30); at x = 20 it is at y = 20.
    facts = scene(
        ("red", "square", 0, 10),
        ("green", "circle", 40, 30),
        ("blue", "square", 20, 32),  # 12 px below: inside
        ("orange", "circle", 20, 7),  # 13 px above: outside
        ("gray", "square", 60, 40),  # on the line beyond green: inside
    )

    band = {atom for atom in derive(facts, "on_band") if atom.endswith(",red,green)")}

    assert band == {"on_band(blue,red,green)", "on_band(gray,red,green)"}


def test_on_band_vertical_line():
    # A vertical line contains every point with its x, however far away, and no other point.
    facts = scene(
        ("red", "square", 20, 10),
        ("green", "circle", 20, 30),
        ("blue", "square", 20, 70),
        ("orange", "circle", 21, 20),
    )

    band = {atom for atom in derive(facts, "on_band") if atom.endswith(",red,green)")}

    assert band == {"on_band(blue,red,green)"}


def test_obtuse_counts_right_angles_and_skips_collinear():
    facts = scene(
        ("red", "square", 10, 10),
        ("green", "circle", 30, 10),
        ("blue", "square", 10, 40),  # right angle at red: counts
        ("orange", "circle", 50, 10),  # collinear, 180 degrees at green: does not count
        ("gray", "square", 20, 60),  # acute triangle: does not count
        ("yellow", "circle", 40, 15),  # obtuse at green: counts
    )

    obtuse = {atom for atom in derive(facts, "obtuse") if atom.startswith("obtuse(red,green,")}

    assert obtuse == {"obtuse(red,green,blue)", "obtuse(red,green,yellow)"}
    assert "count_obtuse(red,green,2)" in derive(facts, "count_obtuse")


def test_obtuse_is_symmetric():
    facts = scene(("red", "square", 10, 10), ("green", "circle", 30, 10), ("blue", "square", 10, 40))

    assert derive(facts, "obtuse") == {
        "obtuse(red,green,blue)",
        "obtuse(red,blue,green)",
        "obtuse(green,red,blue)",
        "obtuse(green,blue,red)",
        "obtuse(blue,red,green)",
        "obtuse(blue,green,red)",
    }


def test_same_attribute_relations():
    facts = scene(("red", "square", 10, 10), ("green", "square", 30, 10), ("blue", "circle", 50, 50))

    assert derive(facts, "same_shape") == {"same_shape(red,green)", "same_shape(green,red)"}
    assert derive(facts, "same_colour") == set()


def test_counts():
    facts = scene(
        ("red", "square", 10, 10),
        ("green", "square", 30, 30),
        ("blue", "circle", 20, 20),
        ("orange", "square", 60, 60),
    )

    assert derive(facts, "object_count") == {"object_count(4)"}
    assert derive(facts, "shape_count") == {"shape_count(square,3)", "shape_count(circle,1)"}
    assert "count_same_shape(red,2)" in derive(facts, "count_same_shape")
    assert "count_same_shape(blue,0)" in derive(facts, "count_same_shape")
    assert "count_between(red,green,1)" in derive(facts, "count_between")
    assert "count_between(red,orange,2)" in derive(facts, "count_between")
    assert "band_occupied(red,green)" in derive(facts, "band_occupied")


def test_alternatives_choose_one_candidate():
    facts = (
        "object(o1). uncertain(o1,shape). candidate(o1,shape,square,600). candidate(o1,shape,circle,400)."
        "uncertain(o1,y). candidate(o1,x,5,1000). candidate(o1,y,7,500). candidate(o1,y,9,500)."
    )
    control = clingo.Control(["0"])
    control.load(str(ALTERNATIVES_RULES))
    control.add("base", [], facts)
    control.ground([("base", [])])
    models = []
    with control.solve(yield_=True) as handle:
        for model in handle:
            models.append(sorted(str(s) for s in model.symbols(atoms=True) if s.name in ("shape", "position")))

    assert sorted(models) == [
        ["position(o1,5,7)", "shape(o1,circle)"],
        ["position(o1,5,7)", "shape(o1,square)"],
        ["position(o1,5,9)", "shape(o1,circle)"],
        ["position(o1,5,9)", "shape(o1,square)"],
    ]
