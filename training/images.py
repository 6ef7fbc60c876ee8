"""Pillow rendering of an ``ImageSpec``: one coloured shape on a plain background, ``uint8 [size, size, 3]``.

Geometry is expressed as fractions of the image side, so every ``size_px`` draws the same picture. ``jitter=0`` is
the canonical rendering (centred, nominal size); ``jitter=k > 0`` seeds a generator with ``k`` and draws small
offsets of the centre and a size scale, so the same ``(spec, size_px)`` always gives the same pixels.

Shapes point up: the triangle stands on its base, the star has five points with one at the top. The palette keeps
the shape colours far apart from each other and from every background (see ``min_palette_distance``).
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
from PIL import Image, ImageDraw

from training.specs import BACKGROUNDS, SHAPE_COLOURS, SHAPES, SIZES, ImageSpec

SHAPE_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 220, 20),
    "purple": (150, 40, 190),
    "orange": (250, 130, 0),
}
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
RADIUS: dict[str, float] = {"small": 0.19, "big": 0.32}  # circumradius as a fraction of the side
MAX_SHIFT: dict[str, float] = {"small": 0.14, "big": 0.06}  # largest jitter of the centre (fraction of the side)
SHAPE_SCALE: dict[str, float] = {"circle": 1.0, "square": 1.0, "triangle": 1.15, "star": 1.15}  # similar areas
SCALE_RANGE = (0.88, 1.1)  # jittered radius = RADIUS * uniform(SCALE_RANGE)
SQUARE_HALF = 0.85  # half side of the square / circumradius (so the square looks as big as the circle)
STAR_INNER = 0.45  # inner radius of the star / outer radius
SUPERSAMPLE = 4  # draw at 4x and downscale: anti-aliased edges

assert set(SHAPE_RGB) == set(SHAPE_COLOURS) and set(BACKGROUND_RGB) == set(BACKGROUNDS)


def all_specs(jitter: int = 0) -> list[ImageSpec]:
    """Every (shape, colour, background, size) combination with the given jitter (144 specs)."""
    return [
        ImageSpec(shape, colour, background, size, jitter)
        for shape, colour, background, size in product(SHAPES, SHAPE_COLOURS, BACKGROUNDS, SIZES)
    ]


def min_palette_distance() -> float:
    """Smallest RGB distance between two shape colours or between a shape colour and a background."""
    colours = [np.array(c, dtype=float) for c in SHAPE_RGB.values()]
    backgrounds = [np.array(c, dtype=float) for c in BACKGROUND_RGB.values()]
    pairs = [(a, b) for i, a in enumerate(colours) for b in colours[i + 1 :]]
    pairs += [(a, b) for a in colours for b in backgrounds]
    return min(float(np.linalg.norm(a - b)) for a, b in pairs)


def placement(spec: ImageSpec) -> tuple[float, float, float]:
    """(centre x, centre y, circumradius) as fractions of the side: nominal for jitter 0, seeded offsets otherwise."""
    radius = RADIUS[spec.size] * SHAPE_SCALE[spec.shape]
    if spec.jitter == 0:
        return 0.5, 0.5, radius
    rng = np.random.default_rng(spec.jitter)
    shift = MAX_SHIFT[spec.size]
    dx, dy = rng.uniform(-shift, shift, size=2)
    scale = rng.uniform(*SCALE_RANGE)
    return 0.5 + float(dx), 0.5 + float(dy), radius * float(scale)


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices (pixels) of a square, triangle or star with circumradius r, pointing up."""
    if shape == "square":
        half = SQUARE_HALF * r
        return [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if shape == "triangle":
        # equilateral, centroid lowered so the bounding box is centred vertically
        height = 1.5 * r
        top = cy - height / 2.0
        half_base = r * math.sqrt(3.0) / 2.0
        return [(cx, top), (cx + half_base, top + height), (cx - half_base, top + height)]
    if shape == "star":
        points = []
        for k in range(10):
            angle = -math.pi / 2.0 + k * math.pi / 5.0
            radius = r if k % 2 == 0 else r * STAR_INNER
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"unknown shape {shape!r}")


def render(spec: ImageSpec, size_px: int = 64) -> np.ndarray:
    """The picture of ``spec`` as ``uint8 [size_px, size_px, 3]`` (deterministic for a given spec)."""
    if size_px < 8:
        raise ValueError(f"size_px must be >= 8, got {size_px}")
    big = size_px * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), BACKGROUND_RGB[spec.background])
    draw = ImageDraw.Draw(canvas)
    fx, fy, fr = placement(spec)
    cx, cy, r = fx * big, fy * big, fr * big
    fill = SHAPE_RGB[spec.colour]
    if spec.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_outline(spec.shape, cx, cy, r), fill=fill)
    small = canvas.resize((size_px, size_px), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8).copy()
