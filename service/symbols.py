"""The symbol table a model file carries in its ONNX `metadata_props`, and its validation.

The table records what every WTA unit names: which group names which factor of which
entity, the value each unit names, and for position groups the pixel each unit points to
in the model's input grid. Loading needs only the JSON text, so serving stays torch-free.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "SymbolTableError",
    "InputSpec",
    "UnitSymbol",
    "GroupSymbols",
    "SymbolTable",
    "parse_symbol_table",
]

FORMAT_VERSION = 1
METADATA_KEY = "wtabridge.symbols"  # the metadata_props key of the JSON table


class SymbolTableError(ValueError):
    """A symbol table that is missing or malformed; the message names the source and field."""


class InputSpec(BaseModel):
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[3] = 3
    layout: Literal["NHWC"] = "NHWC"
    dtype: Literal["uint8"] = "uint8"


class UnitSymbol(BaseModel):
    """The factor value one WTA unit names, as found on the labelled calibration set."""

    value: str | None  # the factor value, None for a dead unit
    status: Literal["named", "mixed", "dead"]
    purity: float = Field(ge=0.0, le=1.0)  # share of the unit's wins that had this value
    pixel: float | None = None  # position groups: the value's pixel in the model input grid


class GroupSymbols(BaseModel):
    """One WTA group and the factor it was found to name (None when it names none)."""

    factor: str | None
    entity: str | None = None
    attribute: str | None = None
    axis: Literal["x", "y"] | None = None
    units: list[UnitSymbol]


class SymbolTable(BaseModel):
    format_version: int
    world: str
    input: InputSpec
    entities: list[str]  # object constants in the order facts list them
    # Attributes an entity has by definition, e.g. colour-keyed worlds: {"red": {"colour": "red"}}.
    entity_attributes: dict[str, dict[str, str]] = Field(default_factory=dict)
    groups: list[GroupSymbols]
    top_k: int = 0  # how many candidates per group the model exports (0: none)
    metrics: dict[str, object] = Field(default_factory=dict)

    def to_json(self) -> str:
        return self.model_dump_json()


def parse_symbol_table(text: str | None, source: str) -> SymbolTable:
    """Parse and validate a symbol table; errors name `source` and the offending field."""
    if text is None:
        raise SymbolTableError(f"{source}: missing symbol table (metadata key {METADATA_KEY!r})")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise SymbolTableError(f"{source}: symbol table is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise SymbolTableError(f"{source}: symbol table must be a JSON object, got {type(raw).__name__}")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise SymbolTableError(
            f"{source}: field 'format_version' is {version!r}; this build reads version {FORMAT_VERSION}"
        )
    try:
        table = SymbolTable.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise SymbolTableError(f"{source}: symbol table field {field!r}: {first['msg']}") from None
    for index, group in enumerate(table.groups):
        if group.entity is not None and group.entity not in table.entities:
            raise SymbolTableError(
                f"{source}: symbol table field 'groups.{index}.entity': {group.entity!r} is not in 'entities'"
            )
        if group.axis is not None and any(unit.pixel is None for unit in group.units if unit.value is not None):
            raise SymbolTableError(
                f"{source}: symbol table field 'groups.{index}.units': a position unit has no 'pixel'"
            )
    return table
