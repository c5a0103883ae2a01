"""Typed results of symbol extraction, shared by the service, its clients and the reasoning layer."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["Candidate", "Attribute", "DetectedObject", "Extraction"]


class Candidate(BaseModel):
    """One value a WTA group could take, with its softmax probability."""

    value: str | int
    probability: float = Field(ge=0.0, le=1.0)


class Attribute(BaseModel):
    """The decoded value of one attribute of one object.

    `value` is a symbol (`"square"`) or, for `x` and `y`, an integer pixel coordinate in the
    original image. `confidence` is the winner's softmax probability; `candidates` holds the
    top-k values, best first, when the model exports them (the winner included).
    """

    value: str | int
    confidence: float = Field(ge=0.0, le=1.0)
    candidates: list[Candidate] = Field(default_factory=list)


class DetectedObject(BaseModel):
    """One entity of the image: `id` is its ASP constant (`red`, or `o1` in unkeyed worlds)."""

    id: str
    attributes: dict[str, Attribute]

    @property
    def position(self) -> tuple[int, int] | None:
        if "x" in self.attributes and "y" in self.attributes:
            return int(self.attributes["x"].value), int(self.attributes["y"].value)
        return None


class Extraction(BaseModel):
    """Everything decoded from one image; `width` and `height` are the original image's."""

    image: str = ""  # a file name or request id, for reports
    width: int
    height: int
    objects: list[DetectedObject]
