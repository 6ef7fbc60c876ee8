"""Real in-process backends over the embedded (untrained) models."""

import asyncio

import numpy as np
import pytest

from assistant.models.bundle import load_embedded
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.lm_engine import LMEngineConfig
from assistant.pipeline.local import LocalLMBackend, local_backends
from assistant.pipeline.outputs import AudioFrame, TurnFinished
from assistant.protocol import FinishReason


@pytest.fixture(scope="module")
def bundle():
    return load_embedded(seed=0)


def burst(seconds=0.8):
    rng = np.random.default_rng(0)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * np.hanning(t.size) + 0.02 * rng.standard_normal(t.size)).astype(
        np.float32
    )


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
