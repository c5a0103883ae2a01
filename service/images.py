"""Decode and validate user images into RGB `uint8 [height, width, 3]` arrays.

Every Pillow mode is brought to RGB. Transparency is composited on white (the background
of the built-in worlds), 16- and 32-bit greyscale is scaled to 8 bits and CMYK is
converted. EXIF orientation is applied, and an animated file yields its first frame. Anything that
cannot be decoded, or is larger than the pixel limit, raises `ImageError`.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageError", "PixelLimitError", "DEFAULT_MAX_PIXELS", "MIN_SIDE", "load_image", "to_rgb"]

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000  # about a 7,700 x 5,200 photo; larger files are rejected
MIN_SIDE = 4  # smaller images carry no usable object
BACKGROUND = (255, 255, 255)


class ImageError(ValueError):
    """An image that cannot be used; the message names the problem and any limit."""


class PixelLimitError(ImageError):
    """An image with more pixels than `max_pixels` allows."""


def load_image(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """Decode a file path or encoded bytes into an RGB uint8 array, enforcing `max_pixels`."""
    label = name or (str(source) if not isinstance(source, bytes) else "image")
    if isinstance(source, bytes):
        if not source:
            raise ImageError(f"{label}: empty image data")
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        stream = Path(source)
        if stream.is_dir():
            raise ImageError(f"{label}: is a directory, not an image file")
        if not stream.is_file():
            raise ImageError(f"{label}: file not found")
        if stream.stat().st_size == 0:
            raise ImageError(f"{label}: empty file")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its own limit and twice it; any warning rejects here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise PixelLimitError(f"{label}: {width} x {height} = {width * height} pixels exceeds the limit of {max_pixels}")
                if min(width, height) < MIN_SIDE:
                    raise ImageError(f"{label}: {width} x {height} pixels is below the minimum side of {MIN_SIDE}")
                if getattr(image, "n_frames", 1) > 1:
                    image.seek(0)
                image.load()
                return to_rgb(image, label)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{label}: rejected as a decompression bomb ({error})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"{label}: cannot decode image: {error}") from None


def _apply_orientation(image: Image.Image, label: str) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception as error:  # noqa: BLE001 - Pillow raises many types on malformed EXIF
        log.warning("%s: ignoring malformed EXIF orientation: %s", label, error)
        return image


def to_rgb(image: Image.Image, label: str = "image") -> np.ndarray:
    """Convert any Pillow mode to RGB uint8, compositing transparency on white."""
    image = _apply_orientation(image, label)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":
            top = 1.0 if values.size and values.max() <= 1.0 else 255.0
        elif mode == "I" and values.size and values.max() > 65535:
            top = float(values.max())
        else:
            top = 65535.0 if mode != "I" or (values.size and values.max() > 255) else 255.0
        grey = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
