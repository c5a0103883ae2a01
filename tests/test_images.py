"""Image decoding: modes that must become the right RGB, and inputs that must be rejected."""

import io
import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import ExifTags, Image

from service.images import ImageError, PixelLimitError, load_image


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


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` RGB pixels but contains no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def _scene() -> Image.Image:
    """An 8 x 4 RGB image whose pixels all differ, so any flip or rotation shows."""
    x, y = np.meshgrid(np.arange(8), np.arange(4))
    pixels = np.stack([x * 30, y * 60, 255 - x * 30], axis=2).astype(np.uint8)
    return Image.fromarray(pixels)


# --------------------------------------------------------------------------- modes


def test_cmyk_jpeg_converts_to_rgb():
    image = Image.new("CMYK", (32, 16), (0, 0, 0, 0))
    image.paste((255, 0, 0, 0), (0, 0, 16, 16))
    data = _encode(image, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"

    rgb = load_image(data).astype(int)

    # JPEG is lossy, so flat areas are compared away from the edge with a small tolerance.
    assert np.abs(rgb[8, 4] - [0, 255, 255]).max() <= 4
    assert np.abs(rgb[8, 28] - [255, 255, 255]).max() <= 4


def test_la_composites_on_white():
    image = Image.new("LA", (8, 8), (40, 0))
    image.putpixel((1, 1), (40, 255))
    image.putpixel((2, 2), (0, 128))

    rgb = load_image(_encode(image))

    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[1, 1].tolist() == [40, 40, 40]
    assert np.abs(rgb[2, 2].astype(int) - 127).max() <= 1


def test_palette_without_transparency():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    image.putpixel((3, 5), 1)
    data = _encode(image)
    assert "transparency" not in Image.open(io.BytesIO(data)).info

    rgb = load_image(data)

    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[5, 3].tolist() == [200, 100, 0]


@pytest.mark.parametrize(
    ("mode", "fill", "key", "other", "expected"),
    [("L", 10, 10, 99, [99, 99, 99]), ("RGB", (1, 2, 3), (1, 2, 3), (9, 8, 7), [9, 8, 7])],
    ids=["L", "RGB"],
)
def test_colour_key_transparency_composites_on_white(mode, fill, key, other, expected):
    image = Image.new(mode, (8, 8), fill)
    image.putpixel((4, 4), other)

    rgb = load_image(_encode(image, transparency=key))

    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[4, 4].tolist() == expected


def test_sixteen_bit_tiff_is_scaled():
    values = np.array([[0, 65535, 32768, 257]], dtype=np.uint16).repeat(4, axis=0).repeat(2, axis=1)
    rgb = load_image(_encode(Image.fromarray(values), "TIFF"))
    assert rgb[0, :, 0].tolist() == [0, 0, 255, 255, 128, 128, 1, 1]


def test_sixteen_bit_pgm_is_scaled():
    # Dark 16-bit samples (all below 256) must stay dark, not be read as 8-bit values.
    values = np.array([[0, 100, 200, 255]], dtype=">u2").repeat(4, axis=0)
    data = b"P5\n4 4\n65535\n" + values.tobytes()
    assert Image.open(io.BytesIO(data)).mode == "I"

    rgb = load_image(data)

    assert rgb[0, :, 0].tolist() == [0, 0, 1, 1]


# --------------------------------------------------------------------------- EXIF and animation


# The stored pixels for each EXIF orientation, given the upright image: orientation o tells
# the viewer to apply its transform to the stored image, so the stored image is the inverse.
STORED_FOR_ORIENTATION = {
    1: lambda upright: upright,
    2: lambda upright: upright[:, ::-1],
    3: lambda upright: upright[::-1, ::-1],
    4: lambda upright: upright[::-1, :],
    5: lambda upright: upright.transpose(1, 0, 2),
    6: lambda upright: np.rot90(upright, 1),  # shown after a quarter turn clockwise
    7: lambda upright: upright[::-1, ::-1].transpose(1, 0, 2),
    8: lambda upright: np.rot90(upright, -1),  # shown after a quarter turn anticlockwise
}


@pytest.mark.parametrize("orientation", sorted(STORED_FOR_ORIENTATION))
def test_exif_orientation_restores_upright_pixels(orientation):
    upright = np.asarray(_scene())
    stored = np.ascontiguousarray(STORED_FOR_ORIENTATION[orientation](upright))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation

    rgb = load_image(_encode(Image.fromarray(stored), exif=exif.tobytes()))

    assert rgb.shape == upright.shape
    assert np.array_equal(rgb, upright)


def test_exif_orientation_in_png_text_chunk():
    # ImageMagick writes EXIF into PNG files as a "Raw profile type exif" text chunk of hex digits.
    from PIL import PngImagePlugin

    upright = np.asarray(_scene())
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    raw = b"Exif\x00\x00" + exif.tobytes()
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("Raw profile type exif", f"\nexif\n{len(raw)}\n{raw.hex()}", zip=True)
    stored = Image.fromarray(np.ascontiguousarray(STORED_FOR_ORIENTATION[6](upright)))

    rgb = load_image(_encode(stored, pnginfo=chunk))

    assert np.array_equal(rgb, upright)


def test_exif_orientation_in_jpeg():
    upright = np.zeros((16, 32, 3), dtype=np.uint8)
    upright[:, :16] = (255, 0, 0)
    upright[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    stored = Image.fromarray(np.ascontiguousarray(STORED_FOR_ORIENTATION[6](upright)))

    rgb = load_image(_encode(stored, "JPEG", quality=95, exif=exif.tobytes())).astype(int)

    assert rgb.shape == (16, 32, 3)
    # JPEG is lossy, so the two flat halves are compared away from their border.
    assert np.abs(rgb[8, 4] - [255, 0, 0]).max() <= 8
    assert np.abs(rgb[8, 28] - [0, 0, 255]).max() <= 8


MALFORMED_EXIF = {
    "not-tiff": b"Exif\x00\x00garbage, not a TIFF header",
    "truncated-entry": b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12",
    "offset-past-end": b"Exif\x00\x00II\x2a\x00\xff\xff\xff\x7f",
}


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
@pytest.mark.parametrize("exif", list(MALFORMED_EXIF.values()), ids=list(MALFORMED_EXIF))
def test_malformed_exif_is_logged_and_ignored(exif, format, caplog):
    data = _encode(Image.new("RGB", (8, 6), (0, 0, 0)), format, exif=exif)

    with caplog.at_level(logging.WARNING, logger="service.images"):
        rgb = load_image(data, name="photo")

    assert rgb.shape == (6, 8, 3)
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("photo: ignoring malformed EXIF") for message in messages), messages


def test_invalid_orientation_value_is_logged_and_ignored(caplog):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 9
    upright = _scene()

    with caplog.at_level(logging.WARNING, logger="service.images"):
        rgb = load_image(_encode(upright, exif=exif.tobytes()), name="photo")

    assert np.array_equal(rgb, np.asarray(upright))
    assert "photo: ignoring EXIF orientation 9: valid values are 1 to 8" in caplog.messages


@pytest.mark.parametrize(
    ("format", "options"),
    [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})],
    ids=["gif", "apng", "webp"],
)
def test_animation_yields_first_frame(format, options):
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    data = _encode(frames[0], format, save_all=True, append_images=frames[1:], duration=100, loop=0, **options)
    assert Image.open(io.BytesIO(data)).n_frames == 3

    rgb = load_image(data)

    assert rgb.shape == (8, 8, 3)
    assert rgb[4, 4].tolist() == [255, 0, 0]


# --------------------------------------------------------------------------- rejected inputs


@pytest.mark.parametrize(("width", "height"), [(0, 0), (0, 10), (10, 0)])
def test_zero_size_header_rejected(width, height):
    with pytest.raises(ImageError, match="upload: not a recognised image format, or its header is invalid"):
        load_image(_png_header(width, height), name="upload")


def test_one_pixel_image_rejected():
    with pytest.raises(ImageError, match=r"1 x 1 pixels is below the minimum side of 4"):
        load_image(_encode(Image.new("RGB", (1, 1))))


def test_empty_file_rejected(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png: empty file"):
        load_image(path)


def test_non_image_file_rejected(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("a text file with an image suffix")
    with pytest.raises(ImageError, match="notes.png: not a recognised image format"):
        load_image(path)


@pytest.mark.parametrize(
    ("format", "options"),
    [("PNG", {}), ("JPEG", {"quality": 95}), ("GIF", {}), ("WEBP", {}), ("BMP", {}), ("TIFF", {}), ("PPM", {})],
)
def test_truncated_file_rejected(format, options):
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), format, **options)
    with pytest.raises(ImageError, match=r"^cut: (cannot decode image|not a recognised image format)"):
        load_image(data[: len(data) // 2], name="cut")


def test_header_in_pillow_warning_range_hits_pixel_limit(recwarn):
    # 100 million pixels: Pillow only warns above 89,478,485 and raises above twice that.
    with pytest.raises(PixelLimitError, match=r"^bomb: 10000 x 10000 = 100000000 pixels exceeds the limit of 40000000$"):
        load_image(_png_header(10_000, 10_000), name="bomb")
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_header_in_pillow_error_range_hits_pixel_limit():
    with pytest.raises(PixelLimitError, match=r"^bomb: 200000000 pixels exceeds the limit of 40000000$"):
        load_image(_png_header(20_000, 10_000), name="bomb")


def test_pillow_ceiling_applies_above_it():
    with pytest.raises(PixelLimitError, match=r"exceeds Pillow's decompression-bomb limit of 178956970$"):
        load_image(_png_header(20_000, 10_000), max_pixels=10**9, name="bomb")


def test_pixel_limit_is_inclusive_setting():
    data = _encode(Image.new("RGB", (100, 50)))
    assert load_image(data, max_pixels=5000).shape == (50, 100, 3)
    with pytest.raises(PixelLimitError, match=r"5000 pixels exceeds the limit of 4999$"):
        load_image(data, max_pixels=4999)
