"""Image judge: which colour and which shape does a picture show? Measured from the pixels alone.

1. Background: the median colour of the one-pixel border.
2. Shape colour: the median of the core pixels (distance from the background above 3/4 of the largest distance).
3. Foreground fraction: each pixel projected on the line from the background colour to the shape colour (0 at the
   background, 1 at the shape), ramped around 1/2 so that a blurred edge keeps its area; only the largest blob
   above 1/2 (dilated by a few pixels) counts, so speckles of decoder noise elsewhere do not.
4. Colour: the nearest named colour of ``training.images.SHAPE_RGB`` (the names' definition).
5. Shape: the radial signature r(theta), the foreground fraction integrated along 256 rays from the centroid. Its
   Fourier harmonics 3, 4 and 5 (relative to the mean radius) pick the triangle, the square and the five-pointed
   star; a signature with none of them is a circle. Blur lowers these harmonics but keeps the strongest one.

This module shares no code with the models (it must not import ``assistant.models``): it is an outside referee.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from training.images import BACKGROUND_RGB, SHAPE_RGB

UNKNOWN = "unknown"
MIN_CONTRAST = 40.0  # RGB distance below which there is no shape at all
MIN_AREA_FRACTION = 0.01  # a blob smaller than 1% of the picture is no shape
BIG_EXTENT = 30.0 / 64.0  # a shape whose bounding box is wider or taller than this fraction of the side is "big"
N_RAYS = 256
RAY_STEP = 0.5  # pixels between samples along a ray
BLOB_MARGIN = 3  # pixels of dilation around the largest blob
HARMONIC_SHAPES: dict[int, tuple[str, float]] = {  # harmonic -> (shape, its relative amplitude when drawn sharply)
    3: ("triangle", 0.13),
    4: ("square", 0.067),
    5: ("star", 0.15),
}
CIRCLE_BELOW = 0.3  # every harmonic below this fraction of its sharp amplitude -> circle (a square blurred by
# sigma 2.5 px keeps 0.58 of its harmonic 4, a drawn circle has < 0.1 of any)


@dataclass(frozen=True)
class ImageReading:
    """What the judge measured. ``colour``/``shape``/``size`` are ``"unknown"`` when no shape stands out."""

    colour: str
    shape: str
    background: str
    size: str
    harmonics: tuple[float, ...]  # relative amplitudes of harmonics 3, 4, 5 of the radial signature
    fill: float  # blob area / bounding-box area
    contrast: float  # RGB distance between the shape colour and the background


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    table = np.array([palette[n] for n in names], dtype=np.float64)  # [K, 3]
    return names[int(np.argmin(np.linalg.norm(table - rgb[None], axis=1)))]


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
    return labels == (1 + int(np.argmax(sizes)))


def radial_harmonics(foreground: np.ndarray) -> tuple[float, ...]:
    """Relative amplitudes of harmonics 3, 4, 5 of r(theta) for a foreground fraction map ``[H, W]`` in [0, 1]."""
    ys, xs = np.mgrid[: foreground.shape[0], : foreground.shape[1]]
    mass = foreground.sum()
    cy, cx = (foreground * ys).sum() / mass, (foreground * xs).sum() / mass
    theta = np.linspace(0.0, 2.0 * np.pi, N_RAYS, endpoint=False)  # [R]
    steps = np.arange(0.0, float(max(foreground.shape)), RAY_STEP)  # [S]
    rows = cy + np.sin(theta)[:, None] * steps  # [R, S]
    cols = cx + np.cos(theta)[:, None] * steps
    radius = ndimage.map_coordinates(foreground, [rows, cols], order=1, mode="constant").sum(1) * RAY_STEP  # [R]
    spectrum = np.abs(np.fft.rfft(radius)) / N_RAYS
    return tuple(float(spectrum[k] / spectrum[0]) for k in HARMONIC_SHAPES)


def measure_image(pixels: np.ndarray) -> ImageReading:
    """Every measurement of an RGB picture ``uint8 [H, W, 3]``."""
    image = np.asarray(pixels)
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    rgb = image.astype(np.float64)
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]], axis=0)  # [P, 3]
    background_rgb = np.median(border, axis=0)
    background = _nearest(background_rgb, BACKGROUND_RGB)
    distance = np.linalg.norm(rgb - background_rgb, axis=-1)  # [H, W]
    peak = float(distance.max())
    if peak < MIN_CONTRAST:
        return ImageReading(UNKNOWN, UNKNOWN, background, UNKNOWN, (), 0.0, peak)

    shape_rgb = np.median(rgb[distance > 0.75 * peak], axis=0)
    colour = _nearest(shape_rgb, SHAPE_RGB)
    axis = shape_rgb - background_rgb
    contrast = float(np.linalg.norm(axis))
    projection = (rgb - background_rgb) @ axis / (contrast**2)  # [H, W]: 0 background, 1 shape
    blob = _largest_blob(projection > 0.5)
    area = float(blob.sum())
    if area < MIN_AREA_FRACTION * blob.size:
        return ImageReading(colour, UNKNOWN, background, UNKNOWN, (), 0.0, contrast)

    foreground = np.clip((projection - 0.2) / 0.6, 0.0, 1.0) * ndimage.binary_dilation(blob, iterations=BLOB_MARGIN)
    harmonics = radial_harmonics(foreground)
    scores = {HARMONIC_SHAPES[k][0]: a / HARMONIC_SHAPES[k][1] for k, a in zip(HARMONIC_SHAPES, harmonics, strict=True)}
    best = max(scores, key=scores.__getitem__)
    shape = best if scores[best] >= CIRCLE_BELOW else "circle"

    rows = np.nonzero(blob.any(axis=1))[0]
    cols = np.nonzero(blob.any(axis=0))[0]
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    size = "big" if max(height, width) > BIG_EXTENT * max(blob.shape) else "small"
    return ImageReading(colour, shape, background, size, harmonics, area / float(height * width), contrast)


def judge_image(pixels: np.ndarray) -> tuple[str, str]:
    """(colour, shape) of the shape in an RGB picture ``uint8 [H, W, 3]``; ``"unknown"`` where none stands out."""
    reading = measure_image(pixels)
    return reading.colour, reading.shape
