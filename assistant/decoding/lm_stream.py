"""Streaming token generation for one request (KV-cached, cancellable): the single-session primitive.

Per step the shared strategy of :mod:`assistant.decoding.reply_sampling` picks the token (repetition penalty of the
current modality, ReplyGrammar mask, greedy / sampling); after a sampled ``<soX>`` the settings of X apply until
``<eoX>`` (AnyGPT per-modality decoding). The batched engine (:mod:`assistant.lm_engine`) uses the same strategy and
the same counter-based randomness, so a request yields the same tokens here and there for the same seed.

LLaMA models run on a one-slot :class:`~assistant.lm_engine.model_runner.SlotModelRunner` (the engine's forward);
other models through their own ``forward`` with a transformers cache.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import torch
from transformers import DynamicCache

from assistant.decoding.lm_sampler import GenerationSettings
from assistant.decoding.reply_sampling import ReplyState, mark_seen, select_tokens
from assistant.lm_engine.model_runner import SlotModelRunner, model_device, supports_slot_decoding
from assistant.models.interfaces import CausalLM
from assistant.vocab import Modality, UnifiedVocab


class TokenStream:
    """``generate`` yields reply token ids one by one; not re-entrant (one active generation per object)."""

    def __init__(
        self, model: CausalLM, vocab: UnifiedVocab, settings: GenerationSettings, seed: int | None = None
    ) -> None:
        self.model = model
        self.vocab = vocab
        self.settings = settings
        self.device = model_device(model)
        self.seed = seed
        # One generation's KV state: a one-slot runner for LLaMA models, else the transformers cache.
        self._cache: SlotModelRunner | DynamicCache | None = None
        self._position = 0
        self._slot_runner = supports_slot_decoding(model)
        self.state: ReplyState | None = None

    @property
    def has_cache(self) -> bool:
        return self._cache is not None

    @property
    def cached_tokens(self) -> int:
        """Positions held in the KV state of the running generation (0 when none runs)."""
        if self._cache is None:
            return 0
        if isinstance(self._cache, SlotModelRunner):
            return self._position
        return int(self._cache.get_seq_length())

    def _forward(self, ids: Sequence[int]) -> torch.Tensor:
        # ids: the whole prompt (first call) or the one new token -> logits of the last position [V] (float32)
        if isinstance(self._cache, SlotModelRunner):
            runner, start = self._cache, self._position
            self._position += len(ids)
            if start == 0:
                return runner.prefill(0, torch.tensor(list(ids), dtype=torch.long, device=self.device), 0)
            token = torch.tensor([int(ids[-1])], dtype=torch.long, device=self.device)
            return runner.decode(token, torch.tensor([start], device=self.device))[0]
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

    def _run(
        self, prompt: list[int], force_modality: Modality | None, cancel: threading.Event | None, limit: int
    ) -> Iterator[int]:
        vocab = self.vocab
        state = ReplyState(vocab, self.settings, seed=self.seed, force_modality=force_modality, device=self.device)
        self.state = state
        seen = torch.zeros(1, vocab.size, dtype=torch.bool, device=self.device)  # [1, V] ids in the context
        seen[0, torch.tensor(prompt, device=self.device)] = True
        try:
            if cancel is not None and cancel.is_set():
                return
            if self._slot_runner:
                capacity = min(len(prompt) + limit, int(self.model.config.max_position_embeddings))
                self._cache = SlotModelRunner(self.model, max_slots=1, capacity=max(capacity, 2), cuda_graphs=False)
                limit = min(limit, self._cache.capacity - len(prompt))
                if limit <= 0:
                    raise ValueError(
                        f"prompt of {len(prompt)} tokens fills the model's {self._cache.capacity} positions"
                    )
            else:
                self._cache = DynamicCache(config=getattr(self.model, "config", None))
            self._position = 0
            logits = self._forward(prompt)  # prefill once
            for step in range(limit):
                with torch.inference_mode():
                    chosen = select_tokens(logits[None, : vocab.size], [state], seen)
                    mark_seen(seen, chosen)
                token = int(chosen[0])
                state.advance(token)
                yield token
                if token in vocab.stop_ids or step + 1 >= limit or (cancel is not None and cancel.is_set()):
                    return
                logits = self._forward([token])
                if cancel is not None and cancel.is_set():
                    return
        finally:
            self._cache = None  # frees the KV cache on stop, cancel, error and generator close()
