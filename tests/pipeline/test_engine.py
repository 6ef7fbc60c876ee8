"""AssistantEngine with fake backends: routing, streaming, interrupt, errors, history."""

import asyncio
import dataclasses

import numpy as np
import pytest
from pipeline_fakes import N_Q, FakeAcoustic, FakeLM, FakeSpeech, Script, collect, make_backends, make_vocab

from assistant.audio import OUTPUT_FRAME_SAMPLES
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.pipeline.outputs import (
    AudioFrame,
    ImageOutput,
    MusicOutput,
    ReplyTextDelta,
    TranscriptDelta,
    TurnError,
    TurnFinished,
)
from assistant.protocol import FinishReason
from assistant.vocab import Modality

SP, IM, MU = Modality.SPEECH, Modality.IMAGE, Modality.MUSIC


@pytest.fixture
def vocab():
    return make_vocab()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def text_of(outputs, cls):
    return "".join(o.text for o in outputs if isinstance(o, cls))


def speech_turn():
    return UserTurn(audio=np.zeros(16000, dtype=np.float32))


def test_routes_every_modality(vocab):
    s = Script(vocab)
    speech_codes = list(range(30))
    script = (
        [vocab.ins_id]
        + s.text("what is it")
        + [vocab.res_id]
        + s.text(" héllo")
        + s.seg(SP, speech_codes)
        + s.seg(IM, [1, 2, 3])
        + s.text(" and")
        + s.seg(MU, [4, 5, 6, 7])
        + [vocab.eos_id]
    )
    lm = FakeLM(script, chunk=3)
    backends, speech, acoustic, media = make_backends(lm)

    async def main():
        session = AssistantEngine(backends, vocab, EngineConfig()).new_session()
        return await collect(session.respond(speech_turn())), session

    outputs, session = run(main())
    assert text_of(outputs, TranscriptDelta) == "what is it"
    assert text_of(outputs, ReplyTextDelta) == " héllo and"
    assert speech.calls == 1
    # the prompt holds the user's level-1 codes as a speech segment
    sp = vocab.range_of(SP)
    assert sp.start_id in lm.prompts[0] and sp.end_id in lm.prompts[0]
    speech_frames = [o for o in outputs if isinstance(o, AudioFrame) and o.source == "speech"]
    # every speech code the LM produced was decoded once, in order, in the default chunk plan (doubling to the most)
    assert np.concatenate(acoustic.chunks).tolist() == speech_codes
    plan, left, target = [], len(speech_codes), EngineConfig().first_chunk_frames
    while left > 0:
        plan.append(min(target, left))
        left, target = left - plan[-1], min(EngineConfig().chunk_frames, 2 * target)
    assert [c.size for c in acoustic.chunks] == plan
    assert acoustic.contexts[0] is None and acoustic.voices_used == [None] * len(acoustic.chunks)
    # one 20 ms frame per codec frame (the fade tail is part of the last)
    assert len(speech_frames) == len(speech_codes)
    assert all(f.pcm.shape == (OUTPUT_FRAME_SAMPLES,) and f.pcm.dtype == np.int16 for f in speech_frames)
    assert np.abs(speech_frames[0].pcm).max() > 1000
    assert np.abs(speech_frames[-1].pcm[-3:]).max() < 100  # faded out at the end
    images = [o for o in outputs if isinstance(o, ImageOutput)]
    assert [(i.index, i.width, i.height) for i in images] == [(0, 8, 8)] and media.images == [[1, 2, 3]]
    music = [o for o in outputs if isinstance(o, MusicOutput)]
    assert len(music) == 1 and media.music == [[4, 5, 6, 7]] and music[0].duration_s == pytest.approx(400 / 16000)
    music_frames = [o for o in outputs if isinstance(o, AudioFrame) and o.source == "music"]
    assert len(music_frames) == 2
    # order: music frames come after the MusicOutput, which comes after the speech
    kinds = [type(o).__name__ + (o.source if isinstance(o, AudioFrame) else "") for o in outputs]
    assert kinds.index("MusicOutput") > max(i for i, k in enumerate(kinds) if k == "AudioFramespeech")
    assert kinds.index("AudioFramemusic") > kinds.index("MusicOutput")
    assert outputs[-1] == TurnFinished(FinishReason.COMPLETE)
    assert sum(isinstance(o, TurnFinished) for o in outputs) == 1
    assert session.stats.total_dropped() == 0
    assert all(v == 0 for v in session.pending().values())


def test_chunk_sizes_and_context(vocab):
    s = Script(vocab)
    lm = FakeLM(s.seg(SP, [i % 64 for i in range(70)]) + [vocab.eos_id], chunk=7)
    backends, _, acoustic, _ = make_backends(lm)
    config = EngineConfig(first_chunk_frames=10, chunk_frames=25, context_frames=5)

    async def main():
        session = AssistantEngine(backends, vocab, config).new_session()
        return await collect(session.respond(UserTurn(text="hi")))

    outputs = run(main())
    assert [c.size for c in acoustic.chunks] == [10, 20, 25, 15]
    assert acoustic.contexts[0] is None
    assert [c.shape for c in acoustic.contexts[1:]] == [(4, 5)] * 3
    np.testing.assert_array_equal(acoustic.contexts[1][0], acoustic.chunks[0][-5:])
    assert outputs[-1].reason is FinishReason.COMPLETE


def test_first_audio_before_lm_finishes(vocab):
    s = Script(vocab)
    script = s.seg(SP, range(40)) + [vocab.eos_id]
    lm = FakeLM(script, chunk=1, pause_after=16)  # <sosp> + 15 codes, then waits

    async def main():
        backends, *_ = make_backends(lm)
        session = AssistantEngine(backends, vocab, EngineConfig()).new_session()
        outputs = []

        async def consume():
            async for out in session.respond(UserTurn(text="talk")):
                outputs.append(out)

        task = asyncio.create_task(consume())
        await lm.paused.wait()
        for _ in range(500):  # the LM waits on the gate while the first chunk is decoded and played
            if any(isinstance(o, AudioFrame) for o in outputs):
                break
            await asyncio.sleep(0.005)
        assert any(isinstance(o, AudioFrame) for o in outputs) and not lm.gate.is_set()
        assert not any(isinstance(o, TurnFinished) for o in outputs)
        lm.gate.set()
        await task
        return outputs

    outputs = run(main())
    assert any(isinstance(o, AudioFrame) for o in outputs)
    assert outputs[-1].reason is FinishReason.COMPLETE


def test_interrupt_mid_speech_then_next_turn(vocab):
    s = Script(vocab)
    codes = [i % 64 for i in range(200)]
    lm = FakeLM(s.seg(SP, codes) + [vocab.eos_id], chunk=1, pause_after=60)

    async def main():
        backends, _, acoustic, _ = make_backends(lm)
        session = AssistantEngine(backends, vocab, EngineConfig(output_queue_size=8)).new_session()
        outputs = []
        async for out in session.respond(UserTurn(text="talk")):
            outputs.append(out)
            if isinstance(out, AudioFrame) and len(outputs) == 3:
                await asyncio.wait_for(lm.paused.wait(), 5)  # queues are full/backpressured by now
                session.interrupt()
        after_interrupt = session.pending()
        assert lm.closed == 1 and lm.finished_normally == 0  # the iterator's finally ran (aclose)
        assert len(session.conversation.turns) == 1
        partial = session.conversation.turns[0].assistant.token_ids
        assert 0 < len(partial) < 200 and partial[0] == vocab.range_of(SP).start_id
        # what was decoded is a prefix of the codes the LM produced before the interrupt: three frames were played,
        # so at least the first chunk; nothing past the codes kept in the history
        decoded = np.concatenate(acoustic.chunks).tolist()
        produced = vocab.ids_to_codes(SP, partial[1:])
        assert EngineConfig().first_chunk_frames <= len(decoded) <= len(produced)
        assert decoded == produced[: len(decoded)] == codes[: len(decoded)]
        chunks_decoded = len(acoustic.chunks)

        lm.script, lm.pause_after = s.text("ok") + [vocab.eos_id], None
        second = await collect(session.respond(UserTurn(text="again")))
        assert len(acoustic.chunks) == chunks_decoded  # the interrupted reply decodes nothing more; "ok" is text
        return outputs, after_interrupt, second, session

    outputs, after_interrupt, second, session = run(main())
    assert outputs[-1] == TurnFinished(FinishReason.INTERRUPTED)
    assert sum(isinstance(o, TurnFinished) for o in outputs) == 1
    assert len(outputs) == 4  # three frames, then nothing queued leaks out
    assert all(v == 0 for v in after_interrupt.values()), after_interrupt
    assert text_of(second, ReplyTextDelta) == "ok"
    assert second[-1] == TurnFinished(FinishReason.COMPLETE)
    assert len(session.conversation.turns) == 2


def test_interrupt_from_another_task(vocab):
    s = Script(vocab)
    lm = FakeLM(s.text("a" * 50) + [vocab.eos_id], chunk=1, pause_after=10)

    async def main():
        backends, *_ = make_backends(lm)
        session = AssistantEngine(backends, vocab, EngineConfig()).new_session()

        async def interrupter():
            await lm.paused.wait()
            session.interrupt()

        task = asyncio.create_task(interrupter())
        outputs = await collect(session.respond(UserTurn(text="x")))
        await task
        return outputs

    outputs = run(main())
    assert outputs[-1].reason is FinishReason.INTERRUPTED
    assert lm.closed == 1


@pytest.mark.parametrize("where", ["lm", "acoustic"])
def test_backend_error_then_next_turn_works(vocab, where):
    s = Script(vocab)
    script = s.text("hi") + s.seg(SP, range(30)) + [vocab.eos_id]
    lm = FakeLM(script, chunk=2, fail_after=20 if where == "lm" else None)
    acoustic = FakeAcoustic(fail=where == "acoustic")

    async def main():
        backends, *_ = make_backends(lm, acoustic)
        session = AssistantEngine(backends, vocab, EngineConfig()).new_session()
        first = await collect(session.respond(UserTurn(text="x")))
        lm.fail_after, acoustic.fail = None, False
        lm.script = s.text("fine") + [vocab.eos_id]
        second = await collect(session.respond(UserTurn(text="y")))
        return first, second, session

    first, second, session = run(main())
    errors = [o for o in first if isinstance(o, TurnError)]
    assert len(errors) == 1 and errors[0].code == "turn_failed" and errors[0].error_id
    assert "exploded" not in errors[0].message  # the exception's text goes to the log, not the caller
    assert first[-1] == TurnFinished(FinishReason.ERROR) and isinstance(first[-2], TurnError)
    assert lm.closed == 2
    assert text_of(second, ReplyTextDelta) == "fine" and second[-1].reason is FinishReason.COMPLETE
    assert all(v == 0 for v in session.pending().values())
    # the failed turn (and its partial reply) is not in the history; the good one is
    assert [t.user.text for t in session.conversation.turns] == ["y"]


def test_invalid_sequences_are_dropped(vocab):
    s = Script(vocab)
    script = (
        s.codes(SP, [1, 2])
        + [s.end(SP), s.end(IM)]
        + s.seg(IM, [])
        + [vocab.size + 5, -1]
        + [s.start(IM)]
        + s.codes(SP, [3])
        + [s.start(MU)]
        + s.codes(IM, [9])
        + [s.end(IM)]
        + [vocab.human_id]
        + s.text("ok")
        + [s.start(MU)]
        + s.codes(MU, [1])  # unterminated music
    )
    lm = FakeLM(script, chunk=4)

    async def main():
        backends, _, _, media = make_backends(lm)
        session = AssistantEngine(backends, vocab, EngineConfig()).new_session()
        return await collect(session.respond(UserTurn(text="x"))), session, media

    outputs, session, media = run(main())
    st = session.stats
    assert st.stray_codes == 3 and st.stray_ends == 2 and st.empty_segments == 1 and st.invalid_ids == 2
    assert st.nested_starts == 1 and st.markers_ignored == 1 and st.unterminated_segments == 1
    assert media.images == [[9]] and media.music == []
    assert text_of(outputs, ReplyTextDelta) == "ok"
    assert outputs[-1] == TurnFinished(FinishReason.MAX_TOKENS)  # no stop id: the stream simply ended


def test_history_and_forced_speech(vocab):
    s = Script(vocab)
    lm = FakeLM(s.codes(SP, range(12)) + [s.end(SP), vocab.eos_id], chunk=5)

    async def main():
        backends, _, acoustic, _ = make_backends(lm)
        session = AssistantEngine(backends, vocab, EngineConfig(force_speech_for_spoken_turns=True)).new_session()
        first = await collect(session.respond(speech_turn()))
        second = await collect(session.respond(UserTurn(text="and text?")))
        return first, second, session, acoustic

    first, second, session, acoustic = run(main())
    assert lm.forced == ["speech", None]  # forced for the spoken turn only
    sp = vocab.range_of(SP)
    assert lm.prompts[0][-1] == sp.start_id  # AnyGPT force marker ends the prompt
    assert sum(c.size for c in acoustic.chunks) >= 12
    assert sum(isinstance(o, AudioFrame) for o in first) == 12
    # the typed turn is not forced: the same codes, without the <sosp> the force marker supplied, are not speech
    assert second == [TurnFinished(FinishReason.COMPLETE)] and session.stats.stray_codes == 12
    turns = session.conversation.turns
    assert len(turns) == 2
    assert turns[0].assistant.token_ids[0] == sp.start_id and turns[0].user.speech_codes
    assert len(lm.prompts[1]) > len(lm.prompts[0])  # the history is in the second prompt
    assert turns[1].user.text == "and text?"


def test_slow_consumer_backpressures_without_dropping_audio(vocab):
    s = Script(vocab)
    lm = FakeLM(s.seg(SP, [i % 64 for i in range(120)]) + [vocab.eos_id], chunk=10)

    async def main():
        backends, *_ = make_backends(lm)
        session = AssistantEngine(backends, vocab, EngineConfig(output_queue_size=2, chunk_queue_size=1)).new_session()
        frames = 0
        async for out in session.respond(UserTurn(text="x")):
            assert session.pending()["output_queue"] <= 2 and session.pending()["chunk_queue"] <= 1
            frames += isinstance(out, AudioFrame)
            await asyncio.sleep(0)
        return frames

    assert run(main()) == 120


def test_one_turn_at_a_time(vocab):
    s = Script(vocab)
    lm = FakeLM(s.text("abc") + [vocab.eos_id], pause_after=1)

    async def main():
        backends, *_ = make_backends(lm)
        session = AssistantEngine(backends, vocab, EngineConfig()).new_session()
        gen = session.respond(UserTurn(text="x"))
        first = await gen.__anext__()
        with pytest.raises(RuntimeError, match="already in progress"):
            await session.respond(UserTurn(text="y")).__anext__()
        session.interrupt()
        rest = [o async for o in gen]
        await session.close()
        return first, rest

    first, rest = run(main())
    assert first == ReplyTextDelta("a")  # the first turn was running when the second was refused
    assert rest[-1].reason is FinishReason.INTERRUPTED


def test_config_validation():
    with pytest.raises(ValueError):
        EngineConfig(force_modality="text")
    with pytest.raises(ValueError):
        EngineConfig(chunk_queue_size=0)
    with pytest.raises(ValueError):
        UserTurn()


def _bank():
    from assistant.models.voices import VoiceBank

    alto = np.arange(N_Q * 6, dtype=np.int64).reshape(N_Q, 6) % 64
    return VoiceBank({"alto": alto, "bass": (alto * 7 + 3) % 64}, "alto", codebook_size=64)


def test_voice_is_registered_once_and_sent_again_to_a_backend_that_lost_it(vocab):
    from assistant.pipeline.backends import voice_key

    s = Script(vocab)
    lm = FakeLM(s.seg(SP, [i % 64 for i in range(60)]) + [vocab.eos_id], chunk=7)
    bank = _bank()

    async def main():
        backends, _, acoustic, _ = make_backends(lm)
        engine = AssistantEngine(backends, vocab, EngineConfig(), voices=bank)
        session = engine.new_session("bass")
        first = await collect(session.respond(UserTurn(text="one")))
        after_first = (list(acoustic.registered), list(acoustic.voices_used), acoustic.prompts_sent)
        acoustic.forget()  # the replica restarted: it no longer knows the key
        second = await collect(session.respond(UserTurn(text="two")))
        return first, second, after_first, acoustic

    first, second, (registered, used, sent), acoustic = run(main())
    key = voice_key(bank.prompt("bass"))
    # 60 codes are 4 chunks (10, 20, 25, 5)
    assert registered == [key] and used == [key] * 4 and sent == 0  # once, then only the key travels
    assert acoustic.registered == [key]  # not registered again by a second register_voice call ...
    assert acoustic.prompts_sent == 1  # ... but the prompt went once more with the chunk the backend refused
    assert acoustic.voices_used == [key] * 8
    for outputs in (first, second):
        assert sum(isinstance(o, AudioFrame) for o in outputs) == 60
        assert outputs[-1] == TurnFinished(FinishReason.COMPLETE)


def test_a_backend_that_keeps_refusing_the_voice_fails_the_turn_after_one_retry(vocab, caplog):
    s = Script(vocab)
    lm = FakeLM(s.seg(SP, range(30)) + [vocab.eos_id], chunk=5)

    async def main():
        backends, _, acoustic, _ = make_backends(lm)
        acoustic.forget_always = True
        session = AssistantEngine(backends, vocab, EngineConfig(), voices=_bank()).new_session()
        return await collect(session.respond(UserTurn(text="x"))), acoustic

    outputs, acoustic = run(main())
    errors = [o for o in outputs if isinstance(o, TurnError)]
    assert len(errors) == 1 and errors[0].code == "turn_failed"
    (record,) = [r for r in caplog.records if errors[0].error_id in r.getMessage()]
    assert "unknown voice key" in record.getMessage()
    assert outputs[-1] == TurnFinished(FinishReason.ERROR)
    assert acoustic.prompts_sent == 1 and acoustic.chunks == []


def test_no_voice_bank_sends_no_voice(vocab):
    s = Script(vocab)
    lm = FakeLM(s.seg(SP, range(12)) + [vocab.eos_id], chunk=5)

    async def main():
        backends, _, acoustic, _ = make_backends(lm)
        session = AssistantEngine(backends, vocab, EngineConfig()).new_session()
        return await collect(session.respond(UserTurn(text="x"))), acoustic

    outputs, acoustic = run(main())
    assert acoustic.registered == [] and acoustic.voices_used == [None, None]
    assert outputs[-1] == TurnFinished(FinishReason.COMPLETE)


def test_the_speech_encoder_must_return_level_one_only(vocab, caplog):
    class TwoLevels(FakeSpeech):
        async def encode(self, wave):
            return np.zeros((N_Q, 5), dtype=np.int64)  # [n_q, F]: the old contract

    lm = FakeLM(Script(vocab).text("ok") + [vocab.eos_id])

    async def main():
        backends, *_ = make_backends(lm)
        backends = dataclasses.replace(backends, speech=TwoLevels())
        session = AssistantEngine(backends, vocab, EngineConfig()).new_session()
        return await collect(session.respond(speech_turn()))

    outputs = run(main())
    errors = [o for o in outputs if isinstance(o, TurnError)]
    assert len(errors) == 1 and errors[0].code == "turn_failed"
    (record,) = [r for r in caplog.records if errors[0].error_id in r.getMessage()]
    assert "expected level 1" in record.getMessage()
    assert lm.prompts == []  # nothing reached the LM
