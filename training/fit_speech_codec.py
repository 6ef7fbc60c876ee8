"""Fit the mel-RVQ speech codec: residual k-means over the log-mel frames of synthesized utterances, and (for a
content level 1) train the content encoder on phoneme-aligned speech first.

Each utterance is analysed whole (with ``level1_mean_norm`` its level-1 input depends on the utterance's mean), then
at most ``max_frames`` frames are drawn at random and ``fit_speech_codebooks`` runs the residual k-means
(``training.fitting``) on them.
Cost: about 150 s for 120 k frames, 8 levels x 1024 codes, 12 iterations on one thread.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from assistant.models.embedded.speech import ContentEncoder, MelCodecConfig, MelRVQCodec
from training.device import mixed_precision, training_device
from training.espeak import AlignedSpeech, phoneme_inventory
from training.fitting import fit_residual_codebooks
from training.optim import EarlyStopping, adamw, clipped_step, warmup_cosine_lr

IGNORE = -100
Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # wave -> same-length, time-aligned wave

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


# ----- the content level 1 -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContentFitSettings:
    """How ``fit_content_codec`` trains the content encoder and fits the codebooks.

    max_steps: optimiser steps at most; validation every ``eval_every`` steps, stopping after ``patience`` passes
    without a better validation loss (the best weights are kept). batch_utterances: utterances per step (padded).
    lr / min_lr / warmup_steps / weight_decay / grad_clip: AdamW with warm-up and cosine decay over ``max_steps``.
    dropout: on the encoder's residual branches while training.
    augmented_copies: augmented versions of every training utterance besides the clean one (``augment``).
    residual_frames / residual_iters: frames and Lloyd iterations of the k-means of levels 2..n_q.
    device: where the encoder trains (``training.device``); the codec comes back on the CPU.
    """

    max_steps: int = 3000
    batch_utterances: int = 24
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    dropout: float = 0.1
    eval_every: int = 250
    patience: int = 4
    augmented_copies: int = 1
    residual_frames: int = 120_000
    residual_iters: int = 12
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_utterances < 1 or self.eval_every < 1 or self.lr <= 0:
            raise ValueError("max_steps, batch_utterances, eval_every and lr must be positive")
        if self.augmented_copies < 0 or self.residual_frames < 1 or self.residual_iters < 1:
            raise ValueError("augmented_copies >= 0, residual_frames >= 1 and residual_iters >= 1 are required")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")


@dataclass
class _Example:
    features: torch.Tensor  # [F, M] the encoder's input (codec.level1_input)
    labels: torch.Tensor  # [F] phoneme class of every frame


def _examples(
    codec: MelRVQCodec,
    utterances: Sequence[AlignedSpeech],
    inventory: dict[str, int],
    copies: int,
    augment: Augment | None,
    rng: np.random.Generator,
) -> list[_Example]:
    out = []
    for utterance in utterances:
        labels = torch.from_numpy(utterance.frame_labels(codec.config.frame_rate, inventory))
        waves = [utterance.wave] + ([augment(utterance.wave, rng) for _ in range(copies)] if augment else [])
        for wave in waves:
            features = codec.level1_input(codec.log_mel(torch.from_numpy(np.asarray(wave, dtype=np.float32))))
            out.append(_Example(features, labels))
    return out


def _batch(examples: Sequence[_Example], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features ``[B, F, M]`` zero-padded, labels ``[B, F]`` with IGNORE past each end, lengths ``[B]``)."""
    lengths = torch.tensor([e.labels.shape[0] for e in examples])
    width = int(lengths.max())
    features = torch.zeros(len(examples), width, examples[0].features.shape[1])
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, example in enumerate(examples):
        features[row, : example.labels.shape[0]] = example.features
        labels[row, : example.labels.shape[0]] = example.labels
    return features.to(device), labels.to(device), lengths.to(device)


def _validate(encoder: ContentEncoder, batches: Sequence[tuple], device: torch.device) -> tuple[float, float]:
    """(mean frame cross-entropy, frame accuracy) over fixed validation batches."""
    encoder.eval()
    loss_sum, correct, frames = 0.0, 0, 0
    with torch.no_grad(), mixed_precision(device):
        for features, labels, lengths in batches:
            logits = encoder(features, lengths).float()
            valid = labels != IGNORE
            loss_sum += float(torch.nn.functional.cross_entropy(logits[valid], labels[valid], reduction="sum"))
            correct += int((logits.argmax(-1)[valid] == labels[valid]).sum())
            frames += int(valid.sum())
    encoder.train()
    return loss_sum / max(1, frames), correct / max(1, frames)


def train_content_encoder(
    codec: MelRVQCodec, train: Sequence[_Example], valid: Sequence[_Example], settings: ContentFitSettings, seed: int
) -> dict:
    """Frame-level phoneme classification (cross-entropy) of ``codec.content_encoder``, in place."""
    encoder = codec.content_encoder
    if encoder is None:
        raise ValueError("the codec has no content encoder (content_classes is 0)")
    device = training_device(settings.device)
    encoder.to(device).train()
    encoder.dropout = settings.dropout
    optimizer = adamw(encoder, lambda name, p: p.dim() > 1, settings.lr, settings.weight_decay, (0.9, 0.98))
    stopping = EarlyStopping(settings.patience)
    gen = torch.Generator().manual_seed(seed)
    valid_batches = [
        _batch(valid[i : i + settings.batch_utterances], device)
        for i in range(0, len(valid), settings.batch_utterances)
    ]
    best_state = copy.deepcopy(encoder.state_dict())
    history, started, step, frames_seen = [], time.monotonic(), 0, 0
    while step < settings.max_steps and not stopping.should_stop:
        picks = torch.randint(len(train), (settings.batch_utterances,), generator=gen).tolist()
        features, labels, lengths = _batch([train[i] for i in picks], device)
        with mixed_precision(device):
            logits = encoder(features, lengths)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        lr = warmup_cosine_lr(step, settings.lr, settings.min_lr, settings.warmup_steps, settings.max_steps)
        clipped_step(optimizer, encoder, loss, lr, settings.grad_clip)
        step += 1
        frames_seen += int(lengths.sum())
        if step % settings.eval_every == 0 or step == settings.max_steps:
            valid_loss, valid_accuracy = _validate(encoder, valid_batches, device)
            if stopping.update(step, valid_loss):
                best_state = copy.deepcopy(encoder.state_dict())
            history.append(
                {"step": step, "train_loss": round(float(loss.detach()), 4), "valid_loss": round(valid_loss, 4),
                 "valid_accuracy": round(valid_accuracy, 4), "seconds": round(time.monotonic() - started, 1)}
            )  # fmt: skip
            log.info("content encoder %s", history[-1])
    encoder.load_state_dict(best_state)
    encoder.dropout = 0.0
    encoder.to("cpu").eval()
    _, best_accuracy = _validate(encoder, [tuple(t.cpu() for t in b) for b in valid_batches], torch.device("cpu"))
    seconds = time.monotonic() - started
    return {
        "steps": step,
        "best_step": stopping.best_step,
        "best_valid_loss": round(stopping.best, 4),
        "valid_frame_accuracy": round(best_accuracy, 4),
        "stopped_early": stopping.should_stop,
        "seconds": round(seconds, 1),
        "frames_per_s": round(frames_seen / max(seconds, 1e-9), 1),
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "history": history,
    }


@torch.no_grad()
def fit_content_codebooks(
    codec: MelRVQCodec, waves: Sequence[np.ndarray], settings: ContentFitSettings, seed: int
) -> dict:
    """With the encoder trained: level-1 codeword of a class = mean log-mel of the frames the encoder puts in it (a
    class it never picks, and every code past ``content_classes``: the mean of all frames); levels 2..n_q = residual
    k-means of what is left. Replaces ``codec.codebooks``; returns the per-level residual RMSE."""
    cfg = codec.config
    mels, classes = [], []
    for wave in waves:
        log_mel = codec.log_mel(torch.as_tensor(np.asarray(wave, dtype=np.float32)))  # [F, M]
        mels.append(log_mel)
        classes.append(codec.content_classes(codec.level1_input(log_mel)))
    frames, content = torch.cat(mels), torch.cat(classes)  # [N, M], [N]
    sums = torch.zeros(cfg.codebook_size, cfg.n_mels).index_add_(0, content, frames)
    counts = torch.bincount(content, minlength=cfg.codebook_size).float()[:, None]  # [K, 1]
    level1 = torch.where(counts > 0, sums / counts.clamp(min=1), frames.mean(dim=0, keepdim=True))  # [K, M]
    residual = frames - level1[content]  # [N, M]
    if residual.shape[0] > settings.residual_frames:
        keep = torch.randperm(residual.shape[0], generator=torch.Generator().manual_seed(seed))
        residual = residual[keep[: settings.residual_frames]]
    books, errors = fit_residual_codebooks(
        residual, cfg.codebook_size, cfg.n_q - 1, iters=settings.residual_iters, seed=seed,
        progress=lambda line: log.info("speech codec residual %s", line),
    )  # fmt: skip
    codec.codebooks.copy_(torch.cat([level1[None], books]))
    return {
        "classes_used": int((counts[: cfg.content_classes] > 0).sum()),
        "level1_rmse": round(float(residual.pow(2).mean().sqrt()), 4),
        "level_rmse": [round(float(e), 4) for e in errors],
    }


def fit_content_codec(
    train: Sequence[AlignedSpeech],
    valid: Sequence[AlignedSpeech],
    config: MelCodecConfig,
    *,
    seed: int,
    settings: ContentFitSettings = ContentFitSettings(),
    augment: Augment | None = None,
) -> tuple[MelRVQCodec, dict]:
    """A codec with a content level 1: the phoneme inventory of ``train``, the encoder trained on ``train`` (and
    ``settings.augmented_copies`` augmented copies) against ``valid`` (other voices), then the codebooks."""
    if not config.content_classes:
        raise ValueError("fit_content_codec needs a config with content_classes > 0")
    inventory = phoneme_inventory(train)
    if len(inventory) + 1 > config.content_classes:
        raise ValueError(f"{len(inventory)} phonemes + silence do not fit content_classes={config.content_classes}")
    started = time.monotonic()
    torch.manual_seed(seed)
    codec = MelRVQCodec(config)
    rng = np.random.default_rng(seed)
    train_examples = _examples(codec, train, inventory, settings.augmented_copies, augment, rng)
    valid_examples = _examples(codec, valid, inventory, settings.augmented_copies, augment, rng)
    log.info(
        "content encoder: %d phonemes, %d train / %d valid examples (%d frames)",
        len(inventory), len(train_examples), len(valid_examples), sum(e.labels.shape[0] for e in train_examples),
    )  # fmt: skip
    encoder_metrics = train_content_encoder(codec, train_examples, valid_examples, settings, seed)
    codebook_metrics = fit_content_codebooks(codec, [u.wave for u in train], settings, seed)
    codec.eval()
    metrics = {
        "phonemes": inventory,
        "encoder": encoder_metrics,
        "codebooks": codebook_metrics,
        "seconds": round(time.monotonic() - started, 1),
    }
    return codec, metrics
