"""Pictures sent by users: bytes -> square RGB pixels for the image tokenizer (torch-free; Pillow is imported lazily).

A user may send any PNG or JPEG; it is centre-cropped to a square and resized to the tokenizer's side. Anything
that is not a readable image, or is absurdly large, raises ``ImageFormatError`` with a message for the caller.
"""

from __future__ import annotations

import io

import numpy as np

MAX_IMAGE_BYTES = 4 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096


class ImageFormatError(ValueError):
    """The bytes are not an image we can read."""


def read_image(data: bytes, side: int) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 ``[side, side, 3]`` (RGB; alpha composited on white; centre-cropped square)."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise ImageFormatError("image is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageFormatError(f"image is {len(data)} bytes, more than the limit of {MAX_IMAGE_BYTES}")
    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            if image.format not in ("PNG", "JPEG"):
                raise ImageFormatError(f"unsupported image format {image.format!r}; send PNG or JPEG")
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageFormatError(f"image is {width}x{height}, more than {MAX_IMAGE_PIXELS} pixels")
            image.load()
            rgba = image.convert("RGBA")
    except ImageFormatError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageFormatError(f"not a readable image ({exc})") from exc
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(background, rgba).convert("RGB")
    edge = min(rgb.size)
    left, top = (rgb.size[0] - edge) // 2, (rgb.size[1] - edge) // 2
    square = rgb.crop((left, top, left + edge, top + edge))
    if square.size != (side, side):
        square = square.resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(square, dtype=np.uint8).copy()
