"""Real in-process backends over the embedded (untrained) models."""

import asyncio

import numpy as np
import pytest
from waiting import until

from assistant.lm_engine import BusyError, LMEngineConfig
from assistant.models.loading import ModelSpec, load_models
from assistant.pipeline.backends import Backends, BackendUnavailableError, LMLimits
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.pipeline.local import (
    LocalAcousticBackend,
    LocalLMBackend,
    LocalMediaBackend,
    LocalSpeechEncoder,
    local_backends,
)
from assistant.pipeline.outputs import AudioFrame, TurnFinished
from assistant.protocol import FinishReason


@pytest.fixture(scope="module")
def bundle():
    return load_models(ModelSpec(seed=0))


def burst(seconds=0.8):
    rng = np.random.default_rng(0)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * np.hanning(t.size) + 0.02 * rng.standard_normal(t.size)).astype(
        np.float32
    )


@pytest.mark.slow  # > 1.5 s
def test_spoken_turn_yields_speech(bundle):
    engine = AssistantEngine(local_backends(bundle), bundle.vocab, EngineConfig())

    async def main():
        session = engine.new_session()
        outputs = [o async for o in session.respond(UserTurn(audio=burst()))]
        await session.close()
        return outputs

    outputs = asyncio.run(asyncio.wait_for(main(), 120))
    frames = [o for o in outputs if isinstance(o, AudioFrame) and o.source == "speech"]
    assert len(frames) >= 10
    pcm = np.concatenate([f.pcm for f in frames]).astype(np.float32) / 32768
    assert float(np.sqrt(np.mean(pcm**2))) > 1e-3
    finished = [o for o in outputs if isinstance(o, TurnFinished)]
    assert len(finished) == 1 and outputs[-1] is finished[0]
    assert finished[0].reason in (FinishReason.COMPLETE, FinishReason.MAX_TOKENS)


def test_lm_stream_chunks_and_cancels(bundle):
    lm = LocalLMBackend(bundle, seed=1, engine_config=LMEngineConfig(max_slots=2, max_backlog=4))
    prompt = [bundle.vocab.bos_id, *bundle.vocab.encode_text("hi")]

    async def main():
        stream = lm.stream(prompt, None)
        first = await stream.__anext__()
        request = next(iter(lm.engine.scheduler.decoding.values()), None)
        if request is not None:  # until the engine has filled the bounded backlog (or the reply ended)

            def filled():
                with request._ready:
                    request._ready.wait_for(lambda: request.backlog >= 4 or request.finish_reason is not None, 30)

            await asyncio.to_thread(filled)
        second = await stream.__anext__()
        await stream.aclose()
        return first, second, request

    first, second, request = asyncio.run(asyncio.wait_for(main(), 60))
    assert len(first) >= 1
    assert 1 <= len(second) <= 4  # never more than the backlog bound at once
    list(request.tokens(timeout=60))  # ends once the engine has dropped the request
    assert request.finish_reason in ("cancelled", "stop", "length")
    assert lm.stats()["active_slots"] == 0
    lm.close()


def test_lm_stream_is_reproducible_for_a_seed(bundle):
    prompt = [bundle.vocab.bos_id, *bundle.vocab.encode_text("hello")]

    async def take(n):
        ids = []
        stream = LocalLMBackend(bundle, seed=7).stream(prompt, None)
        async for chunk in stream:
            ids.extend(chunk)
            if len(ids) >= n:
                break
        await stream.aclose()
        return ids[:n]

    assert asyncio.run(take(12)) == asyncio.run(take(12))


def test_lm_limits_are_the_slot_and_the_generation_settings(bundle):
    total = bundle.generation.total_limit
    whole = LocalLMBackend(bundle)
    small = LocalLMBackend(bundle, engine_config=LMEngineConfig(max_slots=1, slot_capacity=512))
    try:
        assert bundle.lm.config.max_position_embeddings == 2048  # the embedded model's positions
        assert asyncio.run(whole.limits()) == LMLimits(context_tokens=2048, max_reply_tokens=total)
        assert asyncio.run(small.limits()) == LMLimits(context_tokens=512, max_reply_tokens=total)
    finally:
        whole.close()
        small.close()


def test_a_prefill_keeps_its_kv_for_the_turn_and_never_takes_a_place_a_turn_needs(bundle):
    lm = LocalLMBackend(bundle, engine_config=LMEngineConfig(max_slots=1, max_waiting=1, max_backlog=2))
    vocab = bundle.vocab
    prompt = [vocab.bos_id, *vocab.encode_text("You are an assistant. Please answer the question that follows now")]

    async def main():
        await lm.prefill(prompt)
        stats = lm.engine.stats()
        assert stats["prefill_tokens"] == len(prompt) and stats["tokens"] == 0 and stats["active_slots"] == 0
        question = vocab.encode_text(" hi")
        holding = lm.stream([*prompt, *question], None)
        await anext(holding)  # takes the only slot, reusing the prefilled prompt
        assert lm.engine.stats()["reused_tokens"] == len(prompt)
        await lm.prefill(prompt)  # no free slot: skipped, the waiting place stays free for a turn
        assert lm.engine.stats()["prefill_tokens"] == len(prompt) + len(question) and lm.engine.stats()["waiting"] == 0
        await holding.aclose()

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        lm.close()


def test_a_full_lm_is_unavailable_not_a_failure(bundle):
    lm = LocalLMBackend(bundle, engine_config=LMEngineConfig(max_slots=1, max_waiting=0, max_backlog=2))
    prompt = [bundle.vocab.bos_id, *bundle.vocab.encode_text("hi")]

    async def main():
        holding = lm.stream(prompt, None)
        await anext(holding)  # takes the only slot (paused by its backlog, never finished)
        refused = lm.stream(prompt, None)
        with pytest.raises(BackendUnavailableError) as caught:
            await anext(refused)
        await holding.aclose()
        return caught.value

    try:
        error = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        lm.close()
    assert error.role == "lm" and isinstance(error.__cause__, BusyError)


def test_closing_a_session_mid_reply_stops_the_lm_and_the_decoder_within_a_second(bundle):
    # Small queues and backlog: the reply pauses (backpressure) long before it could end, so it is surely still
    # generating when the session closes, as when a client disconnects in the middle of an answer.
    lm = LocalLMBackend(bundle, seed=0, engine_config=LMEngineConfig(max_slots=2, max_backlog=4))
    acoustic = LocalAcousticBackend(bundle, seed=0)
    backends = Backends(speech=LocalSpeechEncoder(bundle), lm=lm, acoustic=acoustic, media=LocalMediaBackend(bundle))
    config = EngineConfig(
        force_modality="speech", first_chunk_frames=5, chunk_frames=5, output_queue_size=2, chunk_queue_size=1
    )
    engine = AssistantEngine(backends, bundle.vocab, config)

    def lm_idle():
        stats = lm.stats()
        return stats["active_slots"] == 0 and stats["waiting"] == 0

    def decoder_idle():
        stats = acoustic.stats()
        return stats.queue_depth == 0 and stats.in_flight == 0

    async def main():
        session = engine.new_session()
        replies = session.respond(UserTurn(text="tell me a long story"))
        first = await anext(replies)  # then nobody reads any more: the client is gone
        await until(lambda: session.pending()["chunk_queue"] == 1, timeout=60, what="the reply backpressured")
        busy_before_close = lm.stats()["active_slots"]
        closing = asyncio.ensure_future(session.close())
        await until(lambda: lm_idle() and decoder_idle(), timeout=1.0, what="LM and decoder idle after close")
        await closing
        await replies.aclose()
        return first, busy_before_close

    try:
        first, busy_before_close = asyncio.run(asyncio.wait_for(main(), 120))
        assert not isinstance(first, TurnFinished)
        assert busy_before_close == 1  # the reply was still being generated when the session closed ...
        assert lm.stats()["cancelled"] == 1 and lm.stats()["completed"] == 0  # ... and was stopped, not finished
    finally:
        lm.close()
        acoustic.close()
