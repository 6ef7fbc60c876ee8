"""Fit the mel-RVQ speech codec: residual k-means over the log-mel frames of synthesized utterances.

Each utterance is analysed whole (with ``level1_mean_norm`` its level-1 input depends on the utterance's mean), then
at most ``max_frames`` frames are drawn at random and ``MelRVQCodec.fit_codebooks`` runs the k-means on them.
Cost: about 150 s for 120 k frames, 8 levels x 1024 codes, 12 iterations on one thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch

from assistant.models.speech_codec import MelCodecConfig, MelRVQCodec

log = logging.getLogger(__name__)


def codec_frames(codec: MelRVQCodec, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel frames of every wave and their level-1 inputs, concatenated: (``[N, M]``, ``[N, M]``)."""
    mels, level1 = [], []
    for wave in waves:
        log_mel = codec.log_mel(torch.as_tensor(np.asarray(wave, dtype=np.float32)))  # [F, M]
        mels.append(log_mel)
        level1.append(codec.level1_input(log_mel))
    if not mels:
        raise ValueError("fit_speech_codec needs at least one wave")
    return torch.cat(mels), torch.cat(level1)


def fit_speech_codec(
    waves: Sequence[np.ndarray],
    config: MelCodecConfig,
    *,
    seed: int,
    max_frames: int = 120_000,
    iters: int = 12,
) -> MelRVQCodec:
    """A codec built from ``config`` whose codebooks are fitted on ``waves`` (float32 16 kHz mono)."""
    if max_frames < config.codebook_size:
        raise ValueError(f"max_frames {max_frames} must be >= codebook_size {config.codebook_size}")
    started = time.monotonic()
    codec = MelRVQCodec(config)
    frames, level1 = codec_frames(codec, waves)  # [N, M] each
    total = frames.shape[0]
    if total > max_frames:
        keep = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:max_frames]
        frames, level1 = frames[keep], level1[keep]
    log.info(
        "speech codec: %d utterances, %d frames (%d used), %d levels x %d codes, level-1 mean norm %s",
        len(waves),
        total,
        frames.shape[0],
        config.n_q,
        config.codebook_size,
        config.level1_mean_norm,
    )

    def progress(line: str) -> None:
        log.info("speech codec %s (%.0f s)", line, time.monotonic() - started)

    codec.fit_codebooks(frames, iters=iters, seed=seed, level1_frames=level1, progress=progress)
    codec.eval()
    return codec
