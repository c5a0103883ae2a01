"""Built-in worlds and labelled folders: geometry, labels and the errors users see."""

import json

import numpy as np
import pytest
from PIL import Image

from training.worlds import (
    SORT_OF_CLEVR_COLOURS,
    LabelledFolderError,
    LabelledFolderWorld,
    SortOfClevrWorld,
    SpritesWorld,
    make_world,
)


def test_sortofclevr_plain_matches_public_geometry():
    world = SortOfClevrWorld(plain=1.0)
    images, labels = world.sample(64, np.random.default_rng(0))
    assert images.shape == (64, 75, 75, 3)
    assert images.dtype == np.uint8
    assert labels.shape == (64, 18)
    for k, rgb in enumerate(SORT_OF_CLEVR_COLOURS.values()):
        shape = labels[:, 3 * k]
        cx, cy = labels[:, 3 * k + 1] + 5, labels[:, 3 * k + 2] + 5
        for i in range(64):
            mask = (images[i] == rgb).all(axis=-1)
            ys, xs = np.nonzero(mask)
            # Later objects may cover part of an earlier one, so check the painted extent only
            # where the object is whole: a square has 121 pixels, a circle 81.
            if mask.sum() == (121 if shape[i] == 0 else 81):
                assert (xs.min() + xs.max()) / 2 == cx[i]
                assert (ys.min() + ys.max()) / 2 == cy[i]


def test_sortofclevr_centres_in_range_and_apart():
    labels = SortOfClevrWorld().sample_labels(500, np.random.default_rng(1))
    xs, ys = labels[:, 1::3] + 5, labels[:, 2::3] + 5
    assert xs.min() >= 5
    assert xs.max() < 70
    assert ys.min() >= 5
    assert ys.max() < 70
    for a in range(6):
        for b in range(a + 1, 6):
            assert (((xs[:, a] - xs[:, b]) ** 2 + (ys[:, a] - ys[:, b]) ** 2) >= 100).all()


def test_sprites_labels_cover_all_values():
    world = SpritesWorld()
    images, labels = world.sample(400, np.random.default_rng(2))
    assert images.shape == (400, 64, 64, 3)
    for f, factor in enumerate(world.factors):
        assert set(np.unique(labels[:, f])) == set(range(factor.size))


def test_make_world_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown world 'nope'"):
        make_world("nope")


def _folder(tmp_path, rows, header="image,shape,colour", images=None):
    for name in images if images is not None else [r.split(",")[0] for r in rows]:
        Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return tmp_path


def test_folder_loads_factors(tmp_path):
    folder = _folder(tmp_path, ["a.png,square,red", "b.png,circle,blue"])
    world = LabelledFolderWorld(folder, height=8, width=8)
    assert [f.name for f in world.factors] == ["shape", "colour"]
    assert world.factors[0].values == ("circle", "square")
    assert world.labels.tolist() == [[1, 1], [0, 0]]


def test_folder_missing_labels_file(tmp_path):
    with pytest.raises(LabelledFolderError, match="labels.csv: missing"):
        LabelledFolderWorld(tmp_path)


def test_folder_missing_image_column(tmp_path):
    folder = _folder(tmp_path, ["a.png,square"], header="file,shape", images=["a.png"])
    with pytest.raises(LabelledFolderError, match="missing column 'image'"):
        LabelledFolderWorld(folder)


def test_folder_missing_value_names_row(tmp_path):
    folder = _folder(tmp_path, ["a.png,square,red", "b.png,,blue"])
    with pytest.raises(LabelledFolderError, match=r"row 3: missing value in column 'shape'"):
        LabelledFolderWorld(folder)


def test_folder_duplicate_image_names_rows(tmp_path):
    folder = _folder(tmp_path, ["a.png,square,red", "a.png,circle,blue"], images=["a.png"])
    with pytest.raises(LabelledFolderError, match=r"row 3: duplicate image 'a.png' \(first at row 2\)"):
        LabelledFolderWorld(folder)


def test_folder_unreadable_image_names_row(tmp_path):
    folder = _folder(tmp_path, ["a.png,square,red", "b.png,circle,blue"], images=["a.png"])
    (tmp_path / "b.png").write_bytes(b"not an image")
    with pytest.raises(LabelledFolderError, match=r"labels.csv, row 3: cannot read image"):
        LabelledFolderWorld(folder)


def test_folder_absent_image_names_row(tmp_path):
    folder = _folder(tmp_path, ["a.png,square,red", "c.png,circle,blue"], images=["a.png"])
    with pytest.raises(LabelledFolderError, match=r"row 3: image .*c.png not found"):
        LabelledFolderWorld(folder)


def test_folder_unknown_value_against_declared_factors(tmp_path):
    folder = _folder(tmp_path, ["a.png,square,red", "b.png,hexagon,blue"])
    (tmp_path / "factors.json").write_text(json.dumps({"shape": ["square", "circle"], "colour": ["red", "blue"]}))
    with pytest.raises(LabelledFolderError, match=r"row 3: unknown value 'hexagon' in column 'shape'"):
        LabelledFolderWorld(folder)


def test_folder_declared_factor_missing_from_csv(tmp_path):
    folder = _folder(tmp_path, ["a.png,square,red"])
    (tmp_path / "factors.json").write_text(json.dumps({"shape": ["square"], "colour": ["red"], "size": ["big"]}))
    with pytest.raises(LabelledFolderError, match="declares factor 'size'"):
        LabelledFolderWorld(folder)
