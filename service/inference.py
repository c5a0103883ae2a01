"""ONNX Runtime inference: images in, typed objects with attributes and confidences out.

An `Extractor` owns one `InferenceSession` and the model's symbol table. Images of any
size are resized to the model's input with bilinear filtering, and decoded positions are
mapped back to the original image's pixel grid. Torch is never imported here.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from PIL import Image

from .cpus import usable_cpus
from .schema import Attribute, Candidate, DetectedObject, Extraction
from .symbols import METADATA_KEY, SymbolTable, SymbolTableError, parse_symbol_table

__all__ = ["ModelError", "Extractor", "DEFAULT_MODEL", "Provider"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "sortofclevr.onnx"
Provider = Literal["auto", "cuda", "cpu"]


class ModelError(RuntimeError):
    """A model file that cannot be loaded or a provider that cannot be used."""


def _session(path: Path, provider: Provider, threads: int | None, spin: bool = True):
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider == "cuda" and "CUDAExecutionProvider" not in available:
        raise ModelError(
            f"provider 'cuda' requested but this onnxruntime build offers only {available}; install onnxruntime-gpu"
        )
    wanted = ["CPUExecutionProvider"]
    if provider in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cpus()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not spin:
        # Idle intra-op threads sleep instead of busy-waiting for the next parallel section.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise ModelError(f"{path}: cannot load model: {error}") from None
    if provider == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise ModelError(f"provider 'cuda' requested but it failed to load; session runs on {session.get_providers()}")
    return session


class Extractor:
    """Decode images into objects with one ONNX Runtime session."""

    def __init__(self, path: Path, session, table: SymbolTable) -> None:
        self.path = path
        self.session = session
        self.symbol_table = table
        self.provider = session.get_providers()[0]
        self.height, self.width = table.input.height, table.input.width
        self._outputs = [o.name for o in session.get_outputs()]

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        provider: Provider = "auto",
        threads: int | None = None,
        spin: bool = True,
    ) -> "Extractor":
        """Open a model file and validate its symbol table; errors name the file and field.

        `spin=False` makes idle ONNX Runtime intra-op threads sleep rather than busy-wait.
        A server wants that, because its decoding and response threads need the same cores.
        """
        path = Path(path) if path is not None else DEFAULT_MODEL
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        session = _session(path, provider, threads, spin)
        metadata = session.get_modelmeta().custom_metadata_map
        table = parse_symbol_table(metadata.get(METADATA_KEY), str(path))
        _check_graph(session, table, path)
        log.info("loaded %s (world %s) on %s", path, table.world, session.get_providers()[0])
        return cls(path, session, table)

    # ------------------------------------------------------------------ running

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Resize an RGB uint8 image to the model's input size (a no-op when it already fits)."""
        if image.shape[0] == self.height and image.shape[1] == self.width:
            return image
        resized = Image.fromarray(image).resize((self.width, self.height), Image.BILINEAR)
        return np.asarray(resized, dtype=np.uint8)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on `uint8 [n, height, width, 3]`; returns the outputs by name."""
        values = self.session.run(None, {"image": np.ascontiguousarray(batch, dtype=np.uint8)})
        return dict(zip(self._outputs, values))

    def extract(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[Extraction]:
        """Decode RGB uint8 images of any size in one batch."""
        if not images:
            return []
        names = list(names) if names is not None else [f"image{i}" for i in range(len(images))]
        batch = np.stack([self.prepare(image) for image in images])
        outputs = self.run(batch)
        sizes = [(image.shape[1], image.shape[0]) for image in images]
        return self.decode(outputs, sizes, names)

    # ------------------------------------------------------------------ decoding

    def decode(self, outputs: dict[str, np.ndarray], sizes: Sequence[tuple[int, int]], names: Sequence[str]) -> list[Extraction]:
        """Turn graph outputs into extractions; `sizes` are the original (width, height)."""
        # Python lists once per batch: reading numpy scalars one at a time costs more than the decoding.
        columns = {key: value.tolist() for key, value in outputs.items()}
        results = []
        for i, ((width, height), name) in enumerate(zip(sizes, names)):
            row = {key: value[i] for key, value in columns.items()}
            results.append(self._decode_one(row, width, height, name))
        return results

    def _decode_one(self, row: dict[str, list], width: int, height: int, name: str) -> Extraction:
        # The extraction is built as plain dicts and validated once at the end, which costs
        # less than validating each Attribute and Candidate as it is made.
        table = self.symbol_table
        scale = {"x": width / self.width, "y": height / self.height}
        attributes: dict[str, dict[str, dict]] = {entity: {} for entity in table.entities}
        for entity, fixed in table.entity_attributes.items():
            for key, value in fixed.items():
                attributes.setdefault(entity, {})[key] = {"value": value, "confidence": 1.0}

        top_indices, top_probs = row.get("top_indices"), row.get("top_probs")
        for g, group in enumerate(table.groups):
            if group.factor is None or group.entity is None or group.attribute is None:
                continue
            winner = int(row["winners"][g])
            unit = group.units[winner] if 0 <= winner < len(group.units) else None
            if unit is None or unit.value is None:
                # NOTE: a dead unit won, so the attribute is left out rather than guessed.
                log.warning("%s: group %d (%s) won by unnamed unit %d", name, g, group.factor, winner)
                continue
            value = self._unit_value(group, winner, scale)
            candidates = []
            if top_indices is not None:
                for index, probability in zip(top_indices[g], top_probs[g]):
                    index = int(index)
                    if index >= len(group.units) or group.units[index].value is None or probability <= 0.0:
                        continue
                    candidates.append({"value": self._unit_value(group, index, scale), "probability": _unit_interval(probability)})
            attributes[group.entity][group.attribute] = {
                "value": value,
                "confidence": _unit_interval(row["confidences"][g]),
                "candidates": candidates,
            }
        objects = [{"id": entity, "attributes": attributes[entity]} for entity in table.entities if attributes.get(entity)]
        return Extraction.model_validate({"image": name, "width": width, "height": height, "objects": objects})

    def _unit_value(self, group, index: int, scale: dict[str, float]) -> str | int:
        unit = group.units[index]
        if group.axis is None:
            return str(unit.value)
        # Pixel centres map through the resize: x_original = (x + 0.5) * scale - 0.5, rounded
        # half up, which is floor((x + 0.5) * scale).
        return int(math.floor((float(unit.pixel) + 0.5) * scale[group.axis]))


def _unit_interval(value: float) -> float:
    return float(min(1.0, max(0.0, float(value))))


def _check_graph(session, table: SymbolTable, path: Path) -> None:
    """The graph's input and outputs must match what the symbol table describes."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != "image":
        raise SymbolTableError(f"{path}: the model must have one input named 'image', found {[i.name for i in inputs]}")
    shape = inputs[0].shape
    if len(shape) != 4 or shape[1:] != [table.input.height, table.input.width, 3]:
        raise SymbolTableError(
            f"{path}: symbol table field 'input' is {table.input.height} x {table.input.width} x 3 but the graph input is {shape}"
        )
    outputs = {o.name: o for o in session.get_outputs()}
    for required in ("winners", "confidences"):
        if required not in outputs:
            raise SymbolTableError(f"{path}: the graph has no output {required!r}")
    groups = outputs["winners"].shape[1]
    if isinstance(groups, int) and groups != len(table.groups):
        raise SymbolTableError(f"{path}: symbol table field 'groups' lists {len(table.groups)} groups but the graph has {groups}")
    if table.top_k and "top_indices" not in outputs:
        raise SymbolTableError(f"{path}: symbol table field 'top_k' is {table.top_k} but the graph has no 'top_indices' output")
