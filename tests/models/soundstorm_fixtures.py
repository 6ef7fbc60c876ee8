"""Tiny SoundStorm models and random inputs, shared by the SoundStorm tests (torch and NumPy forwards)."""

from __future__ import annotations

import torch

from assistant.models.soundstorm import SoundStorm, SoundStormConfig


def tiny_soundstorm(seed: int = 0, **overrides) -> SoundStorm:
    return SoundStorm(SoundStormConfig.tiny(seed=seed, **overrides)).eval()


def soundstorm_inputs(
    cfg: SoundStormConfig, batch: int, length: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """semantic ``[B, T]`` and acoustic ``[B, n_q - 1, T]`` codes, mask ids among the acoustic ones."""
    gen = torch.Generator().manual_seed(seed)
    semantic = torch.randint(0, cfg.semantic_vocab, (batch, length), generator=gen)
    acoustic = torch.randint(0, cfg.codebook_size + 1, (batch, cfg.n_acoustic, length), generator=gen)
    return semantic, acoustic
