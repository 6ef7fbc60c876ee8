"""The engine's limits with fake backends: prompts always fit the LM's context with room for the reply, replies stop at
their audio limit, failed turns are forgotten, and errors reach the caller without exception text."""

import asyncio
import logging
import re
import types

import numpy as np
import pytest
from pipeline_fakes import FakeAcoustic, FakeLM, FakeMedia, FakeSpeech, Script, collect, make_backends, make_vocab

from assistant.decoding.lm_sampler import GenerationSettings
from assistant.pipeline.backends import BackendUnavailableError, LMLimits
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn, prompt_budget
from assistant.pipeline.outputs import AudioFrame, MusicOutput, TurnError, TurnFinished
from assistant.pipeline.vllm_lm import VLLMBackend
from assistant.prompts import UserMessage
from assistant.protocol import FinishReason
from assistant.vocab import Modality

SP, MU = Modality.SPEECH, Modality.MUSIC


@pytest.fixture
def vocab():
    return make_vocab()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


def errors_in(outputs):
    return [o for o in outputs if isinstance(o, TurnError)]


def prompt_text(vocab, prompt):
    """The text of a prompt (its segments and markers left out)."""
    return vocab.decode_text([i for i in prompt if 0 <= i < vocab.text_size])


# ---------------------------------------------------------------------------------------------------------- prompts


def test_prompt_budget_leaves_the_reply_room_and_never_less_than_half_the_context():
    assert prompt_budget(4096, None) == 4096  # limits unknown: the configured bound alone
    assert prompt_budget(4096, LMLimits(2048, 1000)) == 1048  # the embedded model: 2048 positions, 1000 new tokens
    assert prompt_budget(512, LMLimits(2048, 1000)) == 512
    # AnyGPT's settings allow 2504 new tokens in a 2048-position slot: the prompt still gets half
    assert prompt_budget(4096, LMLimits(2048, 2504)) == 1024
    with pytest.raises(ValueError):
        LMLimits(context_tokens=1, max_reply_tokens=1)
    with pytest.raises(ValueError):
        LMLimits(context_tokens=64, max_reply_tokens=0)


def test_thirty_turns_in_a_small_context_all_fit_with_room_for_the_reply(vocab):
    limits = LMLimits(context_tokens=320, max_reply_tokens=48)
    s = Script(vocab)
    reply = s.text("a reply of some thirty tokens, more or less") + [vocab.eos_id]
    assert len(reply) <= limits.max_reply_tokens
    lm = FakeLM(reply, chunk=4, lm_limits=limits)  # refuses any prompt that leaves less than 48 positions

    async def main():
        backends, *_ = make_backends(lm)
        session = AssistantEngine(backends, vocab, EngineConfig()).new_session()  # max_history_tokens 4096 > 320
        outputs = []
        for turn in range(30):
            outputs.append(await collect(session.respond(UserTurn(text=f"question number {turn}, please"))))
        return outputs, session

    outputs, session = run(main())
    assert all(not errors_in(o) and o[-1] == TurnFinished(FinishReason.COMPLETE) for o in outputs)
    assert len(lm.prompts) == 30
    assert max(len(p) for p in lm.prompts) + limits.max_reply_tokens <= limits.context_tokens
    # old turns were dropped, recent ones kept: the last prompt holds the previous question, not the first
    last = prompt_text(vocab, lm.prompts[-1])
    assert "question number 28" in last and "question number 0," not in last
    assert 0 < len(session.conversation.turns) < 30
    assert lm.limits_calls == 1  # asked once per engine


def test_concurrent_first_turns_ask_the_lm_for_its_limits_once(vocab):
    class SlowLimitsLM(FakeLM):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.asked = asyncio.Event()
            self.answer = asyncio.Event()

        async def limits(self):
            self.limits_calls += 1
            self.asked.set()
            await self.answer.wait()
            return self.lm_limits

    lm = SlowLimitsLM(Script(vocab).text("ok") + [vocab.eos_id], lm_limits=LMLimits(1024, 64))

    async def main():
        backends, *_ = make_backends(lm)
        engine = AssistantEngine(backends, vocab, EngineConfig())
        turns = [asyncio.create_task(collect(engine.new_session().respond(UserTurn(text=f"hi {i}")))) for i in range(3)]
        await lm.asked.wait()
        await asyncio.sleep(0)  # the other turns reach the lock while the first ask is pending
        lm.answer.set()
        return await asyncio.gather(*turns)

    results = run(main())
    assert all(r[-1] == TurnFinished(FinishReason.COMPLETE) for r in results)
    assert lm.limits_calls == 1


def test_a_message_too_long_for_the_model_fails_alone_and_keeps_the_history(vocab):
    limits = LMLimits(context_tokens=256, max_reply_tokens=32)
    lm = FakeLM(Script(vocab).text("fine") + [vocab.eos_id], lm_limits=limits)
    long_text = "blah " * 40

    async def main():
        backends, *_ = make_backends(lm)
        engine = AssistantEngine(backends, vocab, EngineConfig())
        session = engine.new_session()
        first = await collect(session.respond(UserTurn(text="short one")))
        too_long = await collect(session.respond(UserTurn(text=long_text)))
        prompts_after = len(lm.prompts)
        third = await collect(session.respond(UserTurn(text="short again")))
        return engine, session, first, too_long, prompts_after, third

    engine, session, first, too_long, prompts_after, third = run(main())
    assert first[-1] == TurnFinished(FinishReason.COMPLETE)
    (error,) = errors_in(too_long)
    assert too_long[-1] == TurnFinished(FinishReason.ERROR) and error.code == "too_large" and error.error_id
    match = re.fullmatch(r"your message is too long for this model \((\d+) tokens, at most (\d+)\)", error.message)
    assert match is not None, error.message
    message_tokens, at_most = int(match[1]), int(match[2])
    assert message_tokens == len(vocab.encode_text(long_text))
    builder = engine.prompt_builder
    overhead = builder.prompt_length(None, UserMessage(text="x")) - len(vocab.encode_text("x"))  # template, system
    assert message_tokens > at_most and at_most == 256 - 32 - overhead
    assert prompts_after == 1  # the LM never saw it
    assert third[-1] == TurnFinished(FinishReason.COMPLETE)
    assert [t.user.text for t in session.conversation.turns] == ["short one", "short again"]  # history kept


def test_a_failed_turn_is_forgotten_so_it_cannot_fail_the_next_ones(vocab):
    s = Script(vocab)
    lm = FakeLM(s.text("a long partial answer that then breaks") + [vocab.eos_id], chunk=2, fail_after=20)

    async def main():
        backends, *_ = make_backends(lm)
        session = AssistantEngine(backends, vocab, EngineConfig()).new_session()
        failed = await collect(session.respond(UserTurn(text="first question")))
        turns_after_failure = len(session.conversation.turns)
        lm.fail_after, lm.script = None, s.text("ok") + [vocab.eos_id]
        good = await collect(session.respond(UserTurn(text="second question")))
        return failed, turns_after_failure, good, session

    failed, turns_after_failure, good, session = run(main())
    assert failed[-1] == TurnFinished(FinishReason.ERROR) and turns_after_failure == 0
    assert good[-1] == TurnFinished(FinishReason.COMPLETE)
    assert "first question" not in prompt_text(vocab, lm.prompts[1])
    assert [t.user.text for t in session.conversation.turns] == ["second question"]


def test_ids_outside_the_vocabulary_end_no_turn_and_never_reach_the_history(vocab):
    # a negative first id once made remembering the reply raise outside the turn's error handling: respond hung
    s = Script(vocab)
    lm = FakeLM([-1, vocab.size + 5] + s.text("fine") + [-7, vocab.eos_id])

    async def main():
        backends, *_ = make_backends(lm)
        session = AssistantEngine(backends, vocab, EngineConfig()).new_session()
        outputs = await collect(session.respond(UserTurn(text="question")))
        return outputs, session

    outputs, session = run(main())
    assert outputs[-1] == TurnFinished(FinishReason.COMPLETE) and not errors_in(outputs)
    assert session.stats.invalid_ids == 3
    kept = session.conversation.turns[0].assistant.token_ids
    assert kept and all(0 <= i < vocab.size for i in kept)


# ---------------------------------------------------------------------------------------------------------- reply audio


class EndlessSpeechLM(FakeLM):
    """Opens a speech segment and never stops speaking (until the engine closes the stream)."""

    def __init__(self, vocab, prefix: list[int] = ()):
        super().__init__([])
        self.prefix = list(prefix)
        self.s = Script(vocab)
        self.sent = 0

    async def stream(self, prompt_ids, force_modality):
        self.prompts.append(list(prompt_ids))
        try:
            if self.prefix:
                yield list(self.prefix)
            yield [self.s.start(SP)]
            while True:
                yield self.s.codes(SP, [i % 64 for i in range(self.sent, self.sent + 5)])
                self.sent += 5
                await asyncio.sleep(0)
        finally:
            self.closed += 1


def test_a_reply_that_never_stops_speaking_ends_at_its_audio_limit(vocab):
    lm = EndlessSpeechLM(vocab)
    config = EngineConfig(max_reply_audio_s=0.5)  # 25 frames of 20 ms

    async def main():
        backends, *_ = make_backends(lm)
        session = AssistantEngine(backends, vocab, config).new_session()
        first = await collect(session.respond(UserTurn(text="talk forever")))
        pending = session.pending()
        second = await collect(session.respond(UserTurn(text="again")))
        return first, pending, second, session

    first, pending, second, session = run(main())
    for outputs in (first, second):
        frames = [o for o in outputs if isinstance(o, AudioFrame)]
        assert len(frames) == config.max_reply_frames == 25
        assert outputs[-1] == TurnFinished(FinishReason.MAX_TOKENS) and not errors_in(outputs)
        assert np.abs(frames[-1].pcm[-3:]).max() < 100  # the cut is faded out, not a click
        assert np.abs(frames[-1].pcm[:20]).max() > 1000
    assert lm.closed == 2  # each turn's stream was closed: generation aborted
    assert all(v == 0 for v in pending.values()), pending
    assert len(session.conversation.turns) == 2  # a reply cut at the limit is an answer, remembered


def test_music_counts_towards_the_reply_audio_limit(vocab):
    s = Script(vocab)
    script = s.seg(SP, range(10)) + s.seg(MU, [i % 64 for i in range(200)]) + s.text("after") + [vocab.eos_id]
    lm = FakeLM(script, chunk=8)

    async def main():
        backends, *_ = make_backends(lm)  # FakeMedia: 100 samples per music token -> 62.5 frames of music
        session = AssistantEngine(backends, vocab, EngineConfig(max_reply_audio_s=0.5)).new_session()
        return await collect(session.respond(UserTurn(text="sing")))

    outputs = run(main())
    sources = [o.source for o in outputs if isinstance(o, AudioFrame)]
    assert sources == ["speech"] * 10 + ["music"] * 15
    assert sum(isinstance(o, MusicOutput) for o in outputs) == 1
    assert outputs[-1] == TurnFinished(FinishReason.MAX_TOKENS)


def test_a_reply_under_its_audio_limit_completes_and_none_means_unlimited(vocab):
    s = Script(vocab)
    script = s.seg(SP, [i % 64 for i in range(40)]) + [vocab.eos_id]

    async def turn(config):
        backends, *_ = make_backends(FakeLM(script, chunk=5))
        return await collect(AssistantEngine(backends, vocab, config).new_session().respond(UserTurn(text="x")))

    for config in (EngineConfig(max_reply_audio_s=1.0), EngineConfig(max_reply_audio_s=None)):
        outputs = run(turn(config))
        assert sum(isinstance(o, AudioFrame) for o in outputs) == 40
        assert outputs[-1] == TurnFinished(FinishReason.COMPLETE)
    with pytest.raises(ValueError):
        EngineConfig(max_reply_audio_s=0.0)


# ---------------------------------------------------------------------------------------------------------- errors

SECRET = 'replica 7f3a on host 10.1.2.3 pid=4242\nTraceback (most recent call last):\n  File "/srv/x.py"'


class _Failing:
    """Patches one backend method of the fake backends to raise ``error``."""

    def __init__(self, error: BaseException):
        self.error = error

    async def __call__(self, *args, **kwargs):
        raise self.error


@pytest.mark.parametrize(
    ("where", "error", "code", "message"),
    [
        ("speech", RuntimeError(SECRET), "turn_failed", "the reply failed; try again"),
        ("lm", RuntimeError(SECRET), "turn_failed", "the reply failed; try again"),
        ("acoustic", RuntimeError(SECRET), "turn_failed", "the reply failed; try again"),
        ("media", RuntimeError(SECRET), "turn_failed", "the reply failed; try again"),
        (
            "speech",
            BackendUnavailableError("speech", SECRET),
            "unavailable",
            "the speech recognizer service is unavailable; try again",
        ),
        (
            "lm",
            BackendUnavailableError("lm", SECRET),
            "unavailable",
            "the language model service is unavailable; try again",
        ),
        (
            "acoustic",
            BackendUnavailableError("acoustic", SECRET),
            "unavailable",
            "the voice service is unavailable; try again",
        ),
        (
            "media",
            BackendUnavailableError("media", SECRET),
            "unavailable",
            "the picture/music service is unavailable; try again",
        ),
        # a backend that does not classify its own timeouts: the engine knows which service it called
        ("acoustic", TimeoutError(SECRET), "unavailable", "the voice service is unavailable; try again"),
        ("lm-limits", TimeoutError(SECRET), "unavailable", "the language model service is unavailable; try again"),
    ],
)
def test_errors_reach_the_caller_without_exception_text_and_the_log_has_it_under_the_error_id(
    vocab, caplog, where, error, code, message
):
    s = Script(vocab)
    lm = FakeLM(s.text("hi") + s.seg(SP, range(12)) + s.seg(Modality.IMAGE, [1, 2]) + [vocab.eos_id], chunk=3)
    backends, speech, acoustic, media = make_backends(lm)
    failing = _Failing(error)
    if where == "speech":
        speech.encode = failing
    elif where == "lm":
        original = lm.stream

        async def stream(prompt_ids, force_modality):  # one chunk, then the failure
            async for chunk in original(prompt_ids, force_modality):
                yield chunk
                raise error

        lm.stream = stream
    elif where == "lm-limits":
        lm.limits = failing
    elif where == "acoustic":
        acoustic.decode_chunk = failing
    else:
        media.image_png = failing

    async def main():
        session = AssistantEngine(backends, vocab, EngineConfig()).new_session()
        first = await collect(session.respond(UserTurn(audio=np.zeros(3200, dtype=np.float32), text="hello")))
        if where == "speech":
            speech.encode = types.MethodType(FakeSpeech.encode, speech)
        elif where == "lm":
            lm.stream = original
        elif where == "lm-limits":
            lm.limits = types.MethodType(FakeLM.limits, lm)
        elif where == "acoustic":
            acoustic.decode_chunk = types.MethodType(FakeAcoustic.decode_chunk, acoustic)
        else:
            media.image_png = types.MethodType(FakeMedia.image_png, media)
        second = await collect(session.respond(UserTurn(text="again")))
        return first, second

    with caplog.at_level(logging.INFO, logger="assistant.pipeline.engine"):
        first, second = run(main())
    (turn_error,) = errors_in(first)
    assert first[-1] == TurnFinished(FinishReason.ERROR)
    assert (turn_error.code, turn_error.message) == (code, message)
    assert re.fullmatch(r"[0-9a-f]{8}", turn_error.error_id)
    for output in first:  # nothing the caller gets carries any part of the exception
        text = repr(output) + "".join(str(v) for v in vars(output).values() if not isinstance(v, np.ndarray))
        assert "10.1.2.3" not in text and "4242" not in text and "Traceback" not in text
    (record,) = [r for r in caplog.records if turn_error.error_id in r.getMessage()]
    assert "10.1.2.3" in record.getMessage() and record.exc_info is not None
    assert second[-1] == TurnFinished(FinishReason.COMPLETE), second  # the next turn works


def test_the_log_names_the_backend_that_failed(vocab, caplog):
    lm = FakeLM(Script(vocab).seg(SP, range(12)) + [vocab.eos_id], chunk=3)
    backends, *_ = make_backends(lm, FakeAcoustic(fail=True))

    async def main():
        return await collect(AssistantEngine(backends, vocab, EngineConfig()).new_session().respond(UserTurn(text="x")))

    outputs = run(main())
    (turn_error,) = errors_in(outputs)
    (record,) = [r for r in caplog.records if turn_error.error_id in r.getMessage()]
    failure = record.exc_info[1]
    while isinstance(failure, BaseExceptionGroup):
        failure = failure.exceptions[0]
    assert "(raised by the acoustic backend)" in failure.__notes__


# ---------------------------------------------------------------------------------------------------------- backends


def test_vllm_backend_reports_max_model_len_and_its_reply_limit(vocab):
    settings = GenerationSettings(max_total_new_tokens=700)

    class Engine:  # AsyncLLM's model config, without vLLM
        model_config = types.SimpleNamespace(max_model_len=4096)

    class OlderEngine:  # engines that only answer the async getter
        async def get_model_config(self):
            return types.SimpleNamespace(max_model_len=2048)

    assert run(VLLMBackend(Engine(), vocab, settings).limits()) == LMLimits(4096, 700)
    assert run(VLLMBackend(OlderEngine(), vocab, settings).limits()) == LMLimits(2048, 700)
    assert run(VLLMBackend(object(), vocab, settings, max_model_len=1024).limits()) == LMLimits(1024, 700)


def test_backends_without_limits_keep_the_configured_bound(vocab):
    lm = FakeLM(Script(vocab).text("ok") + [vocab.eos_id])  # limits() -> None

    async def main():
        backends, *_ = make_backends(lm)
        engine = AssistantEngine(backends, vocab, EngineConfig(max_history_tokens=333))
        return await engine.prompt_token_budget(), await collect(engine.new_session().respond(UserTurn(text="x")))

    budget, outputs = run(main())
    assert budget == 333 and outputs[-1] == TurnFinished(FinishReason.COMPLETE)
