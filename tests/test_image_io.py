import io

import numpy as np
import pytest
from PIL import Image

from assistant.image_io import MAX_IMAGE_BYTES, ImageFormatError, read_image


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_png_with_alpha_is_composited_on_white_and_resized():
    image = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (32, 32, 96, 96))
    pixels = read_image(encoded(image, "PNG"), 64)
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert pixels[2, 2].tolist() == [255, 255, 255]  # transparent corner -> white
    assert pixels[32, 32].tolist() == [255, 0, 0]


def test_non_square_jpeg_is_centre_cropped():
    image = Image.new("RGB", (200, 100), (0, 0, 255))
    image.paste((0, 255, 0), (50, 0, 150, 100))  # the centre square is green
    pixels = read_image(encoded(image, "JPEG"), 32).astype(int)
    assert (pixels[:, :, 1] > 200).mean() > 0.9


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n garbage", "not a readable image"),
        (encoded(Image.new("RGB", (8, 8)), "GIF"), "unsupported image format"),
        (b"\x00" * (MAX_IMAGE_BYTES + 1), "limit"),
    ],
)
def test_bad_images_raise_a_clear_error(data, message):
    with pytest.raises(ImageFormatError, match=message):
        read_image(data, 64)
