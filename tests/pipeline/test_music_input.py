"""A tune from the user: the media backend turns the WAV file into music tokens and the engine puts them in the user
message (AnyGPT reads music; ``assistant.prompts`` lays it out before the speech and text)."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
from pipeline_fakes import FakeLM, Script, collect, make_backends, make_vocab

from assistant.audio import resample
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.pipeline.outputs import TurnError, TurnFinished
from assistant.prompts import ChatPromptBuilder, UserMessage
from assistant.protocol import FinishReason
from assistant.vocab import Modality


def tune(seconds: float = 1.0, rate: int = 44100, channels: int = 2) -> tuple[bytes, np.ndarray]:
    """A WAV file of a rising two-note tune, and its samples (float32, mono)."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = np.where(t < seconds / 2, 330.0, 440.0)
    mono = (0.4 * np.sin(2 * np.pi * pitch * t)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.stack([mono] * channels, axis=1), rate, subtype="FLOAT", format="WAV")
    return buffer.getvalue(), mono


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def test_a_tunes_tokens_reach_the_prompt_with_the_question():
    vocab = make_vocab()
    s = Script(vocab)
    lm = FakeLM(s.text("happy") + [vocab.eos_id])
    backends, _, _, media = make_backends(lm)
    wav, _ = tune(0.2, rate=16000, channels=1)

    async def main():
        session = AssistantEngine(backends, vocab, EngineConfig()).new_session()
        outputs = await collect(session.respond(UserTurn(text="what mood is this music", music=wav)))
        await session.close()
        return outputs

    outputs = run(main())
    assert outputs[-1] == TurnFinished(FinishReason.COMPLETE)
    tokens = asyncio.run(media.music_codes(wav))
    expected = ChatPromptBuilder(vocab).user_message_ids(
        UserMessage(text="what mood is this music", music_codes=tokens)
    )
    prompt = lm.prompts[0]
    start = prompt.index(vocab.range_of(Modality.MUSIC).start_id)
    assert prompt[start : start + len(expected)] == expected  # the music segment, then the question


def test_an_unreadable_tune_fails_the_turn_with_a_clear_code():
    vocab = make_vocab()
    lm = FakeLM([vocab.eos_id])
    backends, *_ = make_backends(lm)

    async def main():
        session = AssistantEngine(backends, vocab, EngineConfig()).new_session()
        outputs = await collect(session.respond(UserTurn(text="and this?", music=b"not a wav")))
        await session.close()
        return outputs

    outputs = run(main())
    errors = [o for o in outputs if isinstance(o, TurnError)]
    assert len(errors) == 1 and errors[0].code == "turn_failed" and not lm.prompts
    assert outputs[-1] == TurnFinished(FinishReason.ERROR)


def test_a_tune_alone_is_a_turn():
    assert UserTurn(music=b"RIFF").music == b"RIFF"
    with pytest.raises(ValueError, match="a tune"):
        UserTurn()


def test_the_local_media_backend_encodes_a_tune_at_the_codecs_rate():
    from assistant.models.embedded.music import MusicDetokenizer
    from assistant.pipeline.local import LocalMediaBackend

    codec = MusicDetokenizer()  # unfitted codebooks: encoding is the same code path
    media = LocalMediaBackend(SimpleNamespace(image=None, music=codec))
    wav, mono = tune(1.0, rate=44100, channels=2)
    tokens = run(media.music_codes(wav))
    assert tokens == codec.encode(resample(mono, 44100, codec.sample_rate))  # channels averaged, resampled
    frames = codec.num_frames(codec.sample_rate)  # one second at the codec's frame rate
    assert len(tokens) == codec.config.n_codebooks * frames
    assert all(0 <= t < codec.vocab_size for t in tokens)
    with pytest.raises(ValueError, match="cannot read the sound file"):
        run(media.music_codes(b"RIFF....WAVEjunk"))
    with pytest.raises(RuntimeError, match="without a music codec"):
        run(LocalMediaBackend(SimpleNamespace(image=None, music=None)).music_codes(wav))


@pytest.mark.slow  # the committed embedded models end to end: > 1.5 s
def test_a_tune_and_a_question_complete_a_turn_with_the_committed_models():
    from assistant.models.loading import ModelSpec, load_models
    from assistant.pipeline.local import local_backends

    bundle = load_models(ModelSpec(seed=0))
    backends = local_backends(bundle)
    prompts: list[list[int]] = []
    stream = backends.lm.stream

    def recording_stream(prompt_ids, force_modality):
        prompts.append(list(prompt_ids))
        return stream(prompt_ids, force_modality)

    backends.lm.stream = recording_stream  # type: ignore[method-assign]
    engine = AssistantEngine(backends, bundle.vocab, EngineConfig())
    wav, _ = tune(2.0, rate=22050, channels=1)

    async def main():
        session = engine.new_session()
        outputs = await collect(session.respond(UserTurn(text="what mood is this music", music=wav)))
        await session.close()
        return outputs

    try:
        outputs = asyncio.run(asyncio.wait_for(main(), 300))
    finally:
        backends.lm.close()
        backends.acoustic.close()
    assert not [o for o in outputs if isinstance(o, TurnError)]
    assert outputs[-1].reason in (FinishReason.COMPLETE, FinishReason.MAX_TOKENS)
    music = bundle.vocab.range_of(Modality.MUSIC)
    in_prompt = [i for i in prompts[0] if music.contains(i)]
    assert music.start_id in prompts[0] and music.end_id in prompts[0]
    assert len(in_prompt) == 2 * 25 * 4  # two seconds at the embedded codec's 25 frames of 4 levels a second
