"""The vLLM LM backend against a fake engine with vLLM's streaming API (vLLM itself needs CUDA): ids in and out,
the forced modality's settings, stop ids, and abort when the consumer goes away."""

import asyncio
from dataclasses import dataclass, field

import pytest

from assistant.decoding.lm_sampler import GenerationSettings, SamplingSettings
from assistant.pipeline.vllm_lm import VLLMBackend, VLLMEngineOptions, sampling_kwargs, start_vllm_engine
from assistant.vocab import Modality, UnifiedVocab


@dataclass
class Completion:
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class Output:
    outputs: list[Completion]
    finished: bool


@dataclass
class FakeEngine:
    """Streams ``script`` (lists of ids) as DELTA outputs; records requests and aborts."""

    script: list[list[int]]
    finish_reason: str = "stop"
    requests: list[tuple] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)

    async def generate(self, prompt, sampling_params, request_id):
        self.requests.append((prompt, sampling_params, request_id))
        for i, ids in enumerate(self.script):
            await asyncio.sleep(0)
            last = i == len(self.script) - 1
            yield Output([Completion(ids, self.finish_reason if last else None)], finished=last)

    async def abort(self, request_id):
        self.aborted.append(request_id)


def settings() -> GenerationSettings:
    return GenerationSettings(
        text=SamplingSettings(do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=50),
        speech=SamplingSettings(do_sample=False, repetition_penalty=1.05, max_new_tokens=90),
    )


def backend(engine) -> tuple[VLLMBackend, UnifiedVocab]:
    vocab = UnifiedVocab.embedded()
    return VLLMBackend(engine, vocab, settings(), seed=3, make_params=sampling_kwargs), vocab


async def collect(stream, limit=None):
    out = []
    async for chunk in stream:
        out.append(chunk)
        if limit is not None and len(out) >= limit:
            break
    return out


def test_ids_stream_through_with_text_settings_and_stop_ids():
    vocab = UnifiedVocab.embedded()
    engine = FakeEngine([[5, 6], [7], [vocab.eos_id]])
    lm, vocab = backend(engine)
    chunks = asyncio.run(collect(lm.stream([vocab.bos_id, 10, 11], None)))
    assert chunks == [[5, 6], [7], [vocab.eos_id]]
    prompt, params, _ = engine.requests[0]
    assert prompt == {"prompt_token_ids": [vocab.bos_id, 10, 11]}
    assert params["temperature"] == 0.7 and params["top_p"] == 0.9 and params["top_k"] == -1
    assert set(params["stop_token_ids"]) == set(vocab.stop_ids) and params["detokenize"] is False
    assert params["max_tokens"] == settings().total_limit and params["seed"] == 3
    assert engine.aborted == [] and not lm.active_requests


def test_a_forced_modality_uses_its_settings_and_greedy_means_temperature_zero():
    vocab = UnifiedVocab.embedded()
    engine = FakeEngine([[vocab.range_of(Modality.SPEECH).first_id]])
    lm, vocab = backend(engine)
    prompt = [vocab.bos_id, 10, vocab.range_of(Modality.SPEECH).start_id]
    asyncio.run(collect(lm.stream(prompt, "speech")))
    params = engine.requests[0][1]
    assert params["temperature"] == 0.0 and params["repetition_penalty"] == 1.05
    with pytest.raises(ValueError, match="does not end with its start marker"):
        asyncio.run(collect(lm.stream([vocab.bos_id, 10], "speech")))
    with pytest.raises(ValueError, match="invalid token id"):
        asyncio.run(collect(lm.stream([vocab.size + 5], None)))


def test_a_stop_that_vllm_left_out_of_the_ids_still_ends_the_turn():
    vocab = UnifiedVocab.embedded()
    lm, vocab = backend(FakeEngine([[5], [6]]))
    assert asyncio.run(collect(lm.stream([vocab.bos_id], None))) == [[5], [6, vocab.eos_id]]
    lm, vocab = backend(FakeEngine([[5], [6]], finish_reason="length"))
    assert asyncio.run(collect(lm.stream([vocab.bos_id], None))) == [[5], [6]]


def test_closing_the_stream_early_aborts_the_request():
    vocab = UnifiedVocab.embedded()
    engine = FakeEngine([[5], [6], [7], [vocab.eos_id]])
    lm, vocab = backend(engine)

    async def main():
        stream = lm.stream([vocab.bos_id], None)
        first = await anext(stream)
        await stream.aclose()  # what the engine does on barge-in or disconnect
        return first

    assert asyncio.run(main()) == [5]
    assert engine.aborted == [engine.requests[0][2]] and not lm.active_requests


def test_engine_options_are_checked_and_a_missing_vllm_is_a_clear_error():
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMEngineOptions(model="/models/AnyGPT-chat", gpu_memory_utilization=1.5)
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install vllm"):
            start_vllm_engine(VLLMEngineOptions(model="/models/AnyGPT-chat"))
