"""TurnController with a scripted engine and a sink whose playback the test drives, on a virtual clock: grace periods
take no real time and the time to first audio is exact. Nothing is asserted absent after a sleep: absences are read
at a moment the controller is known to be waiting (on the sink, on the engine)."""

from __future__ import annotations

import asyncio
import base64
import logging

import numpy as np
import pytest
from turn_fakes import FakeEngine, FakeMetrics, FakeSink, Script, Turn, frame
from waiting import run_in_virtual_time, until

from assistant import protocol
from assistant.pipeline.outputs import (
    ImageOutput,
    MusicOutput,
    ReplyTextDelta,
    TranscriptDelta,
    TurnError,
    TurnFinished,
)
from assistant.pipeline.turns import TurnController, to_wire
from assistant.protocol import FinishReason

pytestmark = pytest.mark.timeout(60)


def controller(engine: FakeEngine, sink: FakeSink, **options) -> TurnController:
    loop = asyncio.get_running_loop()
    return TurnController(engine, sink, clock=loop.time, label="test", **options)


def ends(sink: FakeSink) -> list[tuple[int, str]]:
    return [(m.turn_id, m.reason) for m in sink.messages if isinstance(m, protocol.TurnEnd)]


def index_of(sink: FakeSink, entry: tuple) -> int:
    return sink.log.index(entry)


# ----- the mapping


def test_to_wire_maps_each_message_output_and_refuses_the_rest():
    png = b"\x89PNG\r\n\x1a\nfake"
    assert to_wire(TranscriptDelta("hi"), 3) == protocol.Transcript(turn_id=3, delta="hi")
    assert to_wire(ReplyTextDelta("yo"), 3) == protocol.TextDelta(turn_id=3, delta="yo")
    image = to_wire(ImageOutput(index=1, png=png, width=8, height=4), 3)
    assert image == protocol.ImageReady(
        turn_id=3, index=1, width=8, height=4, png_base64=base64.b64encode(png).decode("ascii")
    )
    music = to_wire(MusicOutput(index=0, wave=np.zeros(160, np.float32), duration_s=0.01), 3)
    assert music == protocol.MusicReady(turn_id=3, index=0, duration_s=0.01)
    error = to_wire(TurnError("busy; try again", code="unavailable", error_id="e1"), 3)
    assert error == protocol.ErrorEvent(message="busy; try again", turn_id=3, code="unavailable")
    for not_a_message in (frame(1), TurnFinished(FinishReason.COMPLETE)):
        with pytest.raises(TypeError):
            to_wire(not_a_message, 3)  # type: ignore[arg-type]


# ----- one turn


def test_a_turn_sends_its_outputs_and_ends_only_after_its_last_frame_played():
    async def main():
        engine, sink, metrics = FakeEngine(), FakeSink(capacity=10), FakeMetrics()
        turns = controller(engine, sink, metrics=metrics)
        assert await turns.start(Turn("hi")) == 1
        await until(sink.waiting_played.is_set, what="the controller waits for playback")
        assert "turn_end" not in sink.types() and turns.reply_in_progress  # three frames are still queued
        assert sink.play_all() == [101, 102, 103]
        await turns.wait()
        assert sink.types() == ["turn_started", "transcript", "text", "turn_end"]
        assert ends(sink) == [(1, "complete")] and metrics.finished == ["complete"]
        begin, first = index_of(sink, ("begin",)), index_of(sink, ("queued", 101))
        assert begin < first < sink.log.index(("end",)) < index_of(sink, ("wait_played",))
        assert sink.flushes == 0 and engine.interrupts == 0 and turns.idle
        await turns.close()

    run_in_virtual_time(main())


def test_time_to_first_audio_runs_from_the_request_to_the_first_played_frame():
    async def main():
        loop = asyncio.get_running_loop()
        engine, sink, metrics = FakeEngine(), FakeSink(), FakeMetrics()
        turns = controller(engine, sink, metrics=metrics)
        asked_at = loop.time()
        await turns.start(Turn("hi"))
        await until(lambda: sink.frames("queued") == [101, 102, 103], what="the reply is queued")
        await asyncio.sleep(0.25)  # virtual: the network takes a quarter of a second to take the first frame
        sink.play_all()
        played_at = loop.time()
        await turns.wait()
        assert metrics.ttfa == [played_at - asked_at] and metrics.ttfa[0] >= 0.25
        await turns.close()

    run_in_virtual_time(main())


# ----- interrupts


def test_interrupt_flushes_once_and_nothing_of_the_turn_plays_after_it():
    async def main():
        engine = FakeEngine([Script(frames=50, leak_after_interrupt=2)])  # a sloppy engine: 2 frames after its stop
        sink, metrics = FakeSink(capacity=3), FakeMetrics()
        turns = controller(engine, sink, metrics=metrics)
        await turns.start(Turn("a long one"))
        await until(lambda: len(sink.queue) == 3, what="the queue is full")
        assert sink.play_one() == 101  # the first frame plays; the controller waits in play() with frame 104
        await until(lambda: sink.queue == [102, 103, 104], what="the next frame is queued")
        assert turns.interrupt()
        await turns.wait()
        assert sink.flushes == 1 and sink.log.count(("flush", [102, 103, 104])) == 1
        flushed_at = index_of(sink, ("flush", [102, 103, 104]))
        after = sink.log[flushed_at + 1 :]
        assert not [e for e in after if e[0] in ("queued", "played")], after  # nothing of the turn after the flush
        assert sink.frames("dropped") == [105]  # the frame that waited for room when the flush came
        assert not [m for m in sink.messages if isinstance(m, protocol.TextDelta) and m.delta == "leaked"]
        assert sink.types()[-2:] == ["interrupted", "turn_end"] and ends(sink) == [(1, "interrupted")]
        assert engine.interrupts == 1 and metrics.finished == ["interrupted"]
        assert metrics.ttfa and len(metrics.ttfa) == 1  # its first frame did play
        assert not turns.interrupt() and sink.flushes == 1  # nothing left to interrupt
        await turns.close()

    run_in_virtual_time(main())


def test_a_frame_waiting_for_room_when_the_turn_is_interrupted_is_dropped():
    async def main():
        engine, sink = FakeEngine([Script(frames=50)]), FakeSink(capacity=2)
        turns = controller(engine, sink)
        await turns.start(Turn("x"))
        await until(lambda: ("waiting", 103) in sink.log, what="the controller waits for room with frame 103")
        turns.interrupt()
        await turns.wait()
        assert sink.frames("dropped") == [103] and sink.frames("played") == []
        assert ends(sink) == [(1, "interrupted")]
        await turns.close()

    run_in_virtual_time(main())


def test_interrupt_without_a_turn_in_progress_does_nothing():
    async def main():
        engine, sink = FakeEngine(), FakeSink()
        turns = controller(engine, sink)
        assert not turns.interrupt() and engine.interrupts == 0 and sink.flushes == 0
        await turns.close()

    run_in_virtual_time(main())


# ----- a new turn


def test_a_new_turn_interrupts_the_old_one():
    async def main():
        engine, sink = FakeEngine([Script(frames=50), Script(frames=2)]), FakeSink(capacity=3)
        turns = controller(engine, sink)
        assert await turns.start(Turn("one")) == 1
        await until(lambda: len(sink.queue) == 3, what="the first reply fills the queue")
        assert await turns.start(Turn("two")) == 2
        assert engine.interrupts == 1 and sink.flushes == 1
        first_end = sink.messages.index(protocol.TurnEnd(turn_id=1, reason="interrupted"))
        second_start = sink.messages.index(protocol.TurnStarted(turn_id=2))
        assert sink.messages[first_end - 1] == protocol.Interrupted(turn_id=1) and first_end < second_start
        await until(lambda: len(sink.queue) == 2, what="the second reply is queued")
        assert sink.play_all() == [201, 202]  # nothing of the first turn is left
        await turns.wait()
        assert ends(sink) == [(1, "interrupted"), (2, "complete")]
        assert [t.text for t in engine.turns] == ["one", "two"] and turns.stats.started == 2
        await turns.close()

    run_in_virtual_time(main())


def test_a_burst_of_starts_costs_one_turn_the_latest():
    async def main():
        engine, sink = FakeEngine([Script(frames=50)]), FakeSink(capacity=3)
        turns = controller(engine, sink)
        await turns.start(Turn("one"))
        await until(lambda: len(sink.queue) == 3, what="the first reply is playing")
        burst = [turns.request(Turn(text)) for text in ("two", "three", "four")]  # all before the loop runs
        assert [await result for result in burst] == [-1, -1, 2]
        assert [t.text for t in engine.turns] == ["one", "four"]
        assert (turns.stats.started, turns.stats.replaced) == (2, 2)
        assert sink.types().count("turn_started") == 2
        await until(lambda: len(sink.queue) == 3, what="the latest reply plays")
        sink.play_all()
        await turns.wait()
        assert ends(sink)[-1] == (2, "complete")
        await turns.close()

    run_in_virtual_time(main())


def test_a_stuck_turn_is_cancelled_after_the_grace_period_and_a_start_waiting_meanwhile_is_replaced():
    async def main():
        loop = asyncio.get_running_loop()
        engine, sink = FakeEngine([Script(frames=0, stubborn=True)]), FakeSink()
        turns = controller(engine, sink, grace_s=2.0)
        await turns.start(Turn("one"))
        await until(lambda: "text" in sink.types(), what="the first turn runs")
        asked_at = loop.time()
        second = turns.request(Turn("two"))
        await until(lambda: engine.interrupts == 1, what="the first turn is told to stop")
        third = turns.request(Turn("three"))  # while the first winds down: replaces the waiting start
        assert await second == -1
        assert await third == 2
        assert loop.time() - asked_at == pytest.approx(2.0, abs=0.05)  # the grace period, then the cancel
        assert engine.cancelled == 1 and ends(sink)[0] == (1, "interrupted")
        assert [t.text for t in engine.turns] == ["one", "three"] and turns.stats.replaced == 1
        await until(lambda: len(sink.queue) == 3, what="the third question's reply")
        sink.play_all()
        await turns.wait()
        await turns.close()

    run_in_virtual_time(main())


def test_a_new_turn_waits_until_the_last_one_has_closed_its_engine_stream():
    async def main():
        # the controller fails on a value that is no engine output while the stream is suspended at that yield:
        # closing the stream then takes a while, and the engine refuses a second stream until it is closed
        engine = FakeEngine([Script(outputs=[ReplyTextDelta("a"), "no output"], slow_close=0.5)])  # type: ignore[list-item]
        sink = FakeSink()
        turns = controller(engine, sink)
        await turns.start(Turn("one"))
        await until(lambda: "error" in sink.types(), what="the first turn failed")
        assert engine.streams == 1  # its stream is still closing
        assert await turns.start(Turn("two")) == 2
        await until(lambda: len(sink.queue) == 3, what="the second reply")
        sink.play_all()
        await turns.wait()
        assert ends(sink) == [(1, "error"), (2, "complete")] and engine.streams == 0
        await turns.close()

    run_in_virtual_time(main())


# ----- failures


def test_an_engine_error_becomes_an_error_event_and_turn_end_error():
    async def main():
        failed = [TurnError("the speech model is busy", code="unavailable", error_id="e1")]
        engine = FakeEngine([Script(outputs=[*failed, TurnFinished(FinishReason.ERROR)])])
        sink, metrics = FakeSink(), FakeMetrics()
        turns = controller(engine, sink, metrics=metrics)
        await turns.start(Turn("x"))
        await turns.wait()
        assert sink.messages == [
            protocol.TurnStarted(turn_id=1),
            protocol.ErrorEvent(message="the speech model is busy", turn_id=1, code="unavailable"),
            protocol.TurnEnd(turn_id=1, reason="error"),
        ]
        assert metrics.finished == ["error"]
        await turns.close()

    run_in_virtual_time(main())


def test_an_engine_exception_is_logged_under_an_id_the_caller_gets_and_the_next_turn_works(caplog):
    async def main():
        engine = FakeEngine([Script(outputs=[ReplyTextDelta("a"), ReplyTextDelta("b")], fail_after=1)])
        sink = FakeSink()
        turns = controller(engine, sink)
        with caplog.at_level(logging.ERROR, logger="assistant.pipeline.turns"):
            await turns.start(Turn("x"))
            await turns.wait()
        error = next(m for m in sink.messages if isinstance(m, protocol.ErrorEvent))
        assert error.code == "internal" and error.turn_id == 1 and "4242" not in error.message
        error_id = error.message.rsplit("error id ", 1)[1].rstrip(")")
        (record,) = [r for r in caplog.records if error_id in r.getMessage()]
        assert "4242" in str(record.exc_info[1])
        assert ends(sink) == [(1, "error")]
        await turns.start(Turn("again"))
        await until(lambda: len(sink.queue) == 3, what="the next reply")
        sink.play_all()
        await turns.wait()
        assert ends(sink) == [(1, "error"), (2, "complete")]
        await turns.close()

    run_in_virtual_time(main())


# ----- close


def test_close_aborts_the_turn_and_the_waiting_start_and_every_later_one():
    async def main():
        engine, sink, metrics = FakeEngine([Script(frames=50, stubborn=True)]), FakeSink(capacity=3), FakeMetrics()
        turns = controller(engine, sink, metrics=metrics)
        await turns.start(Turn("one"))
        await until(lambda: len(sink.queue) == 3, what="the first reply is playing")
        waiting = turns.request(Turn("two"))
        await turns.close()
        assert await waiting == -1 and [t.text for t in engine.turns] == ["one"]
        assert ends(sink) == [(1, "interrupted")] and sink.types()[-2] == "interrupted"
        assert sink.flushes == 1 and engine.close_calls == 1 and metrics.finished == ["interrupted"]
        assert turns.idle and turns.closed and not turns._tasks
        assert await turns.start(Turn("three")) == -1
        await turns.close()  # idempotent
        assert engine.close_calls == 1

    run_in_virtual_time(main())
