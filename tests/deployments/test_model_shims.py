"""The speech and acoustic Serve shims and their Ray backends, without a Ray cluster: the deployment classes are
constructed directly (``func_or_class``) and the handles are fakes."""

import asyncio
import dataclasses

import numpy as np
import pytest

from assistant.models.loading import ModelSpec, load_vocab_and_voices
from assistant.pipeline.backends import UnknownVoiceKeyError, voice_key
from deployments.acoustic import AcousticDecoderDeployment
from deployments.backends import RayAcousticBackend, RaySpeechEncoder
from deployments.speech_tokenizer import SpeechTokenizerDeployment


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


def test_acoustic_replica_knows_the_voice_bank_from_the_start_and_reports_its_load():
    _, bank = load_vocab_and_voices(ModelSpec())
    replica = AcousticDecoderDeployment.func_or_class(None, batch_window_s=0.002, max_batch=4)
    assert replica._acoustic.batcher.window_s == 0.002 and replica._acoustic.batcher.max_batch == 4
    key = voice_key(bank.prompt(bank.default))

    async def main():
        codes, wave = await replica.decode_chunk(np.arange(10), None, key)  # never registered by anyone
        assert codes.shape == (8, 10) and wave.shape == (3200,)
        with pytest.raises(UnknownVoiceKeyError):
            await replica.decode_chunk(np.arange(10), codes, "voice-unknown")
        other = (bank.prompt(bank.default) + 1) % 1024
        new_key = await replica.register_voice(other)
        assert new_key == voice_key(other)
        await replica.decode_chunk(np.arange(5), codes, new_key)
        return replica.stats()

    stats = run(main())
    assert replica.record_autoscaling_stats() == {"load": 0.0}  # nothing waits, nothing in flight
    busy = dataclasses.replace(replica._acoustic.stats(), queue_depth=3, in_flight=2)
    replica._acoustic.stats = lambda: busy
    assert replica.record_autoscaling_stats() == {"load": 5.0}  # chunks waiting + chunks being decoded
    assert stats["requests"] == 2 and stats["batches"] == 2 and stats["queue_depth"] == 0
    assert stats["audio_s"] == pytest.approx(0.3) and stats["real_time_factor"] > 0


def test_speech_replica_encodes_a_batch_in_one_padded_call_and_returns_level_one():
    replica = SpeechTokenizerDeployment.func_or_class(None, max_batch_size=4, batch_wait_timeout_s=0.05)
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 4000, 9000)]
    calls = []
    encoder = replica._encoder
    inner = encoder.encode_batch

    async def spy(batch):
        calls.append(len(batch))
        return await inner(batch)

    encoder.encode_batch = spy
    # the body under @serve.batch (the wrapper itself needs a running replica): what one batch of three does
    body = SpeechTokenizerDeployment.func_or_class.encode.__wrapped__
    codes = run(body(replica, waves))
    assert calls == [3]  # one padded call for the three
    assert [c.shape for c in codes] == [(50,), (13,), (29,)] and all(c.dtype == np.int64 for c in codes)
    for wave, got in zip(waves, codes, strict=True):
        (want,) = run(inner([wave]))
        np.testing.assert_array_equal(got, want)


class _Method:
    def __init__(self, result=None, error=None):
        self.result, self.error, self.calls = result, error, []

    def remote(self, *args):
        self.calls.append(args)

        async def answer():
            if self.error is not None:
                raise self.error
            return self.result

        return answer()


class _Handle:
    def __init__(self, **methods):
        self.__dict__.update(methods)


def test_ray_acoustic_backend_sends_the_key_and_maps_a_lost_voice():
    from ray.exceptions import RayTaskError

    prompt = np.ones((8, 4), dtype=np.int64)
    lost = RayTaskError("decode_chunk", "traceback", UnknownVoiceKeyError("unknown voice key 'k'"))
    handle = _Handle(register_voice=_Method("k"), decode_chunk=_Method(error=lost.as_instanceof_cause()))
    backend = RayAcousticBackend(handle)

    async def main():
        assert await backend.register_voice(prompt) == "k"
        with pytest.raises(UnknownVoiceKeyError):
            await backend.decode_chunk(np.arange(3), None, "k")
        handle.decode_chunk.error = RuntimeError("boom")
        with pytest.raises(RuntimeError, match="boom"):
            await backend.decode_chunk(np.arange(3), None, "k", prompt=prompt)
        handle.decode_chunk.error, handle.decode_chunk.result = None, (np.zeros((8, 3)), np.zeros(960))
        return await backend.decode_chunk(np.arange(3), None, "k")

    codes, wave = run(main())
    assert codes.shape == (8, 3) and wave.shape == (960,)
    (sent,) = handle.register_voice.calls
    assert sent[0].dtype == np.int64
    no_prompt, with_prompt, last = handle.decode_chunk.calls
    assert no_prompt[2:] == ("k", None) and with_prompt[3] is prompt and last[3] is None  # the prompt only when asked


def test_ray_speech_encoder_passes_level_one_through():
    handle = _Handle(encode=_Method(np.arange(7, dtype=np.int64)))
    codes = run(RaySpeechEncoder(handle).encode(np.zeros(2240)))
    assert codes.shape == (7,) and handle.encode.calls[0][0].dtype == np.float32
