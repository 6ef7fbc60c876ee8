"""The in-process acoustic and speech backends over the embedded models: concurrent sessions batched without changing
their chunks, voices registered once by key, level-1-only speech encoding."""

import asyncio

import numpy as np
import pytest
import torch

from assistant.models.loading import ModelSpec, load_models
from assistant.models.numpy_soundstorm import NumpySoundStorm
from assistant.models.voices import VoiceBank
from assistant.pipeline.backends import UnknownVoiceKeyError, voice_key
from assistant.pipeline.local import LocalAcousticBackend, LocalSpeechEncoder


@pytest.fixture(scope="module")
def bundle():
    return load_models(ModelSpec(seed=0), ("acoustic", "codec"))


@pytest.fixture(scope="module")
def bank() -> VoiceBank:
    return VoiceBank.from_json(ModelSpec().voices_path)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


def test_concurrent_sessions_share_model_calls_and_decode_as_they_do_alone(bundle, bank):
    names = bank.names[:4]
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 1024, 25) for _ in names]
    contexts = [rng.integers(0, 1024, (8, 25)) for _ in names]

    async def alone():
        backend = LocalAcousticBackend(bundle)
        out = []
        for i, name in enumerate(names):
            key = await backend.register_voice(bank.prompt(name))
            out.append(await backend.decode_chunk(chunks[i], contexts[i], key, seed=100 + i))
        return out, backend.stats()

    async def together():
        backend = LocalAcousticBackend(bundle, window_s=0.05)
        keys = [await backend.register_voice(bank.prompt(name)) for name in names]
        out = await asyncio.gather(
            *(backend.decode_chunk(chunks[i], contexts[i], keys[i], seed=100 + i) for i in range(len(names)))
        )
        return out, backend.stats()

    single, single_stats = run(alone())
    batched, stats = run(together())
    assert single_stats.batches == single_stats.model_calls == 4
    assert stats.requests == 4 and stats.model_calls < 4 and stats.mean_batch_size > 1  # really batched
    assert stats.audio_s == pytest.approx(4 * 0.5) and stats.busy_s > 0 and stats.queue_depth == 0
    for (codes_a, wave_a), (codes_b, wave_b), semantic in zip(single, batched, chunks, strict=True):
        assert codes_b.dtype == np.int64 and codes_b.shape == (8, 25) and np.array_equal(codes_b[0], semantic)
        assert np.array_equal(codes_a, codes_b)
        assert wave_b.dtype == np.float32 and wave_b.shape == (25 * 320,)
        np.testing.assert_allclose(wave_a, wave_b, rtol=1e-4, atol=1e-5)


def test_voices_are_registered_once_by_content_key(bundle, bank):
    prompt = bank.prompt(bank.default)
    backend = LocalAcousticBackend(bundle, voices=[bank.prompt(n) for n in bank.names[:2]], max_voices=3)
    assert backend.voice_keys == tuple(voice_key(bank.prompt(n)) for n in bank.names[:2])
    semantic = np.arange(6) % 1024

    async def main():
        key = await backend.register_voice(prompt)
        assert key == voice_key(prompt) == await backend.register_voice(prompt.copy())  # idempotent, by content
        codes, wave = await backend.decode_chunk(semantic, None, key, seed=1)
        with pytest.raises(UnknownVoiceKeyError, match="unknown voice key"):
            await backend.decode_chunk(semantic, None, "voice-0000")
        # a replica without the key is told again: the prompt comes with the chunk and registers it there
        fresh = LocalAcousticBackend(bundle)
        again, wave_again = await fresh.decode_chunk(semantic, None, key, prompt=prompt, seed=1)
        assert fresh.voice_keys == (key,)
        np.testing.assert_array_equal(codes, again)
        np.testing.assert_allclose(wave, wave_again, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="has key"):
            await fresh.decode_chunk(semantic, None, "voice-other", prompt=prompt)
        with pytest.raises(ValueError, match="voice prompt"):
            await backend.register_voice(prompt[:3])
        with pytest.raises(ValueError, match="voice prompt"):
            await backend.register_voice(prompt + 5000)
        # the oldest voice goes first when more than max_voices are kept
        for name in bank.names[2:4]:
            await backend.register_voice(bank.prompt(name))
        assert len(backend.voice_keys) == 3 and voice_key(bank.prompt(bank.names[0])) not in backend.voice_keys

    run(main())


def test_a_bad_chunk_fails_alone(bundle):
    backend = LocalAcousticBackend(bundle)

    async def main():
        good = backend.decode_chunk(np.arange(5), None, None, seed=0)
        bad = backend.decode_chunk(np.full(5, 4096), None, None, seed=0)
        return await asyncio.gather(good, bad, return_exceptions=True)

    good, bad = run(main())
    assert good[0].shape == (8, 5) and isinstance(bad, ValueError)


@pytest.mark.slow  # > 1.5 s
def test_speech_encoder_returns_level_one_and_batches_exactly(bundle):
    encoder = LocalSpeechEncoder(bundle)
    rng = np.random.default_rng(1)
    t = np.arange(16000 * 2) / 16000
    waves = [
        (0.3 * np.sin(2 * np.pi * 180 * t[:n]) + 0.01 * rng.standard_normal(n)).astype(np.float32)
        for n in (16000 * 2, 7777, 321, 16000)
    ]

    async def main():
        return await encoder.encode(waves[0]), await encoder.encode_batch(waves)

    single, batch = run(main())
    expected = [bundle.codec.encode(torch.from_numpy(w))[0].numpy() for w in waves]
    assert single.dtype == np.int64 and single.shape == (100,) and np.array_equal(single, expected[0])
    assert [c.shape for c in batch] == [(100,), (25,), (2,), (50,)]
    for got, want in zip(batch, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_network_runs_in_numpy_by_default_and_decodes_as_torch_does(bundle, bank):
    prompt = bank.prompt(bank.default)
    semantic = np.random.default_rng(3).integers(0, 60, 10)

    async def decode(backend):
        key = await backend.register_voice(prompt)
        try:
            return await backend.decode_chunk(semantic, None, key, seed=11)
        finally:
            backend.close()

    fast, plain = LocalAcousticBackend(bundle), LocalAcousticBackend(bundle, numpy_network=False)
    assert isinstance(fast.decoder.model, NumpySoundStorm) and plain.decoder.model is bundle.acoustic
    (fast_codes, fast_wave), (codes, wave) = run(decode(fast)), run(decode(plain))
    assert np.array_equal(fast_codes, codes)
    np.testing.assert_allclose(fast_wave, wave, atol=1e-5)
