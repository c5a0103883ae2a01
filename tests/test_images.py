"""Image decoding: modes that must become the right RGB, and inputs that must be rejected."""

import io

import numpy as np
import pytest
from PIL import Image

from service.images import ImageError, load_image


def _encode(image, format="PNG", **options):
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def test_rgba_composites_on_white():
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    image.putpixel((1, 1), (0, 0, 255, 255))
    rgb = load_image(_encode(image))
    assert rgb.shape == (8, 8, 3)
    assert rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[1, 1].tolist() == [0, 0, 255]


def test_sixteen_bit_grey_is_scaled():
    values = np.array([[0, 32768], [65535, 257]] * 4, dtype=np.uint16).repeat(4, axis=1)
    rgb = load_image(_encode(Image.fromarray(values)))
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 4].tolist() == [128, 128, 128]
    assert rgb[1, 0].tolist() == [255, 255, 255]


def test_palette_with_transparency():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((2, 2), 1)
    rgb = load_image(_encode(image, transparency=0))
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[2, 2].tolist() == [0, 255, 0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty image data"),
        (b"plain text, not an image", "not a recognised image format"),
    ],
)
def test_bad_bytes_rejected(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data, name="upload")


def test_truncated_png_rejected():
    data = _encode(Image.new("RGB", (64, 64), (10, 20, 30)))
    with pytest.raises(ImageError, match="cannot decode image"):
        load_image(data[: len(data) // 2])


def test_pixel_limit_names_size_and_limit():
    data = _encode(Image.new("RGB", (100, 50)))
    with pytest.raises(ImageError, match=r"100 x 50 = 5000 pixels exceeds the limit of 4000"):
        load_image(data, max_pixels=4000)


def test_tiny_image_rejected():
    with pytest.raises(ImageError, match="below the minimum side of 4"):
        load_image(_encode(Image.new("RGB", (3, 40))))


def test_directory_and_missing_path(tmp_path):
    with pytest.raises(ImageError, match="is a directory, not an image file"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "absent.png")
