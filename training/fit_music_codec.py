"""Fit of the music codec (tokenizer + de-tokenizer): residual k-means on the log-magnitude frames of every
synthesized tune (all tempos, modes, registers, timbres and variants), and its evaluation by the music judge.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from assistant.models.embedded.music import MusicCodecConfig, MusicDetokenizer
from training.fitting import fit_residual_codebooks
from training.judges.music import judge_music
from training.music import N_VARIANTS, music_specs, synthesize
from training.specs import MusicSpec

TEMPO_TOLERANCE = 0.10  # a judged tempo within +-10 % of the spec's bpm counts as right


@torch.no_grad()
def fit_music_codebooks(
    codec: MusicDetokenizer, features: torch.Tensor, iters: int = 12, seed: int = 0
) -> torch.Tensor:
    """Residual k-means on log-magnitude frames ``[N, n_freq]`` (``training.fitting``); replaces ``codec``'s
    codebooks. Returns the RMS of the residual left after each level ``[L]``. Needs N >= codebook_size."""
    cfg = codec.config
    if features.dim() != 2 or features.shape[1] != cfg.n_freq:
        raise ValueError(f"expected features [N, {cfg.n_freq}], got {tuple(features.shape)}")
    books, errors = fit_residual_codebooks(features, cfg.codebook_size, cfg.n_codebooks, iters=iters, seed=seed)
    codec.codebooks.copy_(books)
    return errors


def fit_music_codec(
    config: MusicCodecConfig | None = None,
    *,
    seed: int,
    max_frames: int = 30000,
    iters: int = 12,
    variants: int = N_VARIANTS,
) -> tuple[MusicDetokenizer, dict[str, float | int | list[float]]]:
    """Synthesizes every spec with ``variants`` variants, fits the codebooks on at most ``max_frames`` of their
    frames (a seeded random subset) and returns the codec and its metrics:

    clips, frames (used by k-means), level_rmse (residual log-magnitude RMS after each level), recon_rmse
    (log-magnitude RMS error of encode -> dequantise over every frame), fit_seconds.
    """
    config = config or MusicCodecConfig()
    started = time.perf_counter()
    codec = MusicDetokenizer(config)
    specs = music_specs(variants)
    features = torch.cat([codec.log_magnitude(synthesize(spec, config.sample_rate)) for spec in specs])  # [N, F]
    gen = torch.Generator().manual_seed(seed)
    subset = features[torch.randperm(features.shape[0], generator=gen)[:max_frames]]
    level_rmse = fit_music_codebooks(codec, subset, iters=iters, seed=seed)
    recon = codec.dequantise(codec.quantise(features))
    metrics: dict[str, float | int | list[float]] = {
        "clips": len(specs),
        "frames": int(subset.shape[0]),
        "level_rmse": [round(float(x), 4) for x in level_rmse],
        "recon_rmse": round(float((recon - features).pow(2).mean().sqrt()), 4),
        "fit_seconds": round(time.perf_counter() - started, 2),
    }
    return codec, metrics


def judge_correct(wave: np.ndarray, spec: MusicSpec, sample_rate: int) -> tuple[bool, bool]:
    """(tempo within ``TEMPO_TOLERANCE``, mode right) for one wave."""
    bpm, mode = judge_music(wave, sample_rate)
    return bool(abs(bpm - spec.bpm) <= TEMPO_TOLERANCE * spec.bpm), mode == spec.mode


def evaluate_music_codec(codec: MusicDetokenizer, specs: list[MusicSpec] | None = None) -> dict[str, float]:
    """Judge accuracy on the synthesized originals and after encode -> decode, tokens per clip, decode real-time
    factor (decode seconds / audio seconds)."""
    specs = specs if specs is not None else music_specs()
    rate = codec.config.sample_rate
    hits = {"original_tempo": 0, "original_mode": 0, "decoded_tempo": 0, "decoded_mode": 0, "decoded_both": 0}
    tokens, decode_seconds, audio_seconds = [], 0.0, 0.0
    for spec in specs:
        wave = synthesize(spec, rate)
        tempo_ok, mode_ok = judge_correct(wave, spec, rate)
        hits["original_tempo"] += tempo_ok
        hits["original_mode"] += mode_ok
        ids = codec.encode(wave)
        tokens.append(len(ids))
        started = time.perf_counter()
        decoded = codec.decode(ids)
        decode_seconds += time.perf_counter() - started
        audio_seconds += decoded.shape[0] / rate
        tempo_ok, mode_ok = judge_correct(decoded, spec, rate)
        hits["decoded_tempo"] += tempo_ok
        hits["decoded_mode"] += mode_ok
        hits["decoded_both"] += tempo_ok and mode_ok
    result = {name: count / len(specs) for name, count in hits.items()}
    result.update(
        clips=len(specs),
        tokens_mean=float(np.mean(tokens)),
        tokens_max=int(np.max(tokens)),
        decode_rtf=decode_seconds / audio_seconds,
    )
    return result
