"""Fit the mel-RVQ speech codec: residual k-means over the log-mel frames of synthesized utterances.

Each utterance is analysed whole (with ``level1_mean_norm`` its level-1 input depends on the utterance's mean), then
at most ``max_frames`` frames are drawn at random and ``fit_speech_codebooks`` runs the residual k-means
(``training.fitting``) on them.
Cost: about 150 s for 120 k frames, 8 levels x 1024 codes, 12 iterations on one thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from assistant.models.embedded.speech import MelCodecConfig, MelRVQCodec
from training.fitting import fit_residual_codebooks

log = logging.getLogger(__name__)


@torch.no_grad()
def fit_speech_codebooks(
    codec: MelRVQCodec,
    frames: torch.Tensor,
    iters: int = 12,
    seed: int = 0,
    level1_frames: torch.Tensor | None = None,
    progress: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """Residual k-means on log-mel frames ``[N, M]``; replaces ``codec``'s codebooks. Returns per-level residual RMSE.

    ``level1_frames [N, M]`` are the level-1 inputs of the same frames (``codec.level1_input`` of each utterance);
    required with ``level1_mean_norm``, where level 1 is fitted on them and levels 2..n_q on
    ``frames - level-1 codeword``. Needs N >= codebook_size. ``progress`` receives one line per level.
    """
    cfg = codec.config
    if frames.dim() != 2 or frames.shape[1] != cfg.n_mels:
        raise ValueError(f"expected frames [N, {cfg.n_mels}], got {tuple(frames.shape)}")
    if cfg.level1_mean_norm and level1_frames is None:
        raise ValueError("level1_mean_norm codecs need level1_frames (level1_input of each utterance)")
    books, errors = fit_residual_codebooks(
        frames, cfg.codebook_size, cfg.n_q, iters=iters, seed=seed, level1_frames=level1_frames, progress=progress
    )
    codec.codebooks.copy_(books)
    return errors


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

    fit_speech_codebooks(codec, frames, iters=iters, seed=seed, level1_frames=level1, progress=progress)
    codec.eval()
    return codec
