"""Choosing the next token of many replies at once: per-row settings, grammar and randomness, vectorised.

Each generation owns a :class:`ReplyState`: its grammar, the modality whose settings apply to its next token (AnyGPT
switches settings after a sampled ``<soX>``), which ids it has seen (repetition penalty) and its random stream.
:func:`select_tokens` takes the logits of B generations ``[B, V]`` and their states and picks every row's token with
a handful of batched tensor operations: repetition penalty, grammar mask, then greedy or temperature / top-k / top-p
sampling, each row with its own settings.

Randomness is counter-based: a row's draw at step n is a hash of (its seed, n, token id), so a generation samples
the same tokens whatever else shares its batch and in whatever order rows are stacked: a session's reply is the same
alone or batched, in the single-request stream or the batched engine. Sampling is Gumbel-max over the filtered
logits, which draws exactly from the softmax distribution (the same law as ``torch.multinomial``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from assistant.decoding.lm_sampler import GenerationSettings, ReplyGrammar, SamplingSettings
from assistant.vocab import Modality, TokenKind, UnifiedVocab

_MASK32 = 0xFFFFFFFF


class ReplyState:
    """One reply's decoding state; ``advance(token)`` after each chosen token."""

    def __init__(
        self,
        vocab: UnifiedVocab,
        settings: GenerationSettings,
        *,
        seed: int | None,
        force_modality: Modality | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.vocab = vocab
        self.settings = settings
        self.seed = int.from_bytes(os.urandom(4), "little") if seed is None else int(seed)
        self.grammar = ReplyGrammar(vocab, settings, device=device)
        self.modality = Modality.TEXT  # settings in force for the next token
        if force_modality is not None:
            self.grammar.begin_segment(force_modality)
            self.modality = force_modality
        self.steps = 0  # tokens chosen so far (the counter of the random stream)

    @property
    def sampling(self) -> SamplingSettings:
        return self.settings.for_modality(self.modality)

    @property
    def finished(self) -> bool:
        return self.grammar.finished

    def advance(self, token: int) -> None:
        self.grammar.advance(token)  # cannot fail for a token select_tokens chose: the mask only allows grammatical ids
        info = self.vocab.classify(token)
        if info.kind is TokenKind.START and info.modality is not None:  # a start marker always names its modality
            self.modality = info.modality
        elif info.kind is TokenKind.END:
            self.modality = Modality.TEXT
        self.steps += 1


def select_tokens(logits: Tensor, states: Sequence[ReplyState], seen: Tensor) -> Tensor:
    """logits ``[B, V]`` (float32), one state per row, seen ``[B, V]`` bool (ids in each row's context) -> ``[B]``.

    Per row, in order: repetition penalty of its current modality, grammar mask, then argmax (greedy rows) or
    temperature, top-k, top-p and one draw from the row's own random stream."""
    device = logits.device
    rows = len(states)
    if logits.shape[0] != rows or seen.shape != logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)}, seen {tuple(seen.shape)} and {rows} states disagree")
    sampling = [s.sampling for s in states]
    scores = logits
    penalties = [p.repetition_penalty for p in sampling]
    if any(p != 1.0 for p in penalties):
        penalty = torch.tensor(penalties, dtype=scores.dtype, device=device)[:, None]  # [B, 1]
        penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
        scores = torch.where(seen, penalised, scores)
    allowed = torch.stack([s.grammar.allowed_mask() for s in states])  # [B, V]
    scores = scores.masked_fill(~allowed, float("-inf"))
    chosen = scores.argmax(dim=-1)  # [B] greedy choice
    sampled_rows = [i for i, p in enumerate(sampling) if p.do_sample]
    if not sampled_rows:
        return chosen
    index = torch.tensor(sampled_rows, device=device)
    picked = [sampling[i] for i in sampled_rows]
    z = scores[index] / torch.tensor([p.temperature for p in picked], dtype=scores.dtype, device=device)[:, None]
    z = _top_k_top_p(z, [p.top_k or 0 for p in picked], [p.top_p for p in picked])
    gumbel = _gumbel_noise(
        [states[i].seed for i in sampled_rows], [states[i].steps for i in sampled_rows], z.shape[-1], device
    )
    return chosen.index_copy(0, index, (z + gumbel).argmax(dim=-1))


def _top_k_top_p(z: Tensor, top_k: list[int], top_p: list[float]) -> Tensor:
    """Per-row top-k (0 = off; ties with the k-th value are kept), then nucleus filtering of what is left: a token
    is dropped when the probability mass of the tokens ranked before it already reaches top_p."""
    vocab_size = z.shape[-1]
    use_k = any(0 < k < vocab_size for k in top_k)
    use_p = any(p < 1.0 for p in top_p)
    if not (use_k or use_p):
        return z
    device = z.device
    ordered, order = torch.sort(z, dim=-1, descending=True)  # [R, V]
    drop = torch.zeros_like(ordered, dtype=torch.bool)
    if use_k:
        k = torch.tensor([k if 0 < k < vocab_size else vocab_size for k in top_k], device=device)  # [R]
        kth = ordered.gather(1, (k - 1)[:, None])  # [R, 1]
        drop |= ordered < kth
    if use_p:
        p = torch.tensor(top_p, dtype=z.dtype, device=device)[:, None]  # [R, 1]
        probs = torch.softmax(ordered.masked_fill(drop, float("-inf")), dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked before each one
        drop |= (before >= p) & (p < 1.0)
    return z.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (xor-shift-multiply rounds) on int64 tensors holding values below 2**32; every
    product stays below 2**63, so no int64 overflow."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


def _gumbel_noise(seeds: list[int], steps: list[int], vocab_size: int, device: torch.device) -> Tensor:
    """Gumbel(0, 1) noise ``[R, V]`` that depends only on each row's (seed, step) and the token id."""
    seed = torch.tensor([s & _MASK32 for s in seeds], dtype=torch.int64, device=device)
    high = torch.tensor([(s >> 32) & _MASK32 for s in seeds], dtype=torch.int64, device=device)
    step = torch.tensor([n & _MASK32 for n in steps], dtype=torch.int64, device=device)
    row = _mix32(_mix32(_mix32(seed) ^ high) ^ step)  # [R]
    token = torch.arange(vocab_size, dtype=torch.int64, device=device)  # [V]
    bits = _mix32(_mix32(row[:, None] ^ token[None, :]) ^ 0x9E3779B9)  # [R, V]
    uniform = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # (0, 1), exact in float32
    return -torch.log(-torch.log(uniform))


def mark_seen(seen: Tensor, tokens: Tensor) -> None:
    """seen ``[B, V]`` bool: set each row's chosen token (in place)."""
    seen.scatter_(1, tokens.view(-1, 1), True)
