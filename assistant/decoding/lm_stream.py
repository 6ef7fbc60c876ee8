"""Streaming token generation for the unified LM (one request, KV-cached, cancellable).

Per step: logits -> repetition penalty (current modality) -> ReplyGrammar mask -> greedy / sampling (current
modality). After a sampled ``<soX>`` the settings of X apply until ``<eoX>`` (AnyGPT per-modality decoding).
"""

from __future__ import annotations

import threading
from typing import Iterator, Sequence

import torch
from transformers import DynamicCache

from assistant.decoding.lm_sampler import GenerationSettings, RepetitionPenalty, ReplyGrammar, make_selector
from assistant.models.lm_kv import LeanLlamaDecoder, supports_lean_decoding
from assistant.vocab import Modality, TokenKind, UnifiedVocab


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class TokenStream:
    """``generate`` yields reply token ids one by one; not re-entrant (one active generation per object)."""

    def __init__(self, model: torch.nn.Module, vocab: UnifiedVocab, settings: GenerationSettings,
                 seed: int | None = None) -> None:
        self.model = model
        self.vocab = vocab
        self.settings = settings
        self.device = _model_device(model)
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()
        # One generation's KV state: the lean loop for LLaMA models, else the transformers cache.
        self._cache: LeanLlamaDecoder | DynamicCache | None = None
        self._lean = supports_lean_decoding(model)
        self.modality: Modality = Modality.TEXT  # settings in force for the next token
        self.grammar: ReplyGrammar | None = None

    @property
    def has_cache(self) -> bool:
        return self._cache is not None

    @property
    def cached_tokens(self) -> int:
        """Positions held in the KV state of the running generation (0 when none runs)."""
        if self._cache is None:
            return 0
        if isinstance(self._cache, LeanLlamaDecoder):
            return self._cache.length
        return int(self._cache.get_seq_length())

    def _forward(self, ids: Sequence[int]) -> torch.Tensor:
        # ids: the whole prompt (first call) or the one new token -> logits of the last position [V] (float32)
        if isinstance(self._cache, LeanLlamaDecoder):
            if self._cache.length == 0:
                return self._cache.prefill(torch.tensor(ids, dtype=torch.long, device=self.device))
            return self._cache.step(int(ids[-1]))
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)  # [1, T]
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, cache=self._cache, use_cache=True, logits_to_keep=1)
            return out.logits[0, -1].float()

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        force_modality: Modality | None = None,
        cancel: threading.Event | None = None,
        max_new_tokens: int | None = None,
    ) -> Iterator[int]:
        if self._cache is not None:
            raise RuntimeError("TokenStream already has an active generation")
        prompt = [self.vocab.check_id(int(i)) for i in prompt_ids]
        if not prompt:
            raise ValueError("empty prompt")
        if force_modality is not None and prompt[-1] != self.vocab.range_of(force_modality).start_id:
            raise ValueError(f"force_modality={force_modality.value} but the prompt does not end with its start marker")
        limit = self.settings.total_limit if max_new_tokens is None else int(max_new_tokens)
        if limit <= 0:
            raise ValueError(f"max_new_tokens must be > 0, got {limit}")
        return self._run(prompt, force_modality, cancel, limit)

    def _run(self, prompt: list[int], force_modality: Modality | None, cancel: threading.Event | None,
             limit: int) -> Iterator[int]:
        vocab = self.vocab
        grammar = ReplyGrammar(vocab, self.settings, device=self.device)
        self.grammar = grammar
        self.modality = Modality.TEXT
        if force_modality is not None:
            grammar.begin_segment(force_modality)
            self.modality = force_modality
        seen = torch.zeros(vocab.size, dtype=torch.bool, device=self.device)  # [V] ids in the context
        seen[torch.tensor(prompt, device=self.device)] = True
        try:
            if cancel is not None and cancel.is_set():
                return
            if self._lean:
                # Room for a typical reply; the cache doubles when a long one needs more (a 7B model's full-length
                # cache would hold GBs for every generation otherwise).
                self._cache = LeanLlamaDecoder(self.model, capacity=len(prompt) + min(limit, 256))
            else:
                self._cache = DynamicCache(config=getattr(self.model, "config", None))
            logits = self._forward(prompt)  # prefill once
            for step in range(limit):
                sampling = self.settings.for_modality(self.modality)
                with torch.inference_mode():
                    scores = RepetitionPenalty(sampling.repetition_penalty)(logits, seen)
                    scores = grammar.apply(scores)
                    token = make_selector(sampling)(scores, self.generator)
                grammar.advance(token)  # cannot fail: the mask only allows grammatical ids
                seen[token] = True
                info = vocab.classify(token)
                if info.kind is TokenKind.START:
                    self.modality = info.modality
                elif info.kind is TokenKind.END:
                    self.modality = Modality.TEXT
                yield token
                if token in vocab.stop_ids or step + 1 >= limit or (cancel is not None and cancel.is_set()):
                    return
                logits = self._forward([token])
                if cancel is not None and cancel.is_set():
                    return
        finally:
            self._cache = None  # frees the KV cache on stop, cancel, error and generator close()
