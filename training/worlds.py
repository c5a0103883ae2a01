"""Procedural worlds and user-labelled folders that yield images with categorical factor labels.

Every world draws `uint8 [n, height, width, 3]` RGB images and `int64 [n, factors]` labels,
where column `f` holds the index of the value of `world.factors[f]`. The `sortofclevr`
world follows the geometry of the public Sort-of-CLEVR generator (Santoro et al., 2017).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "Factor",
    "World",
    "SpritesWorld",
    "SortOfClevrWorld",
    "TinyWorld",
    "LabelledFolderWorld",
    "LabelledFolderError",
    "SORT_OF_CLEVR_COLOURS",
    "make_world",
]


@dataclass(frozen=True)
class Factor:
    """One categorical latent factor and the meaning of its values."""

    name: str  # unique within a world, "red.x" for entity red's x position
    attribute: str  # fact name in the reasoning layer: shape, colour, x, y, size
    values: tuple[str, ...]
    entity: str | None = None  # which object the factor belongs to; None for single-object worlds
    axis: str | None = None  # "x" or "y" for position factors
    # For position factors: per value, the half-open range [lo, hi) of centre pixels it covers.
    pixel_ranges: tuple[tuple[int, int], ...] | None = None

    @property
    def size(self) -> int:
        return len(self.values)

    def pixel_centre(self, value: int) -> float:
        """Return the pixel coordinate that stands for a position value (the middle of its range)."""
        if self.pixel_ranges is None:
            raise ValueError(f"factor {self.name!r} is not a position factor")
        lo, hi = self.pixel_ranges[value]
        return (lo + hi - 1) / 2.0


@dataclass
class World:
    """Base class: a named image distribution with categorical factors."""

    name: str
    height: int
    width: int
    factors: list[Factor] = field(default_factory=list)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    @property
    def entities(self) -> list[str]:
        seen: list[str] = []
        for factor in self.factors:
            if factor.entity is not None and factor.entity not in seen:
                seen.append(factor.entity)
        return seen

    def sample_labels(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw factor labels from the world's prior without rendering (used to balance tasks)."""
        return self.sample(n, rng)[1]


# --------------------------------------------------------------------------- rasterising


def _coverage(
    shape: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    radius: np.ndarray,
    angle: np.ndarray,
    supersample: int,
) -> np.ndarray:
    """Fraction of each pixel inside a shape, for a batch of objects.

    `dx`, `dy` are `[n, p, p]` pixel-centre offsets from each object's centre; `shape`,
    `radius` and `angle` are `[n]`. Shape codes: 0 square, 1 circle, 2 triangle, 3 cross.
    With `supersample == 1` a pixel is inside when its centre is, which matches OpenCV's
    aliased fill used by the public Sort-of-CLEVR generator.
    """
    n, p, _ = dx.shape
    if supersample == 1:
        offsets = np.zeros(1, dtype=np.float32)
    else:
        offsets = ((np.arange(supersample) + 0.5) / supersample - 0.5).astype(np.float32)
    total = np.zeros((n, p, p), dtype=np.float32)
    cos = np.cos(angle)[:, None, None]
    sin = np.sin(angle)[:, None, None]
    r = radius[:, None, None]
    kind = shape[:, None, None]
    for ox in offsets:
        for oy in offsets:
            # Object frame: rotate the sample point back by the object's angle.
            u = (dx + ox) * cos + (dy + oy) * sin
            v = -(dx + ox) * sin + (dy + oy) * cos
            square = (np.abs(u) <= r) & (np.abs(v) <= r)
            circle = u * u + v * v <= r * r
            # Equilateral triangle with circumradius r * 1.15, apex up (image y grows down).
            t = r * 1.15
            triangle = (v <= 0.5 * t) & (math.sqrt(3) * u - v <= t) & (-math.sqrt(3) * u - v <= t)
            arm = 0.35 * r
            cross = ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
            inside = np.select([kind == 0, kind == 1, kind == 2, kind == 3], [square, circle, triangle, cross])
            total += inside
    return total / (len(offsets) ** 2)


def _paint(
    images: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    shape: np.ndarray,
    radius: np.ndarray,
    angle: np.ndarray,
    colour: np.ndarray,
    supersample: np.ndarray,
    patch: int,
) -> None:
    """Composite one object per image onto float images `[n, H, W, 3]` in place.

    `cx`, `cy` are integer centres, `colour` is `[n, 3]` and `supersample` is `[n]`; objects
    are drawn in a `patch x patch` window around their centre.
    """
    n, height, width, _ = images.shape
    half = patch // 2
    grid = np.arange(-half, half + 1, dtype=np.float32)
    dy, dx = np.meshgrid(grid, grid, indexing="ij")
    dx = np.broadcast_to(dx, (n, patch, patch))
    dy = np.broadcast_to(dy, (n, patch, patch))
    coverage = np.zeros((n, patch, patch), dtype=np.float32)
    for level in np.unique(supersample):
        chosen = supersample == level
        coverage[chosen] = _coverage(
            shape[chosen], dx[chosen], dy[chosen], radius[chosen], angle[chosen], int(level)
        )
    rows = cy[:, None, None] + grid.astype(np.int64)[None, :, None]
    cols = cx[:, None, None] + grid.astype(np.int64)[None, None, :]
    rows = np.broadcast_to(rows, (n, patch, patch))
    cols = np.broadcast_to(cols, (n, patch, patch))
    valid = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    batch = np.broadcast_to(np.arange(n)[:, None, None], (n, patch, patch))
    b, r, c, a = batch[valid], rows[valid], cols[valid], coverage[valid][:, None]
    images[b, r, c] = images[b, r, c] * (1.0 - a) + colour[b] * a


def _background(n: int, height: int, width: int, rng: np.random.Generator, level: float, noise: float) -> np.ndarray:
    """White-ish float backgrounds with a per-image grey level and per-pixel noise."""
    base = 255.0 - rng.uniform(0.0, level, size=(n, 1, 1, 1))
    sigma = rng.uniform(0.0, noise, size=(n, 1, 1, 1))
    return (base + rng.normal(size=(n, height, width, 3)) * sigma).astype(np.float32)


# --------------------------------------------------------------------------- Sort-of-CLEVR

SORT_OF_CLEVR_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "orange": (255, 156, 0),
    "gray": (128, 128, 128),
    "yellow": (255, 255, 0),
}


class SortOfClevrWorld(World):
    """Six colour-keyed objects on a 75 x 75 white image, as in public Sort-of-CLEVR.

    Per colour the factors are its shape (square 11 x 11 px or circle of radius 5 px) and
    the x and y of its integer centre in [5, 70), one value per pixel. Centres are drawn
    until every pair is at least 10 px apart and objects are painted in colour order, like
    the public generator. With probability `plain` an image is drawn exactly as that
    generator draws it. Otherwise antialiasing, size, colour and background jitter vary, so
    that images drawn by other programs decode too.
    """

    SIZE = 75
    LOW, HIGH = 5, 70  # centre range [LOW, HIGH)
    MIN_DISTANCE = 10
    SHAPES = ("square", "circle")

    def __init__(self, plain: float = 0.3) -> None:
        factors: list[Factor] = []
        positions = tuple(str(v) for v in range(self.LOW, self.HIGH))
        ranges = tuple((v, v + 1) for v in range(self.LOW, self.HIGH))
        for colour in SORT_OF_CLEVR_COLOURS:
            factors.append(Factor(f"{colour}.shape", "shape", self.SHAPES, entity=colour))
            factors.append(Factor(f"{colour}.x", "x", positions, entity=colour, axis="x", pixel_ranges=ranges))
            factors.append(Factor(f"{colour}.y", "y", positions, entity=colour, axis="y", pixel_ranges=ranges))
        super().__init__("sortofclevr", self.SIZE, self.SIZE, factors)
        self.plain = plain

    def _centres(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Rejection-sample `[n, 6, 2]` integer centres at least MIN_DISTANCE apart."""
        count = len(SORT_OF_CLEVR_COLOURS)
        centres = np.zeros((n, count, 2), dtype=np.int64)
        for k in range(count):
            pending = np.arange(n)
            while pending.size:
                candidate = rng.integers(self.LOW, self.HIGH, size=(pending.size, 2))
                ok = np.ones(pending.size, dtype=bool)
                for j in range(k):
                    d2 = ((candidate - centres[pending, j]) ** 2).sum(axis=1)
                    ok &= d2 >= self.MIN_DISTANCE**2
                centres[pending[ok], k] = candidate[ok]
                pending = pending[~ok]
        return centres

    def sample_labels(self, n: int, rng: np.random.Generator) -> np.ndarray:
        centres = self._centres(n, rng)
        shapes = rng.integers(0, 2, size=(n, len(SORT_OF_CLEVR_COLOURS)))
        return self._labels(centres, shapes)

    def _labels(self, centres: np.ndarray, shapes: np.ndarray) -> np.ndarray:
        columns = []
        for k in range(len(SORT_OF_CLEVR_COLOURS)):
            columns += [shapes[:, k], centres[:, k, 0] - self.LOW, centres[:, k, 1] - self.LOW]
        return np.stack(columns, axis=1).astype(np.int64)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        centres = self._centres(n, rng)
        shapes = rng.integers(0, 2, size=(n, len(SORT_OF_CLEVR_COLOURS)))
        plain = rng.random(n) < self.plain
        images = _background(n, self.SIZE, self.SIZE, rng, level=12.0, noise=4.0)
        images[plain] = 255.0
        antialias = (rng.random(n) < 0.5) & ~plain
        supersample = np.where(antialias, 4, 1)
        for k, rgb in enumerate(SORT_OF_CLEVR_COLOURS.values()):
            # Square half-size 5 and circle radius 5 reproduce the public 11 x 11 square
            # and 81-pixel disc. Jittered images stretch both by up to 0.6 px.
            jitter = np.where(plain, 0.0, rng.uniform(-0.45, 0.6, size=n))
            radius = (5.0 + jitter).astype(np.float32)
            colour = np.array(rgb, dtype=np.float32)[None, :] + np.where(
                plain[:, None], 0.0, rng.uniform(-12, 12, size=(n, 3))
            )
            _paint(
                images,
                centres[:, k, 0],
                centres[:, k, 1],
                shapes[:, k].astype(np.int64),
                radius,
                np.zeros(n, dtype=np.float32),
                np.clip(colour, 0, 255).astype(np.float32),
                supersample,
                patch=15,
            )
        return np.clip(np.rint(images), 0, 255).astype(np.uint8), self._labels(centres, shapes)


# --------------------------------------------------------------------------- sprites

SPRITE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 40),
    "magenta": (200, 50, 200),
    "cyan": (40, 200, 210),
}


class SpritesWorld(World):
    """One sprite per 64 x 64 image, the single-entity setting of the WTA publication.

    Factors: shape (4), colour (6), x bin (4), y bin (4), size (2). Nuisances vary freely:
    the centre jitters inside its 12 px bin, the sprite rotates by up to 30 degrees and
    its scale varies inside its size class, and the background is noisy grey.
    """

    SIZE = 64
    BINS = 4
    MARGIN = 8  # centres stay this far from the border so that no sprite is clipped
    SHAPES = ("square", "circle", "triangle", "cross")
    SIZES = ("small", "large")

    def __init__(self) -> None:
        step = (self.SIZE - 2 * self.MARGIN) // self.BINS
        bins = tuple(str(b) for b in range(self.BINS))
        ranges = tuple((self.MARGIN + b * step, self.MARGIN + (b + 1) * step) for b in range(self.BINS))
        factors = [
            Factor("shape", "shape", self.SHAPES),
            Factor("colour", "colour", tuple(SPRITE_COLOURS)),
            Factor("x", "x", bins, axis="x", pixel_ranges=ranges),
            Factor("y", "y", bins, axis="y", pixel_ranges=ranges),
            Factor("size", "size", self.SIZES),
        ]
        super().__init__("sprites", self.SIZE, self.SIZE, factors)

    def sample_labels(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.integers(0, f.size, size=n) for f in self.factors], axis=1).astype(np.int64)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        labels = self.sample_labels(n, rng)
        shape, colour, xbin, ybin, size = labels.T
        step = (self.SIZE - 2 * self.MARGIN) // self.BINS
        # Keep the centre 2 px inside its 12 px bin so that the bin is unambiguous.
        cx = self.MARGIN + xbin * step + rng.integers(2, step - 2, size=n)
        cy = self.MARGIN + ybin * step + rng.integers(2, step - 2, size=n)
        radius = np.where(size == 0, rng.uniform(3.5, 4.5, size=n), rng.uniform(6.0, 7.5, size=n))
        angle = np.deg2rad(rng.uniform(-30, 30, size=n))
        palette = np.array(list(SPRITE_COLOURS.values()), dtype=np.float32)
        rgb = np.clip(palette[colour] + rng.uniform(-15, 15, size=(n, 3)), 0, 255)
        images = _background(n, self.SIZE, self.SIZE, rng, level=60.0, noise=8.0)
        supersample = np.where(rng.random(n) < 0.5, 3, 1)
        _paint(
            images,
            cx,
            cy,
            shape,
            radius.astype(np.float32),
            angle.astype(np.float32),
            rgb.astype(np.float32),
            supersample,
            patch=21,
        )
        return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels


class TinyWorld(World):
    """A 16 x 16 world with two factors, colour (3) and x bin (4): small enough for unit tests."""

    SIZE = 16
    COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230)}

    def __init__(self) -> None:
        factors = [
            Factor("colour", "colour", tuple(self.COLOURS)),
            Factor("x", "x", ("0", "1", "2", "3"), axis="x", pixel_ranges=tuple((4 * b, 4 * b + 4) for b in range(4))),
        ]
        super().__init__("tiny", self.SIZE, self.SIZE, factors)

    def sample_labels(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.integers(0, 3, size=n), rng.integers(0, 4, size=n)], axis=1).astype(np.int64)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        labels = self.sample_labels(n, rng)
        images = np.full((n, self.SIZE, self.SIZE, 3), 255, dtype=np.uint8)
        palette = np.array(list(self.COLOURS.values()), dtype=np.uint8)
        cy = rng.integers(4, 12, size=n)
        for i in range(n):
            x0 = 4 * labels[i, 1] + 1  # a 2 x 3 bar inside its 4-px bin
            images[i, cy[i] - 1 : cy[i] + 2, x0 : x0 + 2] = palette[labels[i, 0]]
        return images, labels


# --------------------------------------------------------------------------- labelled folders


class LabelledFolderError(ValueError):
    """A labelled folder that cannot be used; the message names the file and row."""


class LabelledFolderWorld(World):
    """Images in a folder plus `labels.csv`: an `image` column and one column per factor.

    Every other column is a categorical factor. Its values are listed in the optional
    `factors.json` ({"column": ["value", ...]}), where a value outside the list is an
    error; without that file they are the sorted distinct strings of the column. Images are resized to `height x width`. `sample` draws rows
    with replacement from the loaded set.
    """

    def __init__(self, folder: str | Path, height: int = 64, width: int = 64) -> None:
        from PIL import Image, UnidentifiedImageError

        folder = Path(folder)
        table = folder / "labels.csv"
        if not table.is_file():
            raise LabelledFolderError(f"{table}: missing; a labelled folder needs labels.csv")
        with table.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            if "image" not in header:
                raise LabelledFolderError(f"{table}: missing column 'image' (columns: {header})")
            columns = [c for c in header if c != "image"]
            if not columns:
                raise LabelledFolderError(f"{table}: no factor columns besides 'image'")
            rows = list(reader)
        if not rows:
            raise LabelledFolderError(f"{table}: no rows")

        seen: dict[str, int] = {}
        for number, row in enumerate(rows, start=2):  # row 1 is the header
            name = (row.get("image") or "").strip()
            if not name:
                raise LabelledFolderError(f"{table}, row {number}: empty image name")
            if name in seen:
                raise LabelledFolderError(
                    f"{table}, row {number}: duplicate image {name!r} (first at row {seen[name]})"
                )
            seen[name] = number
            for column in columns:
                value = row.get(column)
                if value is None or value.strip() == "":
                    raise LabelledFolderError(f"{table}, row {number}: missing value in column {column!r}")

        values = {c: tuple(sorted({row[c].strip() for row in rows})) for c in columns}
        declared = self._declared_values(folder, columns)
        if declared is not None:
            for number, row in enumerate(rows, start=2):
                for column in columns:
                    if row[column].strip() not in declared[column]:
                        raise LabelledFolderError(
                            f"{table}, row {number}: unknown value {row[column].strip()!r} in column {column!r}"
                            f" (factors.json allows: {', '.join(declared[column])})"
                        )
            values = declared
        factors = [Factor(c, c, values[c]) for c in columns]
        super().__init__(f"folder:{folder.name}", height, width, factors)
        self.folder = folder

        images = np.zeros((len(rows), height, width, 3), dtype=np.uint8)
        labels = np.zeros((len(rows), len(columns)), dtype=np.int64)
        for index, row in enumerate(rows):
            number = index + 2
            path = folder / row["image"].strip()
            try:
                with Image.open(path) as image:
                    rgb = image.convert("RGB").resize((width, height), Image.BILINEAR)
                    images[index] = np.asarray(rgb)
            except FileNotFoundError:
                raise LabelledFolderError(f"{table}, row {number}: image {path} not found") from None
            except (UnidentifiedImageError, OSError) as error:
                raise LabelledFolderError(f"{table}, row {number}: cannot read image {path}: {error}") from None
            for f, column in enumerate(columns):
                labels[index, f] = values[column].index(row[column].strip())
        self.images = images
        self.labels = labels

    @staticmethod
    def _declared_values(folder: Path, columns: list[str]) -> dict[str, tuple[str, ...]] | None:
        """Read the optional `factors.json` ({"column": ["value", ...]}) that fixes each factor's values."""
        path = folder / "factors.json"
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise LabelledFolderError(f"{path}: not valid JSON: {error}") from None
        if not isinstance(raw, dict):
            raise LabelledFolderError(f"{path}: must map each factor column to a list of values")
        for column in columns:
            if column not in raw:
                raise LabelledFolderError(f"{path}: missing factor {column!r} that labels.csv has")
        for column in raw:
            if column not in columns:
                raise LabelledFolderError(f"{path}: declares factor {column!r} but labels.csv has no such column")
        declared = {}
        for column in columns:
            entries = raw[column]
            if not isinstance(entries, list) or not entries or not all(isinstance(v, str) for v in entries):
                raise LabelledFolderError(f"{path}: factor {column!r} must list its values as strings")
            declared[column] = tuple(entries)
        return declared

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        chosen = rng.integers(0, len(self.images), size=n)
        return self.images[chosen], self.labels[chosen]

    def sample_labels(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.labels[rng.integers(0, len(self.labels), size=n)]


def make_world(name: str, **options: object) -> World:
    """Build a world by name: `sprites`, `sortofclevr`, or a folder path for labelled data."""
    if name == "sprites":
        return SpritesWorld()
    if name == "sortofclevr":
        return SortOfClevrWorld()
    if name == "tiny":
        return TinyWorld()
    path = Path(name)
    if path.is_dir():
        return LabelledFolderWorld(path, **options)  # type: ignore[arg-type]
    raise ValueError(f"unknown world {name!r}: use 'sprites', 'sortofclevr', 'tiny' or a labelled folder path")
