"""Speculative turns with the committed embedded models: a discarded one frees its LM slot and leaves the history as
it was, and a committed one answers exactly as the same turn started the usual way (same seed, same outputs)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from waiting import until

from assistant.audio import read_wav
from assistant.models.loading import ModelSpec, load_backends, load_vocab_and_voices
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.pipeline.outputs import AudioFrame, TurnFinished
from assistant.protocol import FinishReason

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def new_engine() -> AssistantEngine:
    spec = ModelSpec(seed=0)
    vocab, voices = load_vocab_and_voices(spec)
    return AssistantEngine(load_backends(spec), vocab, EngineConfig(), voices)


def comparable(outputs) -> list:
    return [(type(o).__name__, o.pcm.tobytes() if isinstance(o, AudioFrame) else repr(o)) for o in outputs]


def test_discard_frees_the_lm_slot_and_the_history(spoken_question):
    wave = read_wav(spoken_question[0])
    engine = new_engine()

    async def main():
        session = engine.new_session()
        stream = session.respond(UserTurn(audio=wave), tentative=True)
        first = await anext(stream)  # the turn runs: its transcript is being generated
        lm = engine.backends.lm
        assert lm.stats()["active_slots"] == 1
        session.discard()
        rest = [o async for o in stream]
        await until(lambda: lm.stats()["active_slots"] == 0, what="the LM slot is free")
        turns = list(session.conversation.turns)
        await session.close()
        return first, rest, turns

    first, rest, turns = asyncio.run(main())
    assert rest[-1] == TurnFinished(FinishReason.INTERRUPTED)
    assert turns == []


def test_a_committed_turn_answers_as_a_plain_one(spoken_question):
    wave = read_wav(spoken_question[0])

    async def plain():
        engine = new_engine()
        session = engine.new_session()
        outputs = [o async for o in session.respond(UserTurn(audio=wave))]
        follow_up = [o async for o in session.respond(UserTurn(text="thank you"))]
        return outputs, follow_up

    async def committed():
        engine = new_engine()
        session = engine.new_session()
        stream = session.respond(UserTurn(audio=wave), tentative=True)
        first = await anext(stream)
        await asyncio.sleep(0.2)  # the user's silence goes on; the turn runs ahead meanwhile
        session.commit()
        outputs = [first] + [o async for o in stream]
        follow_up = [o async for o in session.respond(UserTurn(text="thank you"))]
        return outputs, follow_up

    expected = asyncio.run(plain())
    got = asyncio.run(committed())
    assert comparable(got[0]) == comparable(expected[0])
    assert comparable(got[1]) == comparable(expected[1])  # the history holds the committed turn as a plain one
    assert any(isinstance(o, AudioFrame) and np.abs(o.pcm).max() > 300 for o in got[0])
