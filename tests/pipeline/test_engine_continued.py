"""Continued turns in the engine: a turn that goes on from the last one is asked without that exchange and takes its
place in the history, so the history holds the whole question once and never the answer to its first half."""

from __future__ import annotations

import asyncio

from pipeline_fakes import FakeLM, Script, collect, make_backends, make_vocab

from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.pipeline.outputs import TurnFinished
from assistant.protocol import FinishReason
from assistant.vocab import Modality


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def new_session(lm: FakeLM):
    backends, *_ = make_backends(lm)
    return AssistantEngine(backends, make_vocab(), EngineConfig(first_chunk_frames=4)).new_session()


def reply(vocab) -> list[int]:
    s = Script(vocab)
    return s.text("sure") + s.seg(Modality.SPEECH, list(range(12))) + [vocab.eos_id]


def ungated_session(vocab):
    """-> (the LM, a session on it) answering every turn with ``reply`` without pausing."""
    lm = FakeLM(reply(vocab))
    lm.gate.set()
    return lm, new_session(lm)


def asked(session) -> list[str | None]:
    return [t.user.text for t in session.conversation.turns]


def test_a_continued_turn_is_asked_without_the_exchange_it_continues_and_replaces_it():
    vocab = make_vocab()

    async def main():
        lm, session = ungated_session(vocab)
        await collect(session.respond(UserTurn(text="hello")))
        first_half = UserTurn(text="what is two")
        await collect(session.respond(first_half))
        whole = await collect(session.respond(UserTurn(text="what is two plus two", continues=first_half)))

        # what a session that never heard the first half asks
        reference_lm, reference = ungated_session(vocab)
        await collect(reference.respond(UserTurn(text="hello")))
        await collect(reference.respond(UserTurn(text="what is two plus two")))
        return lm, session, whole, reference_lm, reference

    lm, session, whole, reference_lm, reference = run(main())
    assert whole[-1] == TurnFinished(FinishReason.COMPLETE)
    assert lm.prompts[-1] == reference_lm.prompts[-1]  # the first half's exchange is not in the prompt
    assert asked(session) == ["hello", "what is two plus two"]
    assert [t.assistant.token_ids for t in session.conversation.turns] == [
        t.assistant.token_ids for t in reference.conversation.turns
    ]


def test_an_interrupted_first_half_is_replaced_only_when_the_continuation_is_committed():
    vocab = make_vocab()

    async def main():
        lm = FakeLM(reply(vocab), pause_after=3)
        session = new_session(lm)
        first_half = UserTurn(text="what is two")
        stream = session.respond(first_half)
        first = asyncio.ensure_future(anext(stream))
        await lm.paused.wait()
        session.interrupt()  # the user went on: barge-in
        await first
        ended = [o async for o in stream]
        assert ended[-1] == TurnFinished(FinishReason.INTERRUPTED)
        assert asked(session) == ["what is two"]  # an interrupted turn is remembered with its partial reply

        lm.gate.set()
        continuation = UserTurn(text="what is two plus", continues=first_half)
        stream = session.respond(continuation, tentative=True)
        await anext(stream)
        session.discard()  # they went on again: the speculative continuation leaves no trace
        _ = [o async for o in stream]
        after_discard = asked(session)

        whole = UserTurn(text="what is two plus two", continues=first_half)
        stream = session.respond(whole, tentative=True)
        outputs = [await anext(stream)]
        session.commit()
        outputs += [o async for o in stream]
        return session, after_discard, outputs

    session, after_discard, outputs = run(main())
    assert after_discard == ["what is two"]
    assert outputs[-1] == TurnFinished(FinishReason.COMPLETE)
    assert asked(session) == ["what is two plus two"]


def test_a_turn_that_continues_anything_but_the_last_exchange_is_a_plain_turn():
    vocab = make_vocab()

    async def main():
        lm, session = ungated_session(vocab)
        older = UserTurn(text="hello")
        await collect(session.respond(older))
        await collect(session.respond(UserTurn(text="how are you")))
        await collect(session.respond(UserTurn(text="what is two plus two", continues=older)))
        stranger = UserTurn(text="never asked")
        await collect(session.respond(UserTurn(text="and three", continues=stranger)))
        return lm, session

    lm, session = run(main())
    assert asked(session) == ["hello", "how are you", "what is two plus two", "and three"]
    assert all(len(b) > len(a) for a, b in zip(lm.prompts, lm.prompts[1:], strict=False))  # every prompt grew
