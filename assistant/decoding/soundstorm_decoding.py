"""AnyGPT's SoundStorm decoding, as a strategy for the chunked acoustic decoder.

``anygpt_generate`` is AnyGPT's ``SoundStorm.generate`` loop step for step (``vc_steps=3``: 4 passes on the first
acoustic level, then one greedy pass per higher level, 10 forward passes). ``AnyGPTFill`` plugs it into
``ChunkedAcousticDecoder``: the voice prompt and the previous chunk's codes become AnyGPT's acoustic prompt, so
chunked streaming decodes a chunk exactly as AnyGPT decodes an utterance with that prompt.
``anygpt_schedule`` is the closest ``UnmaskSchedule`` for ``fill_acoustic_levels`` (same passes and sampling, not
every detail of the loop; see ``anygpt_generate``).

Batches: ``anygpt_generate`` takes one generator per row, so a row decodes alike alone or batched with others of the
same shape; ``AnyGPTFill.batch`` is what ``ChunkedAcousticDecoder.decode_chunks`` calls for a group of chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from assistant.decoding.maskgit import AcousticFill, UnmaskSchedule
from assistant.models.interfaces import AcousticModel


def anygpt_schedule(steps: int = 3) -> UnmaskSchedule:
    """The ``UnmaskSchedule`` for AnyGPT's ``generate(steps, topk_pres=0.7, greedy=True)`` (``vc_steps=3``): a cosine
    schedule with ``steps + 1`` passes on the first acoustic level, top-k keeping ceil(0.3 K) logits, Gumbel
    temperature ``i / steps``, a greedy last pass, then one greedy pass per higher level (10 passes for 8 levels).

    ``fill_acoustic_levels`` follows the counts and sampling of this schedule but not every detail of AnyGPT's loop;
    ``anygpt_generate`` is the literal loop."""
    return UnmaskSchedule(level2_steps=steps, topk_filter_thres=0.7, temperature=1.0, greedy_final=True)


GeneratorArg = torch.Generator | Sequence[torch.Generator | None] | None


def _uniform_like(logits: Tensor, generator: GeneratorArg) -> Tensor:
    """Uniform [0, 1) noise shaped like ``logits [B, ...]``: from one generator (or torch's global RNG) over the whole
    tensor, or, for a sequence of generators, row b from ``generator[b]`` exactly as a batch of one draws it."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.empty_like(logits).uniform_(0.0, 1.0, generator=generator)
    generators = list(generator)
    if len(generators) != logits.shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {logits.shape[0]}")
    if all(g is None for g in generators):
        return torch.empty_like(logits).uniform_(0.0, 1.0)
    return torch.stack(
        [torch.empty_like(row).uniform_(0.0, 1.0, generator=g) for row, g in zip(logits, generators, strict=True)]
    )


def _gumbel_argmax(logits: Tensor, temperature: float, generator: GeneratorArg) -> Tensor:
    """argmax of ``logits / max(temperature, 1e-10) + Gumbel noise`` along the last dim (noise as in the reference:
    ``-log(-log(u + 1e-10) + 1e-10)``, u uniform in [0, 1))."""
    uniform = _uniform_like(logits, generator)
    noise = -torch.log(-torch.log(uniform + 1e-10) + 1e-10)
    return (logits / max(temperature, 1e-10) + noise).argmax(dim=-1)


@torch.no_grad()
def anygpt_generate(
    model: AcousticModel,
    semantic: Tensor,
    prompt: Tensor | None = None,
    *,
    steps: int = 3,
    topk_thres: float = 0.7,
    greedy: bool = True,
    num_full_sampling_levels: int = 1,
    generator: GeneratorArg = None,
) -> Tensor:
    """AnyGPT's ``SoundStorm.generate`` step for step, in AnyGPT's layouts: semantic ``[B, T]``, prompt ``[B, Tp, n_q]``
    (all levels of the prompt) -> codes ``[B, T, n_q]`` (level 1 = ``semantic``).

    Points where it differs from ``fill_acoustic_levels`` (kept on purpose: this is the reference behaviour):
    - The number to re-mask after pass i is ``floor(cos(i / steps * pi / 2) * (Tp + T))`` (prompt frames counted), so
      the counts used after passes 0..steps are 100%, 86.6%, 50%, 0% of Tp + T.
    - The ranking (1 - p(sampled), p from the top-k-filtered softmax) runs over every frame and every level at once;
      then higher levels are forced masked and the prompt unmasked. Earlier-unmasked tokens of the level are
      re-sampled each pass (their kept value does not change) and may be re-masked.
    - The final pass of a level, and each single pass of a higher level, also writes its argmax predictions into all
      still-masked higher levels, and a higher-level pass overwrites levels q.. of the prompt frames too.
    With ``generator=None`` the noise comes from torch's global RNG in the reference's order (so a seed reproduces
    AnyGPT's output exactly). A sequence of generators (one per row) gives each row its own noise, drawn as a batch of
    one draws it: row b then decodes as it would alone with ``generator[b]`` (every row has the same T and Tp, so the
    re-mask counts are the same; ranking and masking are per row).
    """
    n_acoustic, mask_id = model.n_q - 1, model.mask_id
    device = model.device
    batch, length = semantic.shape
    mask = torch.ones(batch, length, n_acoustic, dtype=torch.bool, device=device)  # [B, T, Q]
    codes = torch.full((batch, length, n_acoustic), mask_id, dtype=torch.long, device=device)  # [B, T, Q]
    condition = semantic.long().to(device)  # [B, T]
    if prompt is not None:
        prompt = prompt.long().to(device)  # [B, Tp, n_q]
        condition = torch.cat([prompt[:, :, 0], condition], dim=1)  # [B, N]
        codes = torch.cat([prompt[:, :, 1:], codes], dim=1)  # [B, N, Q]
        mask = torch.cat([torch.zeros_like(prompt[:, :, 1:], dtype=torch.bool), mask], dim=1)  # [B, N, Q]
    prompt_mask = mask.clone()  # True where a token may be (re)masked: the new frames
    total = condition.shape[1]
    times = torch.linspace(0.0, 1.0, steps + 1, device=device)
    counts = (torch.cos(times * math.pi / 2) * total).long()  # [steps + 1]; cos(pi/2) in float32 < 0 -> 0
    k = math.ceil((1 - topk_thres) * model.codebook_size)

    for q in range(n_acoustic):
        level_counts = counts.tolist() if q < num_full_sampling_levels else [0]
        for i, count in enumerate(level_counts):
            logits = model(condition, codes.transpose(1, 2)).contiguous()  # [B, N, Q, K]; noise follows the layout
            if greedy and (q >= num_full_sampling_levels or count == 0):
                sampled = logits.argmax(dim=-1)  # [B, N, Q]
            else:
                top_values, top_index = logits.topk(k, dim=-1)
                logits = torch.full_like(logits, float("-inf")).scatter_(-1, top_index, top_values)  # top-k only
                sampled = _gumbel_argmax(logits, i / steps, generator)  # [B, N, Q]
            if q >= num_full_sampling_levels:
                codes[:, :, q:] = sampled[:, :, q:]
                mask[:, :, q] = False
                continue
            codes = torch.where(mask, sampled, codes)
            if count == 0:
                continue
            scores = 1 - logits.softmax(dim=-1).gather(-1, sampled[..., None]).squeeze(-1)  # [B, N, Q]
            rank = scores.flatten(1).argsort(dim=-1, descending=True).argsort(dim=-1)  # [B, N * Q]; 0 = least sure
            mask = (rank < count).view(batch, total, n_acoustic)
            mask[:, :, q + 1 :] = True
            mask = mask & prompt_mask
            codes = codes.masked_fill(mask, mask_id)
    return torch.cat([semantic.long().to(device)[:, :, None], codes[:, -length:]], dim=-1)  # [B, T, n_q]


@dataclass(frozen=True)
class AnyGPTFill(AcousticFill):
    """``AcousticFill`` over ``anygpt_generate``: prompt ``[n_q, Tp]`` and context ``[n_q, Tc]`` (either may be None)
    are joined, in that order, into AnyGPT's acoustic prompt."""

    steps: int = 3
    topk_thres: float = 0.7
    greedy: bool = True

    def batch(
        self,
        model: AcousticModel,
        semantic: Tensor,
        prompt: Tensor | None,
        context: Tensor | None,
        generators: Sequence[torch.Generator | None],
    ) -> Tensor:
        """semantic ``[B, t]``, prompt ``[B, n_q, Tp]`` | None, context ``[B, n_q, Tc]`` | None, one generator per row
        -> codes ``[B, n_q, t]`` (row b as ``self(model, semantic[b], prompt[b], context[b], generators[b])``)."""
        prefix = [p.long() for p in (prompt, context) if p is not None and p.shape[-1] > 0]
        joined = torch.cat(prefix, dim=2).transpose(1, 2) if prefix else None  # [B, Tp + Tc, n_q]
        codes = anygpt_generate(
            model,
            semantic.long(),
            joined,
            steps=self.steps,
            topk_thres=self.topk_thres,
            greedy=self.greedy,
            generator=list(generators),
        )  # [B, t, n_q]
        return codes.transpose(1, 2).cpu()  # [B, n_q, t]
