"""MaskGIT-style unmasking of the acoustic levels (SoundStorm / AnyGPT schedule) and the chunked streaming decoder.

Schedule (AnyGPT ``generate(steps=3, greedy=True, topk_pres=0.7)``):
- Level 2: ``level2_steps + 1`` passes. Before pass i (i = 0..steps) the number of masked new tokens is
  ``n_i = floor(T * cos(i / steps * pi / 2))``, at least 1, with n_0 = T; for steps=3: 100%, 86.6%, 50%, then one
  token. Each pass fills every masked token: top-k filtering keeps the ``ceil((1 - topk_filter_thres) * K)`` best
  logits (AnyGPT: 308 of 1024), then Gumbel-max sampling with temperature ``i / steps`` (0 = argmax at pass 0);
  the final pass is greedy. Among the tokens filled in this pass, the lowest-confidence ones (softmax probability
  of the chosen code) are re-masked to leave n_{i+1} masked. Tokens unmasked earlier are never re-masked.
- Levels 3..n_q: one greedy pass each over the whole level.
Higher levels stay masked while a lower level is decoded. Total model calls: (steps + 1) + (n_q - 2).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from assistant.models.acoustic_decoder import AcousticDecoder
from assistant.models.speech_codec import SpeechCodec


@dataclass(frozen=True)
class UnmaskSchedule:
    """How many passes, how much is masked when, and how tokens are picked.

    level2_steps: MaskGIT sampling steps on level 2 (one more, greedy, pass follows).
    topk_filter_thres: fraction of the logits dropped before sampling (keeps ceil((1 - thres) * K)).
    temperature: Gumbel temperature scale; pass i uses ``temperature * i / level2_steps``.
    greedy_final: the final level-2 pass uses argmax.
    """

    level2_steps: int = 3
    topk_filter_thres: float = 0.7
    temperature: float = 1.0
    greedy_final: bool = True

    def __post_init__(self) -> None:
        if self.level2_steps < 1:
            raise ValueError(f"level2_steps must be >= 1, got {self.level2_steps}")
        if not 0.0 <= self.topk_filter_thres < 1.0:
            raise ValueError("topk_filter_thres must be in [0, 1)")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")

    @staticmethod
    def mask_fraction(t: float) -> float:
        """Cosine schedule: fraction of tokens masked at time t in [0, 1]."""
        return math.cos(t * math.pi / 2.0)

    def masked_counts(self, num_tokens: int) -> list[int]:
        """Masked new tokens before each level-2 pass (length level2_steps + 1)."""
        counts = []
        for i in range(self.level2_steps + 1):
            n = num_tokens if i == 0 else math.floor(num_tokens * self.mask_fraction(i / self.level2_steps))
            counts.append(min(num_tokens, max(1, n)) if num_tokens else 0)
        for i in range(1, len(counts)):  # never more masked than before
            counts[i] = min(counts[i], counts[i - 1])
        return counts

    def pass_temperature(self, i: int) -> float:
        if self.greedy_final and i == self.level2_steps:
            return 0.0
        return self.temperature * i / self.level2_steps

    def forward_passes(self, n_q: int) -> int:
        """Model calls for one fill: (steps + 1) on level 2 plus one per level 3..n_q."""
        return (self.level2_steps + 1) + max(0, n_q - 2)

    def topk(self, codebook_size: int) -> int:
        return max(1, math.ceil((1.0 - self.topk_filter_thres) * codebook_size))


def _sample(logits: Tensor, k: int, temperature: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """logits ``[N, K]`` -> (codes ``[N]``, confidence ``[N]`` = softmax prob of the chosen code)."""
    probs = logits.float().softmax(dim=-1)  # [N, K]
    if temperature <= 0.0:
        codes = logits.argmax(dim=-1)
    else:
        top_values, top_index = logits.float().topk(k, dim=-1)  # [N, k]
        uniform = torch.rand(top_values.shape, generator=generator, device=logits.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0)).clamp(min=1e-20))
        choice = (top_values / temperature + gumbel).argmax(dim=-1, keepdim=True)  # [N, 1]
        codes = top_index.gather(-1, choice).squeeze(-1)
    return codes, probs.gather(-1, codes[:, None]).squeeze(-1)


def _fixed_prefix(prompt: Tensor | None, context: Tensor | None, n_q: int) -> Tensor:
    parts = []
    for name, value in (("prompt", prompt), ("context", context)):
        if value is None:
            continue
        if value.dim() != 2 or value.shape[0] != n_q:
            raise ValueError(f"{name} must be [n_q={n_q}, frames], got {tuple(value.shape)}")
        parts.append(value.long())
    if not parts:
        return torch.zeros(n_q, 0, dtype=torch.long)
    return torch.cat(parts, dim=1)  # [n_q, P]


def _level_logits(model: AcousticDecoder, condition: Tensor, acoustic: Tensor, level: int, start: int) -> Tensor:
    """Logits ``[B, T - start, K]`` of one predicted level: through the model's ``level_logits`` (computes only that
    head; AcousticDecoder and SoundStorm have it) when available, else through the plain ``forward`` contract."""
    level_logits = getattr(model, "level_logits", None)
    if level_logits is not None:
        return level_logits(condition, acoustic, level, start)
    return model(condition, acoustic)[:, start:, level]


@torch.no_grad()
def fill_acoustic_levels(
    model: AcousticDecoder,
    semantic: Tensor,
    *,
    prompt: Tensor | None = None,
    context: Tensor | None = None,
    schedule: UnmaskSchedule | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Generate levels 2..n_q for ``semantic`` ``[T]`` -> codes ``[n_q, T]`` (row 0 = ``semantic``).

    ``prompt`` ``[n_q, Tp]`` (acoustic prompt) and ``context`` ``[n_q, Tc]`` (previous chunk) are prepended, in that
    order, as fixed frames on every level; only the T new frames are generated and returned.
    """
    schedule = schedule or UnmaskSchedule()
    cfg = model.config
    if semantic.dim() != 1:
        raise ValueError(f"semantic must be [T], got {tuple(semantic.shape)}")
    semantic = semantic.long()
    if semantic.numel() and (int(semantic.min()) < 0 or int(semantic.max()) >= cfg.codebook_size):
        raise ValueError(f"semantic codes must lie in [0, {cfg.codebook_size})")
    device = next(model.parameters()).device
    prefix = _fixed_prefix(prompt, context, cfg.n_q).to(device)  # [n_q, P]
    if prefix.numel() and int(prefix.max()) >= cfg.codebook_size:
        raise ValueError("prompt/context codes must be < codebook_size (no mask ids)")
    num_new, num_prefix = semantic.shape[0], prefix.shape[1]
    if num_new == 0:
        return torch.zeros(cfg.n_q, 0, dtype=torch.long)

    condition = torch.cat([prefix[0], semantic.to(device)])[None, :]  # [1, P + T]
    acoustic = torch.full((1, cfg.n_acoustic, num_prefix + num_new), cfg.mask_id, dtype=torch.long, device=device)
    acoustic[0, :, :num_prefix] = prefix[1:]  # [1, Q, P + T], new frames masked
    new = slice(num_prefix, num_prefix + num_new)
    k = schedule.topk(cfg.codebook_size)

    # Level 2: MaskGIT iterations with re-masking of the least confident new tokens.
    counts = schedule.masked_counts(num_new) + [0]
    level = acoustic[0, 0, new]  # [T] view into acoustic
    for i in range(schedule.level2_steps + 1):
        masked = level == cfg.mask_id  # [T]
        logits = _level_logits(model, condition, acoustic, 0, num_prefix)[0]  # [T, K]
        codes, confidence = _sample(logits[masked], k, schedule.pass_temperature(i), generator)
        positions = masked.nonzero().squeeze(-1)  # [n_masked]
        level[positions] = codes
        remask = counts[i + 1]
        if remask > 0:
            order = confidence.argsort()  # lowest confidence first
            level[positions[order[:remask]]] = cfg.mask_id

    # Levels 3..n_q: one greedy pass each.
    for q in range(1, cfg.n_acoustic):
        logits = _level_logits(model, condition, acoustic, q, num_prefix)[0]  # [T, K]
        acoustic[0, q, new] = logits.argmax(dim=-1)

    return torch.cat([semantic.to(device)[None, :], acoustic[0, :, new]], dim=0).cpu()  # [n_q, T]


def module_device(module) -> torch.device:
    """Where a module's weights live (CPU for anything that is not a module)."""
    if isinstance(module, torch.nn.Module):
        first = next(itertools.chain(module.parameters(), module.buffers()), None)
        if first is not None:
            return first.device
    return torch.device("cpu")


class AcousticFill(Protocol):
    """A decoding strategy: semantic ``[t]`` + optional prompt ``[n_q, Tp]`` and context ``[n_q, Tc]`` (fixed frames
    before the new ones) -> codes ``[n_q, t]`` on the CPU (row 0 = ``semantic``)."""

    def __call__(self, model, semantic: Tensor, prompt: Tensor | None, context: Tensor | None,
                 generator: torch.Generator | None = None) -> Tensor: ...


@dataclass(frozen=True)
class MaskGitFill:
    """``fill_acoustic_levels`` with ``schedule``: the default strategy."""

    schedule: UnmaskSchedule = UnmaskSchedule()

    def __call__(self, model, semantic: Tensor, prompt: Tensor | None, context: Tensor | None,
                 generator: torch.Generator | None = None) -> Tensor:
        return fill_acoustic_levels(model, semantic, prompt=prompt, context=context, schedule=self.schedule,
                                    generator=generator)


class ChunkedAcousticDecoder:
    """Streaming primitive: semantic chunk (+ previous codes as context) -> all-level codes and audio.

    Stateless: the caller passes the previous chunk's codes (``[n_q, Tc]``; only the last ``context_frames`` are
    used) so consecutive calls may run in different processes. The codec decodes context + chunk together and the
    context's samples are trimmed, so the spectral envelope is continuous across chunk joins.
    """

    def __init__(
        self,
        model: AcousticDecoder,
        codec: SpeechCodec,
        schedule: UnmaskSchedule | None = None,
        context_frames: int = 16,
        fill: AcousticFill | None = None,
    ) -> None:
        """``fill`` (default: ``MaskGitFill(schedule)``) decodes each chunk; ``schedule`` is ignored when it is given."""
        if model.config.n_q != codec.n_q or model.config.codebook_size != codec.codebook_size:
            raise ValueError(
                f"model (n_q={model.config.n_q}, K={model.config.codebook_size}) does not match codec "
                f"(n_q={codec.n_q}, K={codec.codebook_size})"
            )
        if context_frames < 0:
            raise ValueError("context_frames must be >= 0")
        self.model, self.codec = model, codec
        self.fill = fill or MaskGitFill(schedule or UnmaskSchedule())
        self.context_frames = context_frames
        self.hop = codec.sample_rate // codec.frame_rate
        # codes cross in on the CPU; a codec on a GPU (the AnyGPT family) decodes them there
        self._codec_device = module_device(codec)

    def _trim_context(self, context: Tensor | None) -> Tensor | None:
        if context is None or self.context_frames == 0 or context.shape[-1] == 0:
            return None
        return context[:, -self.context_frames :].long()

    @torch.no_grad()
    def decode_chunk(
        self,
        semantic_chunk: Tensor,
        context: Tensor | None = None,
        prompt: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """semantic ``[t]`` -> (codes ``[n_q, t]``, wave ``[t * hop]``)."""
        context = self._trim_context(context)
        codes = self.fill(self.model, semantic_chunk, prompt, context, generator)  # [n_q, t]
        num_context = 0 if context is None else context.shape[1]
        full = codes if context is None else torch.cat([context.cpu(), codes], dim=1)  # [n_q, Tc + t]
        wave = self.codec.decode(full.to(self._codec_device))[num_context * self.hop :]  # [t * hop]
        return codes, wave.float().cpu()

    @torch.no_grad()
    def decode_utterance(
        self,
        semantic: Tensor,
        prompt: Tensor | None = None,
        chunk_frames: int = 25,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Offline API over ``decode_chunk``: semantic ``[T]`` -> (codes ``[n_q, T]``, wave ``[T * hop]``)."""
        if chunk_frames < 1:
            raise ValueError("chunk_frames must be >= 1")
        all_codes, waves = [], []
        context: Tensor | None = None
        for start in range(0, semantic.shape[0], chunk_frames):
            codes, wave = self.decode_chunk(semantic[start : start + chunk_frames], context, prompt, generator)
            all_codes.append(codes)
            waves.append(wave)
            if self.context_frames > 0:
                joined = codes if context is None else torch.cat([context, codes], dim=1)
                context = joined[:, -self.context_frames :]
        if not all_codes:
            return torch.zeros(self.codec.n_q, 0, dtype=torch.long), torch.zeros(0)
        return torch.cat(all_codes, dim=1), torch.cat(waves)
