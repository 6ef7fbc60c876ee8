"""MaskGIT training of the acoustic decoder with voice prompts (SoundStorm recipe), its evaluation, and the voice bank.

The model is ``assistant.models.soundstorm.SoundStorm`` (the class both families use; the embedded family's
sizes are ``assistant/assets/embedded/acoustic.json``); the evaluation reads any ``AcousticModel``.

Training mirrors ``assistant.decoding.maskgit.fill_acoustic_levels`` exactly. One sequence is

    frames:     [ prompt (Tp) | context (Tc) | target (T) ]
    condition:  level 1 of every frame (the prompt's and context's own level 1, then the target's)
    acoustic:   prompt and context frames: every level given (fixed frames)
                target frames: levels < q given, level q partly masked, levels > q masked (mask id = K)

- prompt: a crop of *another* utterance of the target's voice (sometimes none), as the voice bank supplies at
  inference;
- context: the frames just before the target in the same utterance (sometimes none), as the streaming decoder
  passes the previous chunk;
- level q (codec level 2..n_q) is drawn per sequence. Level 2 is masked with the cosine schedule (a fraction
  ``cos(u * pi / 2)`` of the target frames, u ~ U(0, 1), at least one), because inference unmasks it over several
  passes; levels 3..n_q are fully masked, because inference fills each in one pass;
- the loss is the cross-entropy on the masked positions of level q only.

All sequences of a batch share (Tp, Tc, T) (the decoder has no padding mask); the lengths are drawn per batch.
Codes come in as arrays: nothing here depends on how they were made.

The budget is a number of optimiser steps (``max_steps``, the span of the cosine schedule) and early stopping on the
validation loss (``patience`` validation passes without improvement); the best validation weights are kept. Never
wall-clock time, so a run means the same on any machine.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assistant.decoding.maskgit import UnmaskSchedule, fill_acoustic_levels
from assistant.models.interfaces import DEFAULT_CONTEXT_FRAMES, AcousticModel
from assistant.models.soundstorm import LevelLinear, SoundStorm, SoundStormConfig
from assistant.models.voices import VoiceBank
from training.device import mixed_precision, training_device
from training.optim import EarlyStopping, adamw, clipped_step, warmup_cosine_lr

log = logging.getLogger(__name__)

IGNORE = -100
Utterance = tuple[np.ndarray, str]  # (codes [n_q, T], voice name)


@dataclass(frozen=True)
class AcousticTrainingConfig:
    """Optimisation and example sampling of ``train_acoustic_decoder``.

    max_steps: optimiser steps at most; the cosine decay spans them.
    patience: validation passes in a row without a lower validation loss before training stops early (0: never).
    batch_size: sequences per optimiser step. lr / min_lr / warmup_steps: AdamW, linear warm-up then cosine decay
    to ``min_lr`` at ``max_steps``.
    weight_decay, grad_clip: the usual.
    target_frames: (min, max) frames of the target crop (the engine decodes chunks of 10 then 25 frames; longer
    crops give more loss positions per prompt frame computed).
    prompt_frames: (min, max) frames of the prompt crop. prompt_probability: share of batches with a prompt.
    context_frames: (min, max) frames of left context. context_probability: share of batches with context.
    level2_probability: share of sequences trained on level 2 (the rest is uniform over levels 3..n_q); level 2
    is the hardest level and the one sampled over several passes.
    valid_fraction: share of each voice's utterances held out when no validation set is given.
    valid_batches: fixed batches in the validation pass. eval_every: optimiser steps between validation passes
    (and one after the last step).
    seed: data order, crops, masks and initialisation.
    device: where training runs (``cpu``, ``cuda``, ``cuda:N``); forward passes in bfloat16 autocast on CUDA. The
    returned model is on the CPU in float32 either way.
    """

    max_steps: int = 8000
    patience: int = 5
    batch_size: int = 16
    lr: float = 3e-3
    min_lr: float = 1e-4
    warmup_steps: int = 60
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    target_frames: tuple[int, int] = (20, 80)
    prompt_frames: tuple[int, int] = (50, 90)
    prompt_probability: float = 0.85
    context_frames: tuple[int, int] = (5, DEFAULT_CONTEXT_FRAMES)  # up to what inference sends
    context_probability: float = 0.6
    level2_probability: float = 0.5
    valid_fraction: float = 0.05
    valid_batches: int = 8
    eval_every: int = 200
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.lr <= 0 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("max_steps, lr, batch_size and eval_every must be positive")
        if self.patience < 0 or self.warmup_steps < 0:
            raise ValueError("patience and warmup_steps must be >= 0")
        for name in ("target_frames", "prompt_frames", "context_frames"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name} must be (min, max) with 1 <= min <= max, got {(low, high)}")
        for name in ("prompt_probability", "context_probability", "level2_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if not 0.0 < self.valid_fraction < 1.0 or self.valid_batches < 1:
            raise ValueError("valid_fraction must be in (0, 1) and valid_batches >= 1")


# ----- the model inputs (the layout of fill_acoustic_levels) ------------------------------------------------------
def masked_inputs(codes: Tensor, num_prefix: int, level: int, mask: Tensor, mask_id: int) -> tuple[Tensor, Tensor]:
    """What the decoder sees while it predicts ``level`` of the frames after the prefix.

    codes ``[n_q, P + T]`` (prefix = prompt and context frames, then the target); level: predicted-level index
    (0 = codec level 2); mask ``[T]`` bool: which target positions of that level are masked.
    Returns (condition ``[P + T]`` = level 1, acoustic ``[n_q - 1, P + T]``): prefix frames intact; target frames
    keep the levels below ``level``, ``level`` is masked where ``mask``, higher levels are all masked.
    """
    condition = codes[0].clone()  # [P + T]
    acoustic = codes[1:].clone()  # [Q, P + T]
    target = acoustic[:, num_prefix:]  # [Q, T] view
    target[level][mask] = mask_id
    target[level + 1 :] = mask_id
    return condition, acoustic


def level2_mask(num_frames: int, generator: torch.Generator) -> Tensor:
    """Cosine-schedule mask ``[T]`` bool: a fraction cos(u * pi / 2) of the frames, u ~ U(0, 1), at least one."""
    u = float(torch.rand((), generator=generator))
    count = min(num_frames, max(1, math.ceil(num_frames * UnmaskSchedule.mask_fraction(u))))
    mask = torch.zeros(num_frames, dtype=torch.bool)
    mask[torch.randperm(num_frames, generator=generator)[:count]] = True
    return mask


@dataclass
class AcousticBatch:
    """semantic ``[B, L]``, acoustic ``[B, Q, L]``, levels ``[B]``, targets ``[B, T]`` (IGNORE where not masked);
    the first ``num_prefix`` of the L = P + T frames are prompt and context (the last ``num_context`` of them)."""

    semantic: Tensor
    acoustic: Tensor
    levels: Tensor
    targets: Tensor
    num_prefix: int
    num_context: int

    def to(self, device: torch.device) -> AcousticBatch:
        """The same batch with its tensors on ``device``."""
        return replace(
            self,
            semantic=self.semantic.to(device),
            acoustic=self.acoustic.to(device),
            levels=self.levels.to(device),
            targets=self.targets.to(device),
        )


class ExampleSampler:
    """Draws training sequences (prompt | context | target crops) from utterances grouped by voice."""

    def __init__(
        self, utterances: Sequence[Utterance], n_q: int, mask_id: int, config: AcousticTrainingConfig, seed: int
    ) -> None:
        if not utterances:
            raise ValueError("no utterances")
        self.codes = [torch.as_tensor(np.asarray(c), dtype=torch.long) for c, _ in utterances]
        for codes in self.codes:
            if codes.dim() != 2 or codes.shape[0] != n_q:
                raise ValueError(f"utterance codes must be [n_q={n_q}, T], got {tuple(codes.shape)}")
            if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= mask_id):
                raise ValueError(f"codes must lie in [0, {mask_id})")
        self.voices = [voice for _, voice in utterances]
        self.by_voice: dict[str, list[int]] = {}
        for index, voice in enumerate(self.voices):
            self.by_voice.setdefault(voice, []).append(index)
        self.lengths = np.array([c.shape[1] for c in self.codes])
        self.n_q, self.mask_id, self.config = n_q, mask_id, config
        self.rng = random.Random(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def _crop(self, index: int, frames: int) -> Tensor:
        start = self.rng.randint(0, self.codes[index].shape[1] - frames)
        return self.codes[index][:, start : start + frames]

    def _prompt(self, voice: str, target: int, frames: int) -> Tensor:
        """A crop of another utterance of ``voice`` long enough; the target utterance itself if none is."""
        others = [i for i in self.by_voice[voice] if i != target and self.lengths[i] >= frames]
        source = self.rng.choice(others) if others else target
        if self.lengths[source] < frames:  # a short lone utterance: repeat it
            reps = math.ceil(frames / self.lengths[source])
            return self.codes[source].repeat(1, reps)[:, :frames]
        return self._crop(source, frames)

    def batch(self, batch_size: int) -> AcousticBatch:
        cfg = self.config
        longest = int(self.lengths.max())
        num_target = min(longest, self.rng.randint(*cfg.target_frames))
        num_context = self.rng.randint(*cfg.context_frames) if self.rng.random() < cfg.context_probability else 0
        num_context = min(num_context, longest - num_target)
        num_prompt = self.rng.randint(*cfg.prompt_frames) if self.rng.random() < cfg.prompt_probability else 0
        num_prefix = num_prompt + num_context
        candidates = np.flatnonzero(self.lengths >= num_target + num_context)
        semantic, acoustic, levels, targets = [], [], [], []
        for _ in range(batch_size):
            index = int(self.rng.choice(candidates))
            window = self._crop(index, num_context + num_target)  # [n_q, Tc + T]
            parts = [window] if not num_prompt else [self._prompt(self.voices[index], index, num_prompt), window]
            codes = torch.cat(parts, dim=1)  # [n_q, P + T]
            if self.n_q > 2 and self.rng.random() >= cfg.level2_probability:
                level = self.rng.randint(1, self.n_q - 2)
                mask = torch.ones(num_target, dtype=torch.bool)
            else:
                level = 0
                mask = level2_mask(num_target, self.generator)
            condition, masked = masked_inputs(codes, num_prefix, level, mask, self.mask_id)
            target = codes[level + 1, num_prefix:].clone()
            target[~mask] = IGNORE
            semantic.append(condition)
            acoustic.append(masked)
            levels.append(level)
            targets.append(target)
        return AcousticBatch(
            torch.stack(semantic),
            torch.stack(acoustic),
            torch.tensor(levels),
            torch.stack(targets),
            num_prefix,
            num_context,
        )


def masked_level_loss(model: SoundStorm, batch: AcousticBatch) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over the masked positions of each sequence's level; also returns the logits
    ``[B, T, K]`` (float32, whatever precision the forward pass ran in). ``batch`` on the model's device."""
    logits = model.level_logits(batch.semantic, batch.acoustic, batch.levels, start=batch.num_prefix)  # [B, T, K]
    logits = logits.float()
    loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)
    return loss, logits


@torch.no_grad()
def evaluate_batches(model: SoundStorm, batches: Sequence[AcousticBatch]) -> dict:
    """Teacher-forced validation: mean masked loss and per codec level token accuracy on the masked positions.

    Runs on the model's device (in bfloat16 autocast on CUDA); the batches may be anywhere."""
    was_training = model.training
    model.eval()
    n_q = model.config.n_q
    total_loss, total_tokens = 0.0, 0
    correct, counted = np.zeros(n_q + 1), np.zeros(n_q + 1)
    for batch in batches:
        batch = batch.to(model.device)
        with mixed_precision(model.device):
            loss, logits = masked_level_loss(model, batch)
        scored = batch.targets != IGNORE  # [B, T]
        tokens = int(scored.sum())
        total_loss += float(loss) * tokens
        total_tokens += tokens
        hits = (logits.argmax(-1) == batch.targets) & scored  # [B, T]
        for row, level in enumerate(batch.levels.tolist()):
            correct[level + 2] += int(hits[row].sum())
            counted[level + 2] += int(scored[row].sum())
    model.train(was_training)
    accuracy = {q: round(float(correct[q] / counted[q]), 4) for q in range(2, n_q + 1) if counted[q]}
    return {"loss": total_loss / max(1, total_tokens), "accuracy": accuracy}


def split_by_voice(
    utterances: Sequence[Utterance], valid_fraction: float, seed: int
) -> tuple[list[Utterance], list[Utterance]]:
    """Hold out ``valid_fraction`` of every voice's utterances (at least one where the voice has two or more)."""
    rng = random.Random(seed)
    by_voice: dict[str, list[int]] = {}
    for index, (_, voice) in enumerate(utterances):
        by_voice.setdefault(voice, []).append(index)
    held: set[int] = set()
    for indices in by_voice.values():
        if len(indices) >= 2:
            held.update(rng.sample(indices, max(1, round(len(indices) * valid_fraction))))
    train = [u for i, u in enumerate(utterances) if i not in held]
    valid = [u for i, u in enumerate(utterances) if i in held]
    return train, valid


def decayed_parameters(model: nn.Module) -> set[str]:
    """The parameters weight decay applies to: the weights of the linear maps, convolutions and per-level heads (not
    the embeddings, norms or biases)."""
    kinds = (nn.Linear, nn.Conv1d, LevelLinear)
    return {f"{prefix}.weight" for prefix, module in model.named_modules() if isinstance(module, kinds)}


def train_acoustic_decoder(
    utterances: Sequence[Utterance],
    model_config: SoundStormConfig,
    config: AcousticTrainingConfig = AcousticTrainingConfig(),
    valid: Sequence[Utterance] | None = None,
) -> tuple[SoundStorm, dict]:
    """Train a ``SoundStorm(model_config)`` from its seeded init on ``(codes [n_q, T], voice)`` pairs, for at most
    ``config.max_steps`` steps, stopping early after ``config.patience`` validation passes without improvement.

    Without ``valid``, a per-voice share of ``utterances`` is held out. Returns the model with the best validation
    loss (eval mode, on the CPU, float32) and a metrics dict: steps, best_step, best_valid_loss, valid_accuracy (per
    codec level, at the best step), seconds, frames_per_s, parameters, history (one record per validation pass),
    stopped_early, and the sizes of the two sets and the training config.
    """
    start = time.monotonic()
    device = training_device(config.device)
    if valid is None:
        train, valid = split_by_voice(utterances, config.valid_fraction, config.seed)
    else:
        train = list(utterances)
    if not train or not valid:
        raise ValueError("train and valid sets must not be empty")
    model = SoundStorm(model_config).to(device).train()
    cfg_q, mask_id = model_config.n_q, model_config.mask_id
    sampler = ExampleSampler(train, cfg_q, mask_id, config, seed=config.seed)
    valid_sampler = ExampleSampler(valid, cfg_q, mask_id, config, seed=config.seed + 1)
    valid_batches = [valid_sampler.batch(config.batch_size).to(device) for _ in range(config.valid_batches)]

    decayed = decayed_parameters(model)
    optimizer = adamw(model, lambda name, _: name in decayed, config.lr, config.weight_decay, (0.9, 0.98))
    stopper = EarlyStopping(config.patience)
    history: list[dict] = []
    best_state: dict[str, Tensor] | None = None
    best_accuracy: dict = {}
    running = torch.zeros((), device=device)  # smoothed training loss, kept on the device (no sync per step)
    step, frames_seen, stopped_early = 0, 0, False
    while step < config.max_steps:
        batch = sampler.batch(config.batch_size).to(device)
        with mixed_precision(device):
            loss, _ = masked_level_loss(model, batch)
        lr = warmup_cosine_lr(step, config.lr, config.min_lr, config.warmup_steps, config.max_steps)
        clipped_step(optimizer, model, loss, lr, config.grad_clip)
        step += 1
        frames_seen += batch.semantic.numel()
        running = loss.detach() if step == 1 else running.lerp(loss.detach(), 0.02)
        if step % config.eval_every and step < config.max_steps:
            continue
        result = evaluate_batches(model, valid_batches)
        record = {
            "step": step,
            "seconds": round(time.monotonic() - start, 1),
            "lr": round(lr, 6),
            "train_loss": round(float(running), 4),
            "valid_loss": round(result["loss"], 4),
            "valid_accuracy": result["accuracy"],
        }
        history.append(record)
        log.info("acoustic: %s", record)
        if stopper.update(step, result["loss"]):
            best_state = {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}
            best_accuracy = result["accuracy"]
        if stopper.should_stop:
            stopped_early = True
            log.info("acoustic: no better validation loss in %d passes; stopping at step %d", config.patience, step)
            break
    model = model.to("cpu", torch.float32)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    seconds = time.monotonic() - start
    return model, {
        "steps": step,
        "best_step": stopper.best_step,
        "best_valid_loss": round(stopper.best, 4),
        "valid_accuracy": best_accuracy,
        "seconds": round(seconds, 1),
        "frames_per_s": round(frames_seen / max(1e-9, seconds), 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "history": history,
        "stopped_early": stopped_early,
        "train_utterances": len(train),
        "valid_utterances": len(valid),
        "device": str(device),
        "config": asdict(config),
    }


# ----- inference as the engine runs it, and the measurements ------------------------------------------------------
def fill_like_engine(
    model: AcousticModel,
    semantic: np.ndarray,
    prompt: np.ndarray | None = None,
    *,
    schedule: UnmaskSchedule | None = None,
    first_chunk_frames: int = 10,
    chunk_frames: int = 25,
    context_frames: int = DEFAULT_CONTEXT_FRAMES,
    seed: int = 0,
) -> np.ndarray:
    """Levels 2..n_q for level-1 codes ``[T]`` chunk by chunk, as the engine does (a small first chunk, then the
    previous chunk's last ``context_frames`` frames as context, the same prompt every time) -> ``np.int64 [n_q, T]``.
    """
    generator = torch.Generator().manual_seed(seed)
    semantic_t = torch.as_tensor(np.asarray(semantic), dtype=torch.long)
    prompt_t = None if prompt is None else torch.as_tensor(np.asarray(prompt), dtype=torch.long)
    chunks, context, position = [], None, 0
    while position < semantic_t.shape[0]:
        size = first_chunk_frames if position == 0 else chunk_frames
        codes = fill_acoustic_levels(
            model,
            semantic_t[position : position + size],
            prompt=prompt_t,
            context=context,
            schedule=schedule,
            generator=generator,
        )  # [n_q, t]
        chunks.append(codes)
        context = codes[:, -context_frames:] if context_frames > 0 else None
        position += size
    if not chunks:
        return np.zeros((model.n_q, 0), dtype=np.int64)
    return torch.cat(chunks, dim=1).numpy().astype(np.int64)


def mean_codeword_baseline(codebooks: np.ndarray, semantic: np.ndarray) -> np.ndarray:
    """Log-mel ``[T, M]`` of level 1 plus the mean codeword of every other level (no acoustic decoder)."""
    return codebooks[0][semantic] + codebooks[1:].mean(axis=1).sum(axis=0)[None, :]


def evaluate_acoustic_decoder(
    model: AcousticModel,
    utterances: Sequence[Utterance],
    bank: VoiceBank,
    codebooks: np.ndarray,
    *,
    schedule: UnmaskSchedule | None = None,
    voice_means: Mapping[str, np.ndarray] | None = None,
    cross_voice_utterances: int = 2,
    seed: int = 0,
) -> dict:
    """What the acoustic decoder is worth on held-out utterances of known voices (engine-style chunked filling).

    codebooks ``[n_q, K, M]``: the codec's residual codebooks (log-mel = sum of the chosen codewords).
    - per-level token accuracy of the generated codes against the utterance's own codes (prompted with its voice);
    - log-mel RMSE of the generated codes against the original codes, and of the baseline "level 1 + mean codeword
      of levels 2..n_q";
    - voice selection: the level 1 of ``cross_voice_utterances`` utterances per voice is rendered with the prompt of
      every voice in the bank; the render's mean log-mel is classified to the nearest voice mean (``voice_means``,
      default: the mean over ``utterances`` of that voice); accuracy and confusion counts, and the accuracy of the
      same classifier on the original codes (``voice_selection_original``, its ceiling).
    """
    start = time.monotonic()
    n_q = model.n_q
    levels = np.arange(n_q)[:, None]

    def mel(codes: np.ndarray) -> np.ndarray:
        return codebooks[levels, codes].sum(axis=0)  # [T, M]

    hits, counts = np.zeros(n_q + 1), np.zeros(n_q + 1)
    decoded_sq, baseline_sq, frames = 0.0, 0.0, 0
    for index, (codes, voice) in enumerate(utterances):
        codes = np.asarray(codes, dtype=np.int64)
        filled = fill_like_engine(
            model, codes[0], bank.prompt(voice) if voice in bank else None, schedule=schedule, seed=seed + index
        )
        same = filled == codes  # [n_q, T]
        hits[2:] += same[1:].sum(axis=1)
        counts[2:] += codes.shape[1]
        reference = mel(codes)
        decoded_sq += float(((mel(filled) - reference) ** 2).sum())
        baseline_sq += float(((mean_codeword_baseline(codebooks, codes[0]) - reference) ** 2).sum())
        frames += reference.size
    report: dict = {
        "utterances": len(utterances),
        "token_accuracy": {q: round(float(hits[q] / counts[q]), 4) for q in range(2, n_q + 1) if counts[q]},
        "mel_rmse_decoded": round(math.sqrt(decoded_sq / max(1, frames)), 4),
        "mel_rmse_mean_codeword": round(math.sqrt(baseline_sq / max(1, frames)), 4),
    }

    if voice_means is None:
        sums: dict[str, list[np.ndarray]] = {}
        for codes, voice in utterances:
            sums.setdefault(voice, []).append(mel(np.asarray(codes, dtype=np.int64)))
        voice_means = {voice: np.concatenate(m).mean(axis=0) for voice, m in sums.items()}
    names = [name for name in bank.names if name in voice_means]
    means = np.stack([voice_means[name] for name in names])  # [V, M]
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)  # [prompted, classified]
    taken: dict[str, int] = {}
    for index, (codes, voice) in enumerate(utterances):
        if taken.get(voice, 0) >= cross_voice_utterances:
            continue
        taken[voice] = taken.get(voice, 0) + 1
        for row, prompted in enumerate(names):
            filled = fill_like_engine(
                model, np.asarray(codes)[0], bank.prompt(prompted), schedule=schedule, seed=seed + index
            )
            render = mel(filled).mean(axis=0)  # [M]
            confusion[row, int(np.argmin(((means - render[None, :]) ** 2).sum(axis=1)))] += 1
    report["voice_selection_accuracy"] = round(float(np.trace(confusion) / max(1, confusion.sum())), 4)
    # The same classifier on the original codes of those utterances: the ceiling of voice selection.
    own = [
        names.index(voice) == int(np.argmin(((means - mel(np.asarray(codes)).mean(axis=0)[None]) ** 2).sum(1)))
        for codes, voice in utterances
        if voice in names
    ]
    report["voice_selection_original"] = round(float(np.mean(own)), 4) if own else None
    report["voice_confusion"] = {"voices": names, "counts": confusion.tolist()}
    report["seconds"] = round(time.monotonic() - start, 1)
    return report


def time_fill(
    model: AcousticModel,
    prompt_frames: int,
    schedule: UnmaskSchedule | None = None,
    seconds: float = 4.0,
    frame_rate: int = 50,
    seed: int = 0,
) -> float:
    """Wall-clock seconds of engine-style filling per second of audio (random codes; one warm-up second first)."""
    generator = np.random.default_rng(seed)
    codes = model.codebook_size
    prompt = generator.integers(0, codes, (model.n_q, prompt_frames)) if prompt_frames else None
    fill_like_engine(model, generator.integers(0, codes, frame_rate), prompt, schedule=schedule)
    semantic = generator.integers(0, codes, int(seconds * frame_rate))
    began = time.perf_counter()
    fill_like_engine(model, semantic, prompt, schedule=schedule)
    return (time.perf_counter() - began) / seconds


# ----- the voice bank ---------------------------------------------------------------------------------------------
def silence_codes(utterances: Sequence[np.ndarray], edge_frames: int = 2, min_share: float = 0.02) -> set[int]:
    """Level-1 codes that stand for silence: those frequent at utterance edges (synthesized utterances start and
    end in silence), each at least ``min_share`` of the edge frames."""
    edges = [np.asarray(c)[0, :edge_frames] for c in utterances] + [np.asarray(c)[0, -edge_frames:] for c in utterances]
    if not edges:
        return set()
    values, counts = np.unique(np.concatenate(edges), return_counts=True)
    return {int(v) for v, n in zip(values, counts, strict=True) if n >= min_share * counts.sum()}


def pick_prompt(
    utterances: Sequence[np.ndarray], prompt_frames: int, silent: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """The ``prompt_frames`` window with the fewest silent frames over all utterances (ties: the earliest), after
    trimming each utterance's leading and trailing silence; shorter utterances give their whole trimmed speech."""
    best, best_key = None, None
    for codes in utterances:
        codes = np.asarray(codes, dtype=np.int64)
        quiet = silent(codes)  # [T] bool
        voiced = np.flatnonzero(~quiet)
        if voiced.size == 0:
            continue
        speech = codes[:, voiced[0] : voiced[-1] + 1]
        quiet = quiet[voiced[0] : voiced[-1] + 1]
        width = min(prompt_frames, speech.shape[1])
        window_quiet = np.convolve(quiet.astype(np.int64), np.ones(width, dtype=np.int64), mode="valid")
        offset = int(np.argmin(window_quiet))
        key = (-width, int(window_quiet[offset]))  # longest first, then the fewest silent frames
        if best_key is None or key < best_key:
            best, best_key = speech[:, offset : offset + width], key
    if best is None:
        raise ValueError("every utterance is silent; cannot pick a prompt")
    return best


def build_voice_bank(
    utterances_by_voice: Mapping[str, Sequence[np.ndarray]],
    n_q: int,
    prompt_frames: int,
    default: str,
    *,
    codebook_size: int = 1024,
    silent: Callable[[np.ndarray], np.ndarray] | None = None,
) -> VoiceBank:
    """One prompt of about ``prompt_frames`` frames of speech per voice (75-100 frames = 1.5-2 s at 50 Hz).

    ``silent(codes [n_q, T]) -> bool [T]`` marks silent frames; by default the level-1 codes that are frequent at the
    edges of all the utterances count as silence (see ``silence_codes``).
    """
    if prompt_frames < 1:
        raise ValueError("prompt_frames must be >= 1")
    if silent is None:
        quiet_codes = np.array(sorted(silence_codes([c for group in utterances_by_voice.values() for c in group])))

        def silent(codes: np.ndarray) -> np.ndarray:
            return np.isin(codes[0], quiet_codes)

    prompts = {}
    for voice, group in utterances_by_voice.items():
        for codes in group:
            if np.asarray(codes).ndim != 2 or np.asarray(codes).shape[0] != n_q:
                raise ValueError(f"voice {voice!r}: codes must be [n_q={n_q}, T], got {np.asarray(codes).shape}")
        prompts[voice] = pick_prompt(group, prompt_frames, silent)
    return VoiceBank(prompts, default, codebook_size)
