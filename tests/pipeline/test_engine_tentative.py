"""Tentative (speculative) turns in the engine: they run ahead like any turn, the history takes them only on commit,
and a discarded one leaves the history, the LM stream and every buffer as if it had never run."""

from __future__ import annotations

import asyncio

import numpy as np
from pipeline_fakes import FakeLM, Script, collect, make_backends, make_vocab
from waiting import until

from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.pipeline.outputs import AudioFrame, TurnFinished
from assistant.protocol import FinishReason
from assistant.vocab import Modality

SP = Modality.SPEECH


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def reply_script(vocab) -> list[int]:
    s = Script(vocab)
    return s.text("sure") + s.seg(SP, list(range(24))) + [vocab.eos_id]


def question() -> UserTurn:
    return UserTurn(audio=np.zeros(16000, dtype=np.float32))


def comparable(outputs) -> list:
    return [(type(o).__name__, o.pcm.tobytes() if isinstance(o, AudioFrame) else repr(o)) for o in outputs]


def test_a_tentative_turn_runs_ahead_before_anyone_reads_it():
    vocab = make_vocab()
    lm = FakeLM(reply_script(vocab))

    async def main():
        backends, *_ = make_backends(lm)
        session = AssistantEngine(backends, vocab, EngineConfig(first_chunk_frames=4)).new_session()
        outputs = session.respond(question(), tentative=True)
        first = asyncio.ensure_future(anext(outputs))  # the first pull starts the turn, as the controller does
        await until(lambda: lm.closed == 1, what="the LM ran to its end of reply without anyone reading")
        assert session.pending()["output_queue"] > 0 and session.conversation.turns == []
        session.discard()
        rest = [await first] + [o async for o in outputs]
        assert rest[-1] == TurnFinished(FinishReason.INTERRUPTED)
        assert session.conversation.turns == [] and all(v == 0 for v in session.pending().values())

    run(main())


def test_discarding_mid_generation_closes_the_lm_stream_and_forgets_the_turn():
    vocab = make_vocab()
    lm = FakeLM(reply_script(vocab), pause_after=3)

    async def main():
        backends, *_ = make_backends(lm)
        session = AssistantEngine(backends, vocab, EngineConfig()).new_session()
        lm.gate.set()
        plain = await collect(session.respond(UserTurn(text="hello")))  # a turn already in the history
        lm.gate.clear()
        lm.paused.clear()
        outputs = session.respond(question(), tentative=True)
        first = asyncio.ensure_future(anext(outputs))
        await lm.paused.wait()
        session.discard()
        await first
        _ = [o async for o in outputs]
        return plain, session

    plain, session = run(main())
    assert plain[-1] == TurnFinished(FinishReason.COMPLETE)
    assert lm.closed == 2 and not lm.gate.is_set()  # the speculative stream was closed while it waited mid-reply
    assert [t.user.text for t in session.conversation.turns] == ["hello"]


def test_committed_turn_gives_the_same_outputs_and_history_as_a_plain_one():
    vocab = make_vocab()

    async def one(tentative: bool, commit_after_end: bool):
        lm = FakeLM(reply_script(vocab), pause_after=4)
        lm.gate.set()  # never pauses, unless a test clears it
        backends, *_ = make_backends(lm)
        session = AssistantEngine(backends, vocab, EngineConfig(first_chunk_frames=4)).new_session()
        if not tentative:
            outputs = await collect(session.respond(question()))
        else:
            lm.gate.clear()  # the LM waits mid-reply until the test has decided
            stream = session.respond(question(), tentative=True)
            first = await anext(stream)
            if commit_after_end:
                lm.gate.set()
                await until(lambda: lm.closed == 1, what="the turn finished before its commit")
            else:
                await lm.paused.wait()
            session.commit()
            lm.gate.set()
            outputs = [first] + [o async for o in stream]
        follow_up = await collect(session.respond(UserTurn(text="and then")))
        return outputs, follow_up, lm.prompts, session.conversation.turns

    async def main():
        return await one(False, False), await one(True, False), await one(True, True)

    plain, early, late = run(main())
    for speculative in (early, late):
        assert comparable(speculative[0]) == comparable(plain[0])
        assert speculative[2] == plain[2]  # the follow-up's prompt holds the committed turn, exactly as a plain one
        assert len(speculative[3]) == 2


def test_preparing_a_turn_prefills_the_question_so_far_and_nothing_else():
    """``prepare`` (the user still speaking) encodes the audio so far and prefills the prompt through its last code:
    the prompt of the turn asked later starts with it. Nothing is generated or remembered; a picture, a typed
    question or a failing LM prepares nothing and raises nothing."""
    vocab = make_vocab()
    lm = FakeLM(reply_script(vocab))
    audio = np.zeros(16000, dtype=np.float32)  # FakeSpeech: codes 0, 1, 2, ... (the half's are the whole's start)

    async def main():
        backends, *_ = make_backends(lm)
        session = AssistantEngine(backends, vocab, EngineConfig(first_chunk_frames=4)).new_session()
        await session.prepare(UserTurn(audio=audio[:8000]))
        assert len(lm.prefills) == 1 and lm.prompts == [] and session.conversation.turns == []
        prefix = lm.prefills[0]
        sosp = vocab.range_of(SP).start_id
        assert prefix[-26:] == [sosp, *vocab.codes_to_ids(SP, range(25))]  # 0.5 s: 25 codes, the last one included
        await collect(session.respond(UserTurn(audio=audio)))
        assert lm.prompts[0][: len(prefix)] == prefix and len(lm.prompts[0]) > len(prefix) + 25
        # the next question's preparation starts with the first exchange, as its prompt will
        await session.prepare(UserTurn(audio=audio[:4000]))
        assert len(session.conversation.turns) == 1 and lm.prefills[1][: len(lm.prompts[0])] == lm.prompts[0]
        await session.prepare(UserTurn(audio=audio, image=b"\x89PNG"))
        await session.prepare(UserTurn(text="what is two plus two"))
        lm.prefill_error = RuntimeError("LM replica gone")
        await session.prepare(UserTurn(audio=audio))
        assert len(lm.prefills) == 2 and len(lm.prompts) == 1

    run(main())
