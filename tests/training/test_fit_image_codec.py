import numpy as np
import pytest
import torch

from assistant.models.embedded.image import ImageCodecConfig
from training.fit_image_codec import ImageFitSettings, fit_image_codec, judge_round_trip
from training.fitting import kmeans
from training.specs import ImageSpec

TINY = ImageCodecConfig(
    tokens_per_image=8, codebook_size=32, image_size=16, pixel_shuffle=2, levels=2, code_dim=8, channels=32
)
SPECS = [ImageSpec(shape, colour, "white", "big") for shape in ("circle", "square") for colour in ("red", "blue")]


@pytest.mark.slow  # training steps: > 1.5 s
def test_tiny_fit_reduces_reconstruction_loss_and_uses_codes():
    torch.set_num_threads(1)
    settings = ImageFitSettings(steps=120, warmup_steps=40, batch_size=16, jitters=3, restart_every=20, log_every=1000)
    model, metrics = fit_image_codec(TINY, seed=0, settings=settings, specs=SPECS)
    assert metrics["steps"] == 120
    assert metrics["canonical_mse"] < 0.5 * metrics["first_mse"]
    assert metrics["live_codes_per_level"][0] >= 2 and sum(metrics["live_codes_per_level"]) == metrics["live_codes"]
    assert not model.training
    image = np.zeros((16, 16, 3), np.uint8)
    assert model.encode(image) == model.encode(image) and len(model.encode(image)) == 8
    report = judge_round_trip(model, SPECS[:1])
    assert report["n"] == 1 and report["original"]["both"] == 1.0


FEW = ImageFitSettings(
    steps=12, warmup_steps=4, batch_size=8, jitters=1, restart_every=3, kmeans_sample=256, kmeans_iters=2, log_every=100
)


def test_same_seed_same_weights_and_steps_are_the_budget():
    torch.set_num_threads(1)
    (first, metrics), (second, _) = (fit_image_codec(TINY, seed=5, settings=FEW, specs=SPECS) for _ in range(2))
    assert metrics["steps"] == 12 and metrics["device"] == "cpu" and metrics["seconds"] >= 0
    state, other = first.state_dict(), second.state_dict()
    assert state.keys() == other.keys() and all(torch.equal(state[k], other[k]) for k in state)
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in state.values())
    assert not first.training
    different, _ = fit_image_codec(TINY, seed=6, settings=FEW, specs=SPECS)
    assert not torch.equal(state["codebook"], different.state_dict()["codebook"])
    with pytest.raises(TypeError):
        fit_image_codec(TINY, seed=5, settings=FEW, specs=SPECS, max_minutes=1.0)  # type: ignore[call-arg]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fitting_on_cuda_returns_a_cpu_float32_model():
    model, metrics = fit_image_codec(TINY, seed=5, settings=FEW, specs=SPECS, device="cuda")
    assert metrics["device"].startswith("cuda") and metrics["steps"] == 12
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in model.state_dict().values())
    assert len(model.encode(np.zeros((16, 16, 3), np.uint8))) == 8


def test_the_kmeans_plus_plus_init_finds_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=gen) for c in centres])
    book, _ = kmeans(points, 3, 5, gen, init="kmeans++")  # how the image codebooks start
    assert torch.cdist(centres, book).min(dim=1).values.max() < 0.2


def test_pixel_weights_stress_the_outline():
    from training.fit_image_codec import _pixel_weights

    image = torch.zeros(1, 3, 16, 16)
    image[:, :, 4:12, 4:12] = 1.0  # a white square on black
    weights = _pixel_weights(image, shape_weight=4.0, edge_weight=16.0)[0, 0]
    assert weights[0, 0] == 1.0  # background
    assert weights[8, 8] == 5.0  # shape interior: 1 + shape_weight
    assert weights[4, 8] == 21.0 and weights[3, 8] == 17.0  # both sides of the edge
    settings = ImageFitSettings()
    assert settings.edge_weight > settings.shape_weight and settings.canonical_share >= 0.5


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA"):
        fit_image_codec(TINY, seed=5, settings=FEW, specs=SPECS, device="cuda")
