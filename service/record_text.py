"""Batch records written straight from graph outputs, for `python -m service.batch` in process.

`Extractor.decode` builds one validated `Extraction` per image, `reasoning.facts` turns it
into clingo symbols, and `service.batch.format_record` writes the record. `RecordWriter`
produces the same text from the numpy outputs of a whole batch, without per-image
pydantic objects or clingo symbols. It precomputes each unit's JSON value, fact value and
candidate fragment once from the symbol table and, because positions depend on the image
size, once more for each distinct (width, height). clingo still prints every constant,
when a layout is built.

Images that the precomputed layout does not cover get None instead of text, and the
caller writes them through the slow path, so its errors and log messages stay the same.
These are images whose winner is a dead or out-of-range unit, images with a candidate
index below zero, and image sizes whose values cannot be written as facts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import clingo
import numpy as np

from reasoning.errors import FactsError
from reasoning.facts import POSITION_ATTRIBUTES, attribute_order, attribute_predicate, constant

from .symbols import GroupSymbols, SymbolTable

__all__ = ["RecordWriter"]

MAX_LAYOUTS = 256  # image sizes whose layouts are cached; a full cache is cleared


@dataclass(frozen=True)
class _Fixed:
    """An attribute an entity has by definition: confidence 1.0 and no candidates."""

    value: str


@dataclass(frozen=True)
class _Slot:
    """One attribute of one object, and where its value comes from: a group index or a fixed value."""

    attribute: str
    source: int | _Fixed


@dataclass(frozen=True)
class _Object:
    entity: str
    slots: tuple[_Slot, ...]


@dataclass
class _GroupLayout:
    """A group's units as text for one image size, with None for a dead unit."""

    values_json: list[str | None]
    values_fact: list[str | None]
    candidates_json: list[str | None]  # '{"value": V, "probability": ' for each unit
    numbers: list[bool]  # for each live unit: its value is a clingo number


@dataclass
class _ObjectLayout:
    json_prefix: str  # '{"id": "red", "attributes": {'
    sources: list[int | _Fixed]  # per slot
    keys_json: list[str]  # per slot: '"shape": {"value": '
    object_line: str
    value_lines: list[tuple[int, str]]  # (slot, 'shape(red,'), in fact order
    position: tuple[int, int, str] | None  # (x slot, y slot, 'position(red,')
    confidence_lines: list[tuple[int, str]]  # (slot, 'confidence(red,shape,'), in fact order


@dataclass
class _Layout:
    """Everything about a record that depends only on the image size."""

    size_json: str  # ', "width": W, "height": H, "objects": ['
    image_size_line: str
    groups: dict[int, _GroupLayout]
    # Fixed values as decoded groups: (value JSON, value fact, confidence, per mille, candidates).
    fixed: dict[_Fixed, tuple[str, str, str, str, str]]
    objects: list[_ObjectLayout]
    # [group, unit]: the candidate prefix of each used group's live units, "" elsewhere, and where it is set.
    candidate_prefixes: np.ndarray
    candidate_live: np.ndarray


def _clamped(values: np.ndarray) -> np.ndarray:
    """Clamp float64 values into [0, 1] as `min(1.0, max(0.0, value))` in service.inference does.

    That expression turns NaN and -0.0 into 0.0, and so does this one.
    """
    return np.where(values > 0.0, np.minimum(values, 1.0), 0.0)


def _float_texts(*arrays: np.ndarray) -> list[np.ndarray]:
    """Return `repr` of each value, as `json.dumps` writes floats, in object arrays of the arrays' shapes.

    The shortest round-trip repr of a float is the main cost of a record, so each
    distinct value is formatted once. The best candidate's probability, for example, is
    also the group's confidence. Equal values have equal reprs except 0.0 and -0.0, and
    clamped values contain no -0.0.
    """
    distinct, inverse = np.unique(np.concatenate([array.ravel() for array in arrays]), return_inverse=True)
    texts = np.array([repr(value) for value in distinct.tolist()], dtype=object)[inverse]
    result, start = [], 0
    for array in arrays:
        result.append(texts[start : start + array.size].reshape(array.shape))
        start += array.size
    return result


def _candidate_lists(
    outputs: dict[str, np.ndarray], layouts: list[_Layout | None], group_count: int, texts: np.ndarray
) -> list:
    """Return, for each image with a layout, the JSON text of each group's candidate list; None for the others.

    The candidates are the ones `Extractor.decode` keeps: live units with a probability
    that is not <= 0, so NaN is kept and written as 0.0. The lists are built with numpy
    object arrays, one operation per candidate rank for all images of a layout at once.
    """
    indices = np.asarray(outputs["top_indices"]).astype(np.int64, copy=False)[:, :group_count]
    probabilities = np.asarray(outputs["top_probs"], dtype=np.float64)[:, :group_count]
    result: list = [None] * len(layouts)
    distinct = {id(layout): layout for layout in layouts if layout is not None}
    groups = np.arange(indices.shape[1])[None, :, None]
    for layout in distinct.values():
        rows = [i for i, other in enumerate(layouts) if other is layout]
        index = indices[rows]  # not negative: images with a negative index have no layout
        columns = layout.candidate_prefixes.shape[1]
        clipped = np.minimum(index, columns - 1)
        valid = (index < columns) & layout.candidate_live[groups, clipped] & ~(probabilities[rows] <= 0.0)
        parts = layout.candidate_prefixes[groups, clipped] + texts[rows] + "}"
        listed = np.full(index.shape[:2], "", dtype=object)
        for rank in range(index.shape[2]):
            part = parts[:, :, rank]
            joined = np.where(listed == "", part, listed + ", " + part)
            listed = np.where(valid[:, :, rank], joined, listed)
        for row, lists in zip(rows, listed.tolist()):
            result[row] = lists
    return result


def _int_texts(values: np.ndarray) -> list[str]:
    """Return the decimal text of each integral value, flattened."""
    return str(values.astype(np.int64).ravel().tolist())[1:-1].split(", ")


class RecordWriter:
    """Write the jsonl or lp records of a batch from its graph outputs, as `service.batch` would."""

    def __init__(self, table: SymbolTable, input_width: int, input_height: int, fmt: str) -> None:
        if fmt not in ("jsonl", "lp"):
            raise ValueError(f"invalid record format {fmt!r}: expected 'jsonl' or 'lp'")
        self.table = table
        self.format = fmt
        self.input_width, self.input_height = input_width, input_height
        self._used = [
            g
            for g, group in enumerate(table.groups)
            if group.factor is not None and group.entity is not None and group.attribute is not None
        ]
        self._objects = self._object_slots()
        self._layouts: dict[tuple[int, int], _Layout | None] = {}
        # live[g, u]: unit u of group g names a value; padded with False past each group's units.
        widest = max((len(group.units) for group in table.groups), default=0)
        self._live = np.zeros((len(table.groups), max(1, widest)), dtype=bool)
        self._unit_counts = np.array([len(group.units) for group in table.groups], dtype=np.int64)
        for g, group in enumerate(table.groups):
            self._live[g, : len(group.units)] = [unit.value is not None for unit in group.units]

    def _object_slots(self) -> list[_Object]:
        """Lay out each entity's attributes in the order `Extractor.decode` inserts them."""
        table = self.table
        sources: dict[str, dict[str, int | _Fixed]] = {entity: {} for entity in table.entities}
        for entity, fixed in table.entity_attributes.items():
            if entity in sources:
                for key, value in fixed.items():
                    sources[entity][key] = _Fixed(value)
        for g in self._used:
            group = table.groups[g]
            sources[group.entity][group.attribute] = g  # a later group replaces an earlier one in place
        return [
            _Object(entity, tuple(_Slot(key, source) for key, source in sources[entity].items()))
            for entity in table.entities
            if sources[entity]
        ]

    # ------------------------------------------------------------------ layouts

    def _group_layout(self, group: GroupSymbols, scale: dict[str, float]) -> _GroupLayout:
        values_json: list[str | None] = []
        values_fact: list[str | None] = []
        candidates_json: list[str | None] = []
        numbers: list[bool] = []
        for unit in group.units:
            if unit.value is None:
                values_json.append(None)
                values_fact.append(None)
                candidates_json.append(None)
                continue
            if group.axis is None:
                value: str | int = str(unit.value)
            else:
                # The mapping of service.inference.Extractor._unit_value.
                value = math.floor((float(unit.pixel) + 0.5) * scale[group.axis])
            symbol = constant(value)
            text = json.dumps(value)
            values_json.append(text)
            values_fact.append(str(symbol))
            candidates_json.append('{"value": ' + text + ', "probability": ')
            numbers.append(symbol.type == clingo.SymbolType.Number)
        return _GroupLayout(values_json, values_fact, candidates_json, numbers)

    def _build_layout(self, width: int, height: int) -> _Layout:
        """Precompute the text of one image size; raises FactsError where the slow path writes an error."""
        table = self.table
        scale = {"x": width / self.input_width, "y": height / self.input_height}
        groups = {g: self._group_layout(table.groups[g], scale) for g in self._used}
        fixed: dict[_Fixed, tuple[str, str, str, str, str]] = {}
        objects = []
        for obj in self._objects:
            name = str(constant(obj.entity))
            slot_index = {slot.attribute: index for index, slot in enumerate(obj.slots)}
            for slot in obj.slots:
                if isinstance(slot.source, _Fixed) and slot.source not in fixed:
                    value = slot.source.value
                    fixed[slot.source] = (json.dumps(value), str(constant(value)), "1.0", "1000", "")

            value_lines = [
                (slot_index[attribute], f"{attribute_predicate(attribute)}({name},")
                for attribute in attribute_order(slot_index)
            ]
            position = None
            if all(axis in slot_index for axis in POSITION_ATTRIBUTES):
                x_slot, y_slot = (slot_index[axis] for axis in POSITION_ATTRIBUTES)
                for axis, index in zip(POSITION_ATTRIBUTES, (x_slot, y_slot)):
                    self._check_coordinate(obj.entity, axis, obj.slots[index].source, groups)
                position = (x_slot, y_slot, f"position({name},")
            confidence_names = [*attribute_order(slot_index), *(a for a in POSITION_ATTRIBUTES if a in slot_index)]
            confidence_lines = [
                (slot_index[attribute], f"confidence({name},{constant(attribute)},") for attribute in confidence_names
            ]
            objects.append(
                _ObjectLayout(
                    json_prefix='{"id": ' + json.dumps(obj.entity) + ', "attributes": {',
                    sources=[slot.source for slot in obj.slots],
                    keys_json=[json.dumps(slot.attribute) + ': {"value": ' for slot in obj.slots],
                    object_line=f"object({name}).\n",
                    value_lines=value_lines,
                    position=position,
                    confidence_lines=confidence_lines,
                )
            )
        columns = max((len(group.units) for group in table.groups), default=0) or 1
        candidate_prefixes = np.full((len(table.groups), columns), "", dtype=object)
        candidate_live = np.zeros((len(table.groups), columns), dtype=bool)
        for g, group_layout in groups.items():
            for unit, prefix in enumerate(group_layout.candidates_json):
                if prefix is not None:
                    candidate_prefixes[g, unit] = prefix
                    candidate_live[g, unit] = True
        return _Layout(
            candidate_prefixes=candidate_prefixes,
            candidate_live=candidate_live,
            size_json=f', "width": {json.dumps(width)}, "height": {json.dumps(height)}, "objects": [',
            image_size_line=f"image_size({constant(width)},{constant(height)}).\n",
            groups=groups,
            fixed=fixed,
            objects=objects,
        )

    def _check_coordinate(self, entity: str, axis: str, source: int | _Fixed, groups: dict[int, _GroupLayout]) -> None:
        """Raise FactsError unless every value the source can take is an integer, as position facts need."""
        if isinstance(source, _Fixed):
            numbers = [constant(source.value).type == clingo.SymbolType.Number]
        else:
            numbers = groups[source].numbers
        if not all(numbers):
            raise FactsError(f"object {entity!r}: {axis} must be an integer pixel coordinate")

    def _layout(self, width: int, height: int) -> _Layout | None:
        key = (width, height)
        if key not in self._layouts:
            if len(self._layouts) >= MAX_LAYOUTS:
                self._layouts.clear()
            try:
                self._layouts[key] = self._build_layout(width, height)
            except FactsError:
                self._layouts[key] = None  # the slow path writes the error record
        return self._layouts[key]

    # ------------------------------------------------------------------ records

    def _covered(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """Return a mask of the images whose winners are live units and whose candidate indices are not negative."""
        used = np.asarray(self._used, dtype=np.int64)
        count = len(outputs["winners"])
        if not len(used):
            return np.ones(count, dtype=bool)
        winners = np.asarray(outputs["winners"])[:, used].astype(np.int64)
        in_range = (winners >= 0) & (winners < self._unit_counts[used])
        live = self._live[used, np.clip(winners, 0, self._live.shape[1] - 1)]
        covered = (in_range & live).all(axis=1)
        if "top_indices" in outputs:
            covered &= (np.asarray(outputs["top_indices"])[:, used] >= 0).all(axis=(1, 2))
        return covered

    def records(
        self, outputs: dict[str, np.ndarray], sizes: Sequence[tuple[int, int]], images: Sequence[str]
    ) -> list[str | None]:
        """Return the record text of each image of a batch, or None for an image the slow path must write.

        `outputs` are the graph outputs of the batch and `sizes` the original (width, height)
        of each image, as `Extractor.decode` takes them.
        """
        if not images:
            return []
        if "top_indices" in outputs and (
            "top_probs" not in outputs or np.shape(outputs["top_indices"]) != np.shape(outputs["top_probs"])
        ):
            return [None] * len(images)  # candidates the slow path pairs up as it can
        covered = self._covered(outputs).tolist()
        layouts = [self._layout(width, height) if covered[i] else None for i, (width, height) in enumerate(sizes)]
        group_count = len(self.table.groups)
        # Python lists once per batch, because reading numpy scalars one at a time is slow.
        # Indices become ints as `int()` in Extractor.decode makes them.
        winners = np.asarray(outputs["winners"]).astype(np.int64, copy=False)[:, :group_count].tolist()
        confidences = np.asarray(outputs["confidences"], dtype=np.float64)[:, :group_count]
        # lp records carry no JSON, so they need no float texts.
        confidence_text = candidates = None
        if self.format == "jsonl" and "top_indices" in outputs:
            probabilities = np.asarray(outputs["top_probs"], dtype=np.float64)[:, :group_count]
            confidence_texts, probability_texts = _float_texts(_clamped(confidences), _clamped(probabilities))
            confidence_text = confidence_texts.ravel().tolist()
            candidates = _candidate_lists(outputs, layouts, group_count, probability_texts)
        elif self.format == "jsonl":
            confidence_text = _float_texts(_clamped(confidences))[0].ravel().tolist()
        # round(confidence * 1000) as in reasoning.facts.per_mille: rint also rounds half to even.
        per_mille_text = _int_texts(np.rint(_clamped(confidences) * 1000))
        texts: list[str | None] = []
        for i, (layout, (width, height), image) in enumerate(zip(layouts, sizes, images)):
            if layout is None:
                texts.append(None)
                continue
            row = slice(i * group_count, (i + 1) * group_count)
            confidence = confidence_text[row] if confidence_text is not None else None
            listed = candidates[i] if candidates is not None else None
            texts.append(self._record(layout, image, winners[i], confidence, per_mille_text[row], listed))
        return texts

    def _record(self, layout: _Layout, image: str, winners, confidence_text, per_mille_text, candidates) -> str:
        """Write one record; `confidence_text` and `candidates` are None for lp records."""
        jsonl = confidence_text is not None
        # Per used group: (value JSON, value fact, confidence text, per mille text, candidates JSON).
        decoded: dict[int, tuple[str, str, str, str, str]] = {}
        for g, group in layout.groups.items():
            winner = winners[g]
            decoded[g] = (
                group.values_json[winner],
                group.values_fact[winner],
                confidence_text[g] if jsonl else "",
                per_mille_text[g],
                candidates[g] if candidates is not None else "",
            )

        facts = [layout.image_size_line]
        objects = []
        for obj in layout.objects:
            values = [layout.fixed[source] if isinstance(source, _Fixed) else decoded[source] for source in obj.sources]
            if jsonl:
                attributes = ", ".join(
                    [
                        f'{key}{value_json}, "confidence": {confidence}, "candidates": [{listed}]}}'
                        for key, (value_json, _, confidence, _, listed) in zip(obj.keys_json, values)
                    ]
                )
                objects.append(f"{obj.json_prefix}{attributes}}}}}")

            facts.append(obj.object_line)
            for slot, prefix in obj.value_lines:
                facts.append(f"{prefix}{values[slot][1]}).\n")
            if obj.position is not None:
                x_slot, y_slot, prefix = obj.position
                facts.append(f"{prefix}{values[x_slot][1]},{values[y_slot][1]}).\n")
            for slot, prefix in obj.confidence_lines:
                facts.append(f"{prefix}{values[slot][3]}).\n")

        facts_text = "".join(facts)
        if not jsonl:
            return f"% image: {json.dumps(image)}\n{facts_text}\n"
        objects_text = ", ".join(objects)
        return f'{{"image": {json.dumps(image)}{layout.size_json}{objects_text}], "facts": {json.dumps(facts_text)}}}\n'
