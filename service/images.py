"""Decode and validate user images into RGB `uint8 [height, width, 3]` arrays.

Every Pillow mode is brought to RGB. Transparency (an alpha channel, a palette or a
colour key) is composited on white, the background of the built-in worlds. 16- and
32-bit greyscale is scaled to 8 bits and CMYK is converted. EXIF orientation is applied,
and EXIF that Pillow cannot parse is logged and ignored. An animated file yields its
first frame. Anything that cannot be decoded raises `ImageError`, and an image with more
pixels than the limit raises `PixelLimitError` after only its header has been read.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

__all__ = [
    "ImageError",
    "PixelLimitError",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_HANDLING",
    "MIN_MAX_PIXELS",
    "MIN_SIDE",
    "load_image",
    "read_image_file",
    "to_rgb",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000  # about a 7,700 x 5,200 photo; larger files are rejected
MIN_SIDE = 4  # smaller images carry no usable object
MIN_MAX_PIXELS = MIN_SIDE * MIN_SIDE  # the smallest pixel limit that lets an image through
# A summary of image decoding for the --help text of the commands that read images.
IMAGE_HANDLING = (
    "Images in any format Pillow reads become RGB: transparency is composited on white, the EXIF orientation is"
    " applied (malformed EXIF is logged and ignored), and an animated image gives its first frame."
)
BACKGROUND = (255, 255, 255)

# Transpositions for EXIF orientations 2 to 8; 1 is upright.
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Pillow's DecompressionBombError text, "Image size (N pixels) exceeds limit of M pixels, ...".
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
# `warnings.catch_warnings` swaps process-wide state, so decoding threads take turns inside it.
_WARNINGS_LOCK = threading.Lock()


class ImageError(ValueError):
    """An image that cannot be used; the message names the problem and any limit."""


class PixelLimitError(ImageError):
    """An image with more pixels than `max_pixels` allows."""


def load_image(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """Decode a file path or encoded bytes into an RGB uint8 array, enforcing `max_pixels`.

    The size is checked from the header, before any pixel data is decoded. Pillow rejects
    images over `2 * PIL.Image.MAX_IMAGE_PIXELS` pixels (178,956,970 in Pillow 13) while it
    reads the header, so that is the limit whenever `max_pixels` is larger. Pillow's
    warning for images over `MAX_IMAGE_PIXELS` is dropped, because `max_pixels` replaces it.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "image")
    if isinstance(source, bytes):
        if not source:
            raise ImageError(f"{label}: empty image data")
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        stream = Path(source)
        _check_file(stream, label)
    try:
        with _open(stream, label) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise PixelLimitError(f"{label}: {width} x {height} = {width * height} pixels exceeds the limit of {max_pixels}")
            if min(width, height) < MIN_SIDE:
                raise ImageError(f"{label}: {width} x {height} pixels is below the minimum side of {MIN_SIDE}")
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            sixteen_bit = _stores_sixteen_bit(image)
            image.load()
            if _plain_rgb(image):
                # The common case, such as the PNG files the built-in worlds write: one copy
                # out of Pillow and nothing to convert.
                return np.array(image, dtype=np.uint8)
            return to_rgb(image, label, sixteen_bit=sixteen_bit)
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise _bomb_error(label, error, max_pixels) from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not a recognised image format, or its header is invalid") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"{label}: cannot decode image: {error}") from None


def _check_file(path: Path, label: str) -> None:
    """Raise ImageError unless `path` is a regular, non-empty file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except OSError as error:
        raise ImageError(f"{label}: cannot read file: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{label}: is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{label}: not a regular file")
    if info.st_size == 0:
        raise ImageError(f"{label}: empty file")


def read_image_file(path: str | Path, *, name: str | None = None) -> bytes:
    """Read an image file's bytes for sending elsewhere, with the file errors `load_image` gives.

    Nothing is decoded: a server that receives the bytes decodes and checks them.
    """
    label = name or str(path)
    _check_file(Path(path), label)
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ImageError(f"{label}: cannot read file: {error.strerror or error}") from None


def _open(stream: io.BytesIO | Path, label: str) -> Image.Image:
    """Open an image and read its header, logging Pillow's warnings except the decompression-bomb one."""
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = Image.open(stream)
    for warning in caught:
        if not issubclass(warning.category, Image.DecompressionBombWarning):
            log.warning("%s: %s", label, str(warning.message).strip())
    return image


def _plain_rgb(image: Image.Image) -> bool:
    """Tell whether a loaded PNG or JPEG is already the array: RGB, opaque, one frame, no EXIF.

    Both readers keep an EXIF block in `info` once the image is loaded (a PNG may store it
    after the pixel data), so without one there is no orientation to apply.
    """
    return (
        image.format in ("PNG", "JPEG")
        and image.mode == "RGB"
        and "exif" not in image.info
        and "Raw profile type exif" not in image.info
        and "transparency" not in image.info
        and getattr(image, "n_frames", 1) == 1
    )


def _bomb_error(label: str, error: Image.DecompressionBombError, max_pixels: int) -> PixelLimitError:
    """Restate Pillow's decompression-bomb rejection as a pixel-limit error that names the limit in force."""
    match = _BOMB_PIXELS.search(str(error))
    size = f"{match[1]} pixels" if match else "the image size"
    ceiling = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if max_pixels < ceiling:
        return PixelLimitError(f"{label}: {size} exceeds the limit of {max_pixels}")
    return PixelLimitError(f"{label}: {size} exceeds Pillow's decompression-bomb limit of {ceiling}")


def _stores_sixteen_bit(image: Image.Image) -> bool:
    """Tell whether an image stores 16-bit samples, as 16-bit PGM files opened in mode "I" do.

    Reads the decoder tiles, so it must run before `load()` clears them.
    """
    if image.mode.startswith("I;16"):
        return True
    for tile in image.tile:
        args = tile[3]  # (codec, extents, offset, args); args starts with the raw mode
        rawmode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(rawmode, str) and rawmode.startswith("I;16"):
            return True
    return False


def _read_orientation(image: Image.Image, label: str) -> int:
    """Return the EXIF orientation, or 1 when it is absent, invalid or in malformed EXIF (logged)."""
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exif = image.getexif()
            orientation = exif.get(ExifTags.Base.Orientation, 1)
            raw = image.info.get("exif")
            if not exif and isinstance(raw, bytes) and raw:
                # The JPEG reader parses EXIF while opening and drops its errors, leaving it
                # empty; parsing the raw block again raises or warns about them.
                Image.Exif().load(raw)
        except Exception as error:  # noqa: BLE001 - Pillow raises many types on malformed EXIF
            problem = str(error) or type(error).__name__
        else:
            problem = "; ".join(dict.fromkeys(str(warning.message).strip() for warning in caught))
    if problem:
        log.warning("%s: ignoring malformed EXIF: %s", label, problem)
        return 1
    if orientation != 1 and orientation not in _ORIENTATIONS:
        log.warning("%s: ignoring EXIF orientation %r: valid values are 1 to 8", label, orientation)
        return 1
    return orientation


def _apply_orientation(image: Image.Image, label: str) -> Image.Image:
    orientation = _read_orientation(image, label)
    if orientation == 1:
        return image
    return image.transpose(_ORIENTATIONS[orientation])


def to_rgb(image: Image.Image, label: str = "image", *, sixteen_bit: bool = False) -> np.ndarray:
    """Convert any Pillow mode to RGB uint8, applying EXIF orientation and compositing transparency on white.

    `sixteen_bit` marks a mode "I" image whose samples span 0 to 65535 (see `_stores_sixteen_bit`).
    """
    image = _apply_orientation(image, label)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":
            top = 1.0 if values.size and values.max() <= 1.0 else 255.0
        elif mode.startswith("I;16") or sixteen_bit:
            top = 65535.0
        elif values.size and values.max() > 65535:
            # NOTE: the bit depth of 32-bit integer greyscale is guessed from its values.
            top = float(values.max())
        else:
            top = 65535.0 if values.size and values.max() > 255 else 255.0
        grey = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("1", "L", "P", "RGB") and "transparency" in image.info:
        # A transparent palette entry or colour key becomes an alpha channel.
        image = image.convert("RGBA")
    elif mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
