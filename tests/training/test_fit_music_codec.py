import pytest
import torch

from assistant.models.embedded.music import MusicCodecConfig, MusicDetokenizer
from training.fit_music_codec import evaluate_music_codec, fit_music_codec
from training.music import music_specs, synthesize
from training.specs import MusicSpec

TINY = MusicCodecConfig(codebook_size=32, n_fft=1024, griffin_lim_iters=4)


@pytest.mark.slow  # training steps: > 1.5 s
def test_tiny_fit_reduces_reconstruction_error_and_is_seeded():
    codec, metrics = fit_music_codec(TINY, seed=0, max_frames=1500, iters=3, variants=1)
    assert metrics["clips"] == len(music_specs(1)) and metrics["frames"] == 1500
    rmse = metrics["level_rmse"]
    assert len(rmse) == 4 and all(b <= a + 1e-6 for a, b in zip(rmse, rmse[1:], strict=False))
    spec = MusicSpec("fast", "minor")
    features = codec.log_magnitude(synthesize(spec))
    unfitted = MusicDetokenizer(TINY)

    def error(model):
        return float((model.dequantise(model.quantise(features)) - features).pow(2).mean().sqrt())

    assert error(codec) < 0.5 * error(unfitted)
    again, _ = fit_music_codec(TINY, seed=0, max_frames=1500, iters=3, variants=1)
    assert torch.equal(again.codebooks, codec.codebooks)
    assert codec.encode(synthesize(spec)) == again.encode(synthesize(spec))


def test_evaluation_reports_accuracy_tokens_and_speed():
    codec, _ = fit_music_codec(TINY, seed=1, max_frames=1000, iters=2, variants=1)
    specs = [MusicSpec("fast", "major"), MusicSpec("slow", "minor")]
    result = evaluate_music_codec(codec, specs)
    assert result["clips"] == 2 and result["original_tempo"] == 1.0 and result["original_mode"] == 1.0
    assert 0.0 <= result["decoded_both"] <= 1.0 and result["decode_rtf"] > 0.0
    assert result["tokens_max"] == 4 * 80  # fast: 8 beats at 150 bpm = 3.2 s = 80 frames at 25 Hz
