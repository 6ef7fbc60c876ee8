"""Speculative turns in the TurnController: started at the user's pause, heard only once committed, and leaving no
trace when discarded. Scripted engine, a sink the test plays, virtual time (see test_turns.py)."""

from __future__ import annotations

import asyncio

import pytest
from turn_fakes import FakeEngine, FakeMetrics, FakeSink, Script, Turn
from waiting import run_in_virtual_time, until

from assistant import protocol
from assistant.pipeline.turns import TurnController

pytestmark = pytest.mark.timeout(60)


def controller(engine: FakeEngine, sink: FakeSink, **options) -> TurnController:
    return TurnController(engine, sink, clock=asyncio.get_running_loop().time, label="test", **options)


def test_a_committed_speculative_turn_is_silent_until_the_commit_then_plays_as_any_turn():
    async def main():
        loop = asyncio.get_running_loop()
        engine, sink, metrics = FakeEngine(), FakeSink(), FakeMetrics()
        turns = controller(engine, sink, metrics=metrics)
        turns.speculate(Turn("what is two plus two"))
        await until(lambda: engine.pulled == 1, what="the engine is started")
        await asyncio.sleep(0.3)  # virtual: the user's silence goes on until the end of their turn
        assert sink.log == [] and engine.history == [] and engine.tentative == [True]
        committed_at = loop.time()
        assert turns.commit() is True
        await until(sink.waiting_played.is_set, what="the reply is queued")
        await asyncio.sleep(0.05)
        sink.play_all()
        await turns.wait()
        assert sink.types() == ["turn_started", "transcript", "text", "turn_end"]
        assert sink.messages[0] == protocol.TurnStarted(turn_id=1)
        assert sink.frames("played") == [101, 102, 103]
        assert engine.history == ["what is two plus two"] and engine.commits == 1 and engine.discards == 0
        assert metrics.ttfa == [pytest.approx(loop.time() - committed_at)]  # from the commit, not the pause
        assert turns.stats.speculated == turns.stats.committed == 1 and turns.idle and metrics.speculations == [True]
        assert await turns.start(Turn("and three")) == 2  # ids go on from the committed turn
        await turns.close()

    run_in_virtual_time(main())


def test_a_discarded_speculative_turn_leaves_no_trace_on_the_wire_or_in_the_history():
    async def main():
        engine, sink, metrics = FakeEngine(), FakeSink(), FakeMetrics()
        turns = controller(engine, sink, metrics=metrics)
        turns.speculate(Turn("what is two"))
        await until(lambda: engine.pulled == 1, what="the engine is started")
        assert turns.discard() is True
        await until(lambda: turns.idle and engine.streams == 0, what="the discarded turn's stream is closed")
        assert sink.log == [] and engine.history == [] and engine.discards == 1
        assert metrics.finished == [] and metrics.ttfa == [] and metrics.speculations == [False]
        assert turns.commit() is False and turns.discard() is False  # decided: nothing left to decide
        assert await turns.start(Turn("what is two plus two")) == 1  # the discarded turn used no id
        await until(sink.waiting_played.is_set, what="the reply is queued")
        sink.play_all()
        await turns.wait()
        assert sink.types() == ["turn_started", "transcript", "text", "turn_end"]
        assert engine.history == ["what is two plus two"]
        await turns.close()

    run_in_virtual_time(main())


def test_a_new_speculation_or_a_typed_question_discards_the_undecided_one_silently():
    async def main():
        engine, sink = FakeEngine(), FakeSink()
        turns = controller(engine, sink)
        turns.speculate(Turn("what is"))
        await until(lambda: engine.pulled == 1, what="the first speculation runs")
        turns.speculate(Turn("what is two plus two"))  # the user went on and paused again
        await until(lambda: engine.pulled == 2, what="the second speculation runs")
        assert engine.discards == 1 and sink.log == []
        assert await turns.start(Turn("typed instead")) == 1  # a typed question: the speculation is dropped
        await until(sink.waiting_played.is_set, what="the typed reply is queued")
        sink.play_all()
        await turns.wait()
        assert engine.discards == 2 and engine.history == ["typed instead"]
        assert "interrupted" not in sink.types() and sink.flushes == 0  # nothing audible was stopped
        assert turns.stats.speculated == 2 and turns.stats.discarded == 2 and turns.stats.committed == 0
        await turns.close()

    run_in_virtual_time(main())


def test_a_committed_turn_is_interrupted_like_any_other():
    async def main():
        engine, sink = FakeEngine([Script(frames=20)]), FakeSink(capacity=5)
        turns = controller(engine, sink)
        turns.speculate(Turn("tell me a story"))
        await until(lambda: engine.pulled == 1, what="the engine is started")
        assert turns.commit()
        await until(lambda: len(sink.queue) == 5, what="the sink is full")
        assert turns.interrupt() is True  # barge-in
        await turns.wait()
        assert sink.types()[-2:] == ["interrupted", "turn_end"] and sink.flushes == 1
        assert engine.history == ["tell me a story"] and engine.discards == 0
        await turns.close()

    run_in_virtual_time(main())


def test_a_speculation_waiting_behind_a_winding_down_turn_starts_plain_when_committed():
    async def main():
        engine, sink = FakeEngine([Script(frames=3, slow_close=0.5)]), FakeSink()
        turns = controller(engine, sink)
        assert await turns.start(Turn("first")) == 1
        await until(sink.waiting_played.is_set, what="the first reply is queued")
        turns.interrupt()  # barge-in; its stream takes 0.5 s (virtual) to close
        turns.speculate(Turn("second"))
        assert turns.commit() is True  # the pause became the end before the speculation could start
        await until(lambda: len(engine.turns) == 2, what="the second turn starts")
        assert engine.tentative == [False, False]
        await until(lambda: sink.frames("queued")[-3:] == [201, 202, 203], what="the second reply is queued")
        sink.play_all()
        await turns.wait()
        assert [(m.turn_id, m.reason) for m in sink.messages if isinstance(m, protocol.TurnEnd)] == [
            (1, "interrupted"),
            (2, "complete"),
        ]
        await turns.close()

    run_in_virtual_time(main())


def test_a_speculation_that_waited_behind_a_winding_down_turn_runs_and_can_be_committed():
    async def main():
        engine, sink = FakeEngine([Script(frames=20, slow_close=0.5)]), FakeSink(capacity=5)
        turns = controller(engine, sink)
        assert await turns.start(Turn("first")) == 1
        await until(lambda: len(sink.queue) == 5, what="the first reply fills the sink, its stream still open")
        turns.interrupt()  # barge-in; its stream takes 0.5 s (virtual) to close
        turns.speculate(Turn("second"))  # the user paused while the first turn still winds down
        await until(lambda: len(engine.turns) == 2, what="the speculation starts once the first turn has closed")
        assert engine.tentative == [False, True] and engine.discards == 0
        assert turns.commit() is True
        await until(lambda: sink.frames("queued")[-3:] == [201, 202, 203], what="the second reply is queued")
        sink.play_all()
        await turns.wait()
        assert engine.history == ["first", "second"]
        assert [m.turn_id for m in sink.messages if isinstance(m, protocol.TurnStarted)] == [1, 2]
        await turns.close()

    run_in_virtual_time(main())


def test_close_discards_an_undecided_speculation_without_a_message():
    async def main():
        engine, sink = FakeEngine(), FakeSink()
        turns = controller(engine, sink)
        turns.speculate(Turn("what"))
        await until(lambda: engine.pulled == 1, what="the engine is started")
        await turns.close()
        assert sink.log == [] and engine.history == [] and engine.close_calls == 1 and engine.streams == 0

    run_in_virtual_time(main())


async def commit_and_play(turns: TurnController, engine: FakeEngine, sink: FakeSink, turn: Turn) -> list:
    """Speculates ``turn``, commits it once the engine has started it, plays its reply; returns every
    ``turn_started`` sent so far."""
    sink.waiting_played.clear()
    started = len(engine.turns)
    turns.speculate(turn)
    await until(lambda: len(engine.turns) == started + 1, what="the speculation is started")
    assert turns.commit() is True
    await until(sink.waiting_played.is_set, what="the reply is queued")
    sink.play_all()
    await turns.wait()
    return [m for m in sink.messages if isinstance(m, protocol.TurnStarted)]


def test_turn_started_names_the_turn_a_continued_question_goes_on_from():
    """The caller paused mid-question: the first half got turn 1 (cut off when they went on); the whole question,
    committed at the real end, starts turn 2 saying it continues turn 1. A turn continuing a question the caller
    never heard an answer to (its speculation was discarded) names none."""

    async def main():
        engine, sink = FakeEngine(scripts=[Script(frames=50)]), FakeSink()
        turns = controller(engine, sink)
        first = Turn("what is two")
        assert await turns.start(first) == 1
        await until(lambda: engine.pulled >= 3, what="the first half's answer is under way")
        assert turns.interrupt() is True  # the caller went on talking
        started = await commit_and_play(turns, engine, sink, Turn("what is two plus three", continues=first))
        assert started == [protocol.TurnStarted(turn_id=1), protocol.TurnStarted(turn_id=2, continues=1)]

        unheard = Turn("what is four")
        turns.speculate(unheard)
        await until(lambda: len(engine.turns) == 3, what="the speculation is started")
        assert turns.discard() is True
        await until(lambda: turns.idle and engine.streams == 0, what="the discarded turn's stream is closed")
        started = await commit_and_play(turns, engine, sink, Turn("what is four plus one", continues=unheard))
        assert started[-1] == protocol.TurnStarted(turn_id=3)
        await turns.close()

    run_in_virtual_time(main())


def test_preparations_run_one_at_a_time_the_newest_next_and_deliver_nothing():
    async def main():
        engine, sink = FakeEngine(prepare_gate=asyncio.Event()), FakeSink()
        turns = controller(engine, sink)
        for words in ("what", "what is", "what is two", "what is two plus"):
            turns.prepare(Turn(words))
        await until(lambda: len(engine.prepared) == 1, what="the first preparation runs")
        assert [t.text for t in engine.prepared] == ["what"]  # the others wait for it; only the newest is kept
        engine.prepare_gate.set()
        await until(lambda: len(engine.prepared) == 2, what="the newest waiting one runs next")
        await asyncio.sleep(0.1)
        assert [t.text for t in engine.prepared] == ["what", "what is two plus"]
        assert sink.log == [] and engine.turns == [] and turns.idle
        turns.speculate(Turn("what is two plus two"))  # the turn itself is asked as any other
        assert turns.commit() is True
        await until(sink.waiting_played.is_set, what="the reply is queued")
        sink.play_all()
        await turns.wait()
        assert engine.history == ["what is two plus two"]
        await turns.close()
        turns.prepare(Turn("after the end"))
        await asyncio.sleep(0.1)
        assert len(engine.prepared) == 2

    run_in_virtual_time(main())
