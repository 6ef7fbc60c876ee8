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

Batches: ``fill_acoustic_levels_batch`` fills B sequences of one shape in the same model calls, each row drawing its
noise from its own generator, so a row gets the codes it would get alone (``fill_acoustic_levels`` is the batch of
one). ``ChunkedAcousticDecoder.decode_chunks`` groups chunks of several sessions by shape and runs each group as one
fill call and one codec decode.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from assistant.models.interfaces import DEFAULT_CONTEXT_FRAMES, AcousticModel, SpeechCodec


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


Generators = Sequence[torch.Generator | None]


def row_uniform(shape: tuple[int, ...], generators: Generators, device: torch.device) -> Tensor:
    """Uniform noise ``shape = [B, ...]`` in [0, 1), row b drawn from ``generators[b]`` exactly as a batch of one
    draws it (so a row's noise does not depend on the other rows). All-None generators: one draw from torch's global
    RNG."""
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {shape[0]}")
    if all(g is None for g in generators):
        return torch.rand(shape, device=device)
    return torch.stack([torch.rand(shape[1:], generator=g, device=device) for g in generators])


def _sample(logits: Tensor, k: int, temperature: float, generators: Generators) -> tuple[Tensor, Tensor]:
    """logits ``[B, N, K]`` -> (codes ``[B, N]``, confidence ``[B, N]`` = softmax prob of the chosen code)."""
    probs = logits.float().softmax(dim=-1)  # [B, N, K]
    if temperature <= 0.0:
        codes = logits.argmax(dim=-1)
    else:
        top_values, top_index = logits.float().topk(k, dim=-1)  # [B, N, k]
        uniform = row_uniform(tuple(top_values.shape), generators, logits.device)
        gumbel = -torch.log((-torch.log(uniform.clamp(1e-20, 1.0))).clamp(min=1e-20))  # finite: -log(u) > 0
        choice = (top_values / temperature + gumbel).argmax(dim=-1, keepdim=True)  # [B, N, 1]
        codes = top_index.gather(-1, choice).squeeze(-1)
    return codes, probs.gather(-1, codes[..., None]).squeeze(-1)


def _fixed_prefix(prompt: Tensor | None, context: Tensor | None, n_q: int, batch: int) -> Tensor:
    """prompt ``[B, n_q, Tp]`` and context ``[B, n_q, Tc]`` (either None) -> ``[B, n_q, Tp + Tc]``."""
    parts = []
    for name, value in (("prompt", prompt), ("context", context)):
        if value is None:
            continue
        if value.dim() != 3 or value.shape[:2] != (batch, n_q):
            raise ValueError(f"{name} must be [B={batch}, n_q={n_q}, frames], got {tuple(value.shape)}")
        parts.append(value.long())
    if not parts:
        return torch.zeros(batch, n_q, 0, dtype=torch.long)
    return torch.cat(parts, dim=2)  # [B, n_q, P]


@torch.no_grad()
def fill_acoustic_levels_batch(
    model: AcousticModel,
    semantic: Tensor,
    *,
    prompt: Tensor | None = None,
    context: Tensor | None = None,
    schedule: UnmaskSchedule | None = None,
    generators: Generators | None = None,
) -> Tensor:
    """Generate levels 2..n_q for B sequences of one shape: semantic ``[B, T]`` -> codes ``[B, n_q, T]`` on the CPU.

    ``prompt`` ``[B, n_q, Tp]`` and ``context`` ``[B, n_q, Tc]`` are prepended, in that order, as fixed frames (every
    row has the same Tp and Tc; their codes may differ). ``generators`` (one per row, None entries allowed) give each
    row its own noise, drawn as a batch of one draws it, so row b equals ``fill_acoustic_levels`` of row b alone with
    ``generators[b]`` (up to float rounding of the batched model call). Each row keeps its own re-masking order.
    """
    schedule = schedule or UnmaskSchedule()
    n_q, codebook_size, mask_id = model.n_q, model.codebook_size, model.mask_id
    if semantic.dim() != 2:
        raise ValueError(f"semantic must be [B, T], got {tuple(semantic.shape)}")
    batch, num_new = semantic.shape
    generators = [None] * batch if generators is None else list(generators)
    if len(generators) != batch:
        raise ValueError(f"{len(generators)} generators for a batch of {batch}")
    semantic = semantic.long()
    if semantic.numel() and (int(semantic.min()) < 0 or int(semantic.max()) >= codebook_size):
        raise ValueError(f"semantic codes must lie in [0, {codebook_size})")
    device = model.device
    prefix = _fixed_prefix(prompt, context, n_q, batch).to(device)  # [B, n_q, P]
    if prefix.numel() and (int(prefix.min()) < 0 or int(prefix.max()) >= codebook_size):
        raise ValueError("prompt/context codes must lie in [0, codebook_size) (no mask ids)")
    num_prefix = prefix.shape[2]
    if num_new == 0:
        return torch.zeros(batch, n_q, 0, dtype=torch.long)

    semantic = semantic.to(device)
    condition = torch.cat([prefix[:, 0], semantic], dim=1)  # [B, P + T]
    acoustic = torch.full((batch, n_q - 1, num_prefix + num_new), mask_id, dtype=torch.long, device=device)
    acoustic[:, :, :num_prefix] = prefix[:, 1:]  # [B, Q, P + T], new frames masked
    new = slice(num_prefix, num_prefix + num_new)
    k = schedule.topk(codebook_size)

    # Level 2: MaskGIT iterations with re-masking of the least confident new tokens. Every row has the same number of
    # masked tokens before each pass (all T, then the schedule's counts), so they stack as [B, n_masked].
    counts = schedule.masked_counts(num_new) + [0]
    level = acoustic[:, 0, new]  # [B, T] view into acoustic
    for i in range(schedule.level2_steps + 1):
        positions = (level == mask_id).nonzero()[:, 1].view(batch, -1)  # [B, n_masked], ascending per row
        logits = model.level_logits(condition, acoustic, 0, num_prefix)  # [B, T, K]
        picked = logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))  # [B, n_masked, K]
        codes, confidence = _sample(picked, k, schedule.pass_temperature(i), generators)  # [B, n_masked] each
        level.scatter_(1, positions, codes)
        remask = counts[i + 1]
        if remask > 0:
            order = confidence.argsort(dim=-1, stable=True)[:, :remask]  # lowest confidence first
            level.scatter_(1, positions.gather(1, order), mask_id)

    # Levels 3..n_q: one greedy pass each.
    for q in range(1, n_q - 1):
        logits = model.level_logits(condition, acoustic, q, num_prefix)  # [B, T, K]
        acoustic[:, q, new] = logits.argmax(dim=-1)

    return torch.cat([semantic[:, None, :], acoustic[:, :, new]], dim=1).cpu()  # [B, n_q, T]


class AcousticFill(Protocol):
    """A decoding strategy over an ``AcousticModel``: semantic ``[t]`` + optional prompt ``[n_q, Tp]`` and context
    ``[n_q, Tc]`` (fixed frames before the new ones) -> codes ``[n_q, t]`` on the CPU (row 0 = ``semantic``).

    ``batch`` does the same for B rows of one shape (semantic ``[B, t]``, prompt ``[B, n_q, Tp]`` | None, context
    ``[B, n_q, Tc]`` | None, one generator per row) -> codes ``[B, n_q, t]``, row b equal to the strategy's call on
    row b alone: ``ChunkedAcousticDecoder.decode_chunks`` runs a group of equal-shape chunks as one call. A strategy
    that subclasses this class writes only ``batch``: its call is the batch of one."""

    @abstractmethod
    def batch(
        self,
        model: AcousticModel,
        semantic: Tensor,
        prompt: Tensor | None,
        context: Tensor | None,
        generators: Generators,
    ) -> Tensor: ...

    def __call__(
        self,
        model: AcousticModel,
        semantic: Tensor,
        prompt: Tensor | None,
        context: Tensor | None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if semantic.dim() != 1:
            raise ValueError(f"semantic must be [T], got {tuple(semantic.shape)}")
        for name, value in (("prompt", prompt), ("context", context)):
            if value is not None and (value.dim() != 2 or value.shape[0] != model.n_q):
                raise ValueError(f"{name} must be [n_q={model.n_q}, frames], got {tuple(value.shape)}")
        one = self.batch(
            model,
            semantic[None],
            None if prompt is None else prompt[None],
            None if context is None else context[None],
            [generator],
        )
        return one[0]


@dataclass(frozen=True)
class MaskGitFill(AcousticFill):
    """MaskGIT unmasking (``fill_acoustic_levels_batch``) with ``schedule``: the default strategy."""

    schedule: UnmaskSchedule = UnmaskSchedule()

    def batch(
        self,
        model: AcousticModel,
        semantic: Tensor,
        prompt: Tensor | None,
        context: Tensor | None,
        generators: Generators,
    ) -> Tensor:
        return fill_acoustic_levels_batch(
            model, semantic, prompt=prompt, context=context, schedule=self.schedule, generators=generators
        )


@torch.no_grad()
def fill_acoustic_levels(
    model: AcousticModel,
    semantic: Tensor,
    *,
    prompt: Tensor | None = None,
    context: Tensor | None = None,
    schedule: UnmaskSchedule | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Generate levels 2..n_q for ``semantic`` ``[T]`` -> codes ``[n_q, T]`` (row 0 = ``semantic``).

    ``prompt`` ``[n_q, Tp]`` (acoustic prompt) and ``context`` ``[n_q, Tc]`` (previous chunk) are prepended, in that
    order, as fixed frames on every level; only the T new frames are generated and returned. (A batch of one of
    ``fill_acoustic_levels_batch``: ``MaskGitFill``'s call.)
    """
    return MaskGitFill(schedule or UnmaskSchedule())(model, semantic, prompt, context, generator)


@dataclass(frozen=True, eq=False)
class ChunkRequest:
    """One chunk to decode: semantic ``[t]``, the previous codes ``[n_q, Tc]`` (None: first chunk of a segment),
    the voice prompt ``[n_q, Tp]`` (None: no prompt) and the generator its noise comes from."""

    semantic: Tensor
    context: Tensor | None = None
    prompt: Tensor | None = None
    generator: torch.Generator | None = None


class ChunkedAcousticDecoder:
    """Streaming primitive: semantic chunk (+ previous codes as context) -> all-level codes and audio.

    Stateless: the caller passes the previous chunk's codes (``[n_q, Tc]``; only the last ``context_frames`` are
    used) so consecutive calls may run in different processes. The codec decodes context + chunk together and the
    context's samples are trimmed, so the spectral envelope is continuous across chunk joins.

    ``decode_chunks`` decodes many chunks (of different sessions) at once; see there.
    """

    def __init__(
        self,
        model: AcousticModel,
        codec: SpeechCodec,
        schedule: UnmaskSchedule | None = None,
        context_frames: int = DEFAULT_CONTEXT_FRAMES,
        fill: AcousticFill | None = None,
    ) -> None:
        """``fill`` (default: ``MaskGitFill(schedule)``) decodes each chunk; ``schedule`` is ignored when it is
        given."""
        if model.n_q != codec.n_q or model.codebook_size != codec.codebook_size:
            raise ValueError(
                f"model (n_q={model.n_q}, K={model.codebook_size}) does not match codec "
                f"(n_q={codec.n_q}, K={codec.codebook_size})"
            )
        if context_frames < 0:
            raise ValueError("context_frames must be >= 0")
        self.model, self.codec = model, codec
        self.fill = fill or MaskGitFill(schedule or UnmaskSchedule())
        self.context_frames = context_frames
        self.hop = codec.hop
        self.sample_rate = codec.sample_rate
        self.n_q, self.codebook_size = codec.n_q, codec.codebook_size
        self.semantic_vocab = model.semantic_vocab
        # codes cross in on the CPU; a codec on a GPU (the AnyGPT family) decodes them there
        self._codec_device = codec.device
        self.device = model.device

    def _trim_context(self, context: Tensor | None) -> Tensor | None:
        if context is None or self.context_frames == 0 or context.shape[-1] == 0:
            return None
        return context[:, -self.context_frames :].long()

    def check_request(self, request: ChunkRequest) -> None:
        """Raises ``ValueError`` for a chunk that cannot be decoded (so that it never fails a batch of others)."""
        semantic = request.semantic
        if semantic.dim() != 1:
            raise ValueError(f"semantic must be [t], got {tuple(semantic.shape)}")
        if semantic.numel() and (int(semantic.min()) < 0 or int(semantic.max()) >= self.semantic_vocab):
            raise ValueError(f"semantic codes must lie in [0, {self.semantic_vocab})")
        for name, value in (("context", request.context), ("prompt", request.prompt)):
            if value is None:
                continue
            if value.dim() != 2 or value.shape[0] != self.n_q:
                raise ValueError(f"{name} must be [n_q={self.n_q}, frames], got {tuple(value.shape)}")
            if value.numel() and (int(value.min()) < 0 or int(value.max()) >= self.codebook_size):
                raise ValueError(f"{name} codes must lie in [0, {self.codebook_size})")

    def batch_key(self, request: ChunkRequest) -> tuple[int, int, int]:
        """(t, context frames used, prompt frames): chunks with equal keys are decoded in one call."""
        context = self._trim_context(request.context)
        prompt = request.prompt
        return (
            int(request.semantic.shape[0]),
            0 if context is None else int(context.shape[1]),
            0 if prompt is None else int(prompt.shape[-1]),
        )

    @torch.no_grad()
    def decode_chunks(self, requests: Sequence[ChunkRequest]) -> list[tuple[Tensor, Tensor]]:
        """Several chunks at once -> [(codes ``[n_q, t]``, wave ``[t * hop]``)] in request order.

        Chunks whose tensors have equal shapes (same t, same context frames after trimming, same prompt frames; see
        ``batch_key``) are stacked into ONE fill call and ONE codec decode; chunks of different shapes run as separate
        calls, one group after another. Nothing is padded: padding would change the conformer's attention and
        convolution outputs and the codec's, so a padded chunk would not decode as it does alone. Each chunk draws its
        noise from its own ``generator``, so it gets the same codes alone or batched (waves equal up to float
        rounding of the batched calls).
        """
        for request in requests:
            self.check_request(request)
        groups: dict[tuple[int, int, int], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(self.batch_key(request), []).append(index)
        results: list[tuple[Tensor, Tensor] | None] = [None] * len(requests)
        for indices in groups.values():
            for index, result in zip(indices, self._decode_group([requests[i] for i in indices]), strict=True):
                results[index] = result
        return results  # type: ignore[return-value]

    def _decode_group(self, requests: list[ChunkRequest]) -> list[tuple[Tensor, Tensor]]:
        """Chunks of one ``batch_key`` -> their (codes, wave), through one fill call and one codec decode."""
        num_new, num_context, num_prompt = self.batch_key(requests[0])
        batch = len(requests)
        if num_new == 0:
            empty = torch.zeros(self.n_q, 0, dtype=torch.long), torch.zeros(0)
            return [empty] * batch
        semantic = torch.stack([r.semantic.long() for r in requests])  # [B, t]
        # equal batch keys: every request has context (and prompt) frames, or none has
        contexts = [self._trim_context(r.context) for r in requests]
        context = None if num_context == 0 else torch.stack([c for c in contexts if c is not None])  # [B, n_q, Tc]
        prompts = [r.prompt.long() for r in requests if r.prompt is not None]
        prompt = None if num_prompt == 0 else torch.stack(prompts)  # [B, n_q, Tp]
        generators = [r.generator for r in requests]
        codes = self.fill.batch(self.model, semantic, prompt, context, generators).cpu()  # [B, n_q, t]
        full = codes if context is None else torch.cat([context.cpu(), codes], dim=2)  # [B, n_q, Tc + t]
        waves = self.codec.decode_batch(full.to(self._codec_device))[:, num_context * self.hop :]  # [B, t * hop]
        waves = waves.float().cpu()
        return [(codes[b], waves[b]) for b in range(batch)]

    @torch.no_grad()
    def decode_chunk(
        self,
        semantic_chunk: Tensor,
        context: Tensor | None = None,
        prompt: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """semantic ``[t]`` -> (codes ``[n_q, t]``, wave ``[t * hop]``)."""
        return self.decode_chunks([ChunkRequest(semantic_chunk, context, prompt, generator)])[0]

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
