import numpy as np
import pytest

from training.images import BACKGROUND_RGB, SHAPE_RGB, all_specs, min_palette_distance, render
from training.specs import SHAPE_COLOURS, ImageSpec


def test_render_is_deterministic_and_jitter_moves_the_shape():
    spec = ImageSpec("star", "blue", "gray", "small", jitter=3)
    first, again = render(spec), render(spec)
    assert first.dtype == np.uint8 and first.shape == (64, 64, 3)
    assert np.array_equal(first, again)
    canonical = render(ImageSpec("star", "blue", "gray", "small"))
    assert not np.array_equal(first, canonical)
    assert not np.array_equal(render(ImageSpec("star", "blue", "gray", "small", jitter=4)), first)


def test_canonical_shape_is_centred_with_its_colour_on_the_background():
    for spec in (ImageSpec("circle", "red"), ImageSpec("square", "green", "black", "small")):
        pixels = render(spec)
        assert tuple(pixels[0, 0]) == BACKGROUND_RGB[spec.background]
        assert tuple(pixels[32, 32]) == SHAPE_RGB[spec.colour]
        ys, xs = np.nonzero(np.all(pixels == SHAPE_RGB[spec.colour], axis=-1))
        assert abs(ys.mean() - 31.5) < 1.0 and abs(xs.mean() - 31.5) < 1.0


def test_big_shapes_cover_more_than_small_ones_and_stay_inside():
    for spec in all_specs(jitter=7):
        pixels = render(spec)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        assert np.all(border == BACKGROUND_RGB[spec.background]), spec
    area = {
        size: np.all(render(ImageSpec("triangle", "orange", size=size)) != 255, axis=-1).sum()
        for size in ("small", "big")
    }
    assert area["big"] > 2 * area["small"]


def test_palette_is_distinct_and_every_spec_is_listed():
    assert min_palette_distance() > 80
    assert len(all_specs()) == 144 and len(set(all_specs())) == 144
    assert set(SHAPE_RGB) == set(SHAPE_COLOURS)
    with pytest.raises(ValueError):
        render(ImageSpec("circle", "red"), size_px=4)
