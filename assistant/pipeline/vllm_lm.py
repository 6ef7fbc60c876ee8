"""The LM backend on vLLM (GPU machines with ``vllm`` installed): continuous batching across sessions, streaming,
and cancellation when a session goes away.

Prompts go in as token ids and come out as token ids (the tokenizer is never initialised), so the unified
vocabulary of :mod:`assistant.vocab` stays the only authority on ids; ``<eos>`` and ``</s>`` (``vocab.stop_ids``)
stop a request.

Differences from the in-process ``TokenStream`` (the default): vLLM samples a whole request with one set of
settings, so, like AnyGPT's own CLI, a request uses the settings of its forced modality, else the text settings;
``ReplyGrammar`` is not applied, and the engine drops whatever stray tokens come back (it counts them in its turn
statistics). Closing the stream aborts the request in vLLM, which frees its KV blocks.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from assistant.decoding.lm_sampler import GenerationSettings, SamplingSettings
from assistant.pipeline.backends import LMBackend, LMLimits
from assistant.vocab import Modality, UnifiedVocab

if TYPE_CHECKING:
    from vllm import SamplingParams


class AsyncTokenEngine(Protocol):
    """The part of vLLM's ``AsyncLLM`` used here."""

    def generate(self, prompt: Any, sampling_params: Any, request_id: str) -> AsyncIterator[Any]: ...

    async def abort(self, request_id: str) -> None: ...

    async def get_model_config(self) -> Any: ...  # older engines: the model config (``max_model_len``)


@dataclass(frozen=True)
class VLLMEngineOptions:
    """How the LM deployment starts vLLM: ``model`` is the Hugging Face folder; the rest go to ``AsyncEngineArgs``."""

    model: str
    dtype: str = "float16"
    gpu_memory_utilization: float = 0.45  # the speech, image and music models share the GPU
    max_model_len: int = 4096
    max_num_seqs: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len <= 0 or self.max_num_seqs <= 0:
            raise ValueError("max_model_len and max_num_seqs must be positive")


def start_vllm_engine(options: VLLMEngineOptions) -> AsyncTokenEngine:
    try:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as exc:
        raise ImportError(
            "the vLLM LM engine needs `pip install vllm` on a CUDA machine; use lm_engine: transformers otherwise"
        ) from exc
    args = AsyncEngineArgs(
        model=options.model,
        dtype=options.dtype,
        skip_tokenizer_init=True,
        gpu_memory_utilization=options.gpu_memory_utilization,
        max_model_len=options.max_model_len,
        max_num_seqs=options.max_num_seqs,
        seed=options.seed,
    )
    return AsyncLLM.from_engine_args(args)


def vllm_sampling_params(
    settings: SamplingSettings, max_tokens: int, stop_ids: frozenset[int], seed: int | None
) -> SamplingParams:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(**sampling_kwargs(settings, max_tokens, stop_ids, seed), output_kind=RequestOutputKind.DELTA)


def sampling_kwargs(
    settings: SamplingSettings, max_tokens: int, stop_ids: frozenset[int], seed: int | None
) -> dict[str, Any]:
    """``SamplingParams`` fields for one request (greedy = temperature 0 in vLLM)."""
    return {
        "temperature": settings.temperature if settings.do_sample else 0.0,
        "top_p": settings.top_p,
        "top_k": settings.top_k if settings.do_sample and settings.top_k else -1,
        "repetition_penalty": settings.repetition_penalty,
        "max_tokens": max_tokens,
        "stop_token_ids": sorted(stop_ids),
        "detokenize": False,
        "seed": seed,
    }


class VLLMBackend(LMBackend):
    """``LMBackend`` over a running vLLM engine; one request per ``stream`` call."""

    def __init__(
        self,
        engine: AsyncTokenEngine,
        vocab: UnifiedVocab,
        settings: GenerationSettings,
        seed: int | None = 0,
        make_params: Callable[[SamplingSettings, int, frozenset[int], int | None], Any] = vllm_sampling_params,
        max_model_len: int | None = None,
    ) -> None:
        """``max_model_len``: positions per request, when known; None reads it from the engine's model config."""
        self.engine, self.vocab, self.settings, self.seed = engine, vocab, settings, seed
        self.max_model_len = max_model_len
        self._make_params = make_params  # tests pass a plain-dict factory; vLLM is not installed there
        self._calls = itertools.count()
        self.active_requests: set[str] = set()

    async def limits(self) -> LMLimits:
        """vLLM's ``max_model_len`` (prompt and reply together) and the ``max_tokens`` every request is sent with."""
        context = self.max_model_len
        if context is None:
            # AsyncLLM holds its model config as an attribute; older engines only answer an async getter
            config = getattr(self.engine, "model_config", None)
            if config is None:
                config = await self.engine.get_model_config()
            context = int(config.max_model_len)
        return LMLimits(context_tokens=context, max_reply_tokens=self.settings.total_limit)

    async def stream(self, prompt_ids: list[int], force_modality: str | None) -> AsyncGenerator[list[int]]:
        prompt = [self.vocab.check_id(int(i)) for i in prompt_ids]
        if not prompt:
            raise ValueError("empty prompt")
        modality = Modality(force_modality) if force_modality is not None else Modality.TEXT
        if force_modality is not None and prompt[-1] != self.vocab.range_of(modality).start_id:
            raise ValueError(f"force_modality={modality.value} but the prompt does not end with its start marker")
        seed = None if self.seed is None else self.seed + next(self._calls)
        params = self._make_params(
            self.settings.for_modality(modality), self.settings.total_limit, self.vocab.stop_ids, seed
        )
        request_id = f"anystream-{uuid.uuid4().hex}"
        self.active_requests.add(request_id)
        finished = False
        try:
            async for output in self.engine.generate({"prompt_token_ids": prompt}, params, request_id):
                completion = output.outputs[0]
                chunk = [int(t) for t in completion.token_ids]  # DELTA outputs: only the new ids
                if (
                    output.finished
                    and completion.finish_reason == "stop"
                    and not (chunk and chunk[-1] in self.vocab.stop_ids)
                ):
                    chunk.append(self.vocab.eos_id)  # stopped on a stop id vLLM left out: the turn still completes
                if chunk:
                    yield chunk
                if output.finished:
                    finished = True
                    break
        finally:
            self.active_requests.discard(request_id)
            if not finished:
                await self.engine.abort(request_id)  # the session left or failed: free the request's KV blocks
