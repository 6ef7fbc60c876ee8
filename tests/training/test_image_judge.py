import numpy as np
import pytest
from scipy import ndimage

from training.images import all_specs, render
from training.judges.image import judge_image, measure_image


def _blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(pixels.astype(float), (sigma, sigma, 0)).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("jitter", [0, 5])
def test_judge_reads_every_spec(jitter):
    for spec in all_specs(jitter):
        reading = measure_image(render(spec))
        assert (reading.colour, reading.shape) == (spec.colour, spec.shape), spec
        assert (reading.background, reading.size) == (spec.background, spec.size), spec


def test_judge_survives_blur_and_noise():
    rng = np.random.default_rng(0)
    for spec in all_specs(jitter=2):
        noisy = _blur(render(spec), 2.0).astype(float) + rng.normal(0.0, 10.0, (64, 64, 3))
        assert judge_image(noisy.clip(0, 255).astype(np.uint8)) == (spec.colour, spec.shape), spec


def test_judge_on_a_plain_picture_and_bad_input():
    assert judge_image(np.full((64, 64, 3), 128, np.uint8)) == ("unknown", "unknown")
    with pytest.raises(ValueError):
        judge_image(np.zeros((64, 64), np.uint8))


def test_judge_does_not_import_the_models():
    import training.judges.image as judge

    source = open(judge.__file__).read()
    assert "assistant.models" not in source.replace("must not import ``assistant.models``", "")
