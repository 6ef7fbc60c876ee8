"""The status line: its state machine driven by the conversation's events, its latency (question end to the first
audible answer frame), and how it is shown on a terminal (one line rewritten) and in a log (plain lines)."""

from __future__ import annotations

import io

from edge_doubles import Clock, Live, NullSink

from assistant import protocol
from edge_client.config import EdgeClientConfig
from edge_client.console import CallState, Console, StatusLine
from edge_client.conversation import Conversation
from edge_client.playback import Playback
from edge_client.recording import Recording


def talk(tty: bool = False):
    out, clock = io.StringIO(), Clock()
    console = Console(out, io.StringIO(), tty=tty)
    conversation = Conversation(
        EdgeClientConfig("http://x"),
        Live(),
        send=lambda message: True,
        console=console,
        recording=Recording(None, clock),
        playback=Playback(NullSink()),
        on_answered=lambda reason: None,
    )
    return conversation, console, out, clock


def event(message) -> str:
    return protocol.to_json(message)


def test_the_state_machine():
    shown = []
    status = StatusLine(shown.append)
    assert status.state == CallState.CONNECTING
    status.ready()
    status.user_started_speaking()
    status.question_ended(at=10.0)
    assert status.state == CallState.THINKING and status.awaiting_audio
    status.user_started_speaking()  # they went on: still their question
    assert status.state == CallState.LISTENING and not status.awaiting_audio
    status.question_ended(at=11.0)
    status.turn_started()
    status.answer_audible(at=11.5)
    assert status.state == CallState.SPEAKING and status.latency_s == 0.5
    status.answer_audible(at=12.0)  # later frames of the same answer change nothing
    assert status.latency_s == 0.5 and not status.awaiting_audio
    status.turn_ended()
    assert status.state == CallState.LISTENING
    # a text-only answer: thinking, then listening again, the last latency kept
    status.question_ended(at=20.0)
    status.turn_started()
    status.turn_ended()
    assert status.state == CallState.LISTENING and status.latency_s == 0.5
    # a turn the client's VAD did not time (the server heard it): thinking, speaking, but no latency to tell
    status.turn_started()
    status.answer_audible(at=30.0)
    assert status.state == CallState.SPEAKING and status.latency_s == 0.5
    status.reconnecting(attempt=2, delay_s=1.0)
    assert status.state == CallState.RECONNECTING and status.text().startswith("reconnecting (attempt 2 in 1.0 s)")
    status.question_ended(at=31.0)  # nothing to think about while there is no connection
    assert status.state == CallState.RECONNECTING
    status.ready()
    assert shown[-1] == "listening · last answer 0.50 s after the question"
    assert [s.split(" ")[0] for s in shown] == [
        "listening",
        "thinking",
        "listening",
        "thinking",
        "speaking",
        "listening",
        "thinking",
        "listening",
        "thinking",
        "speaking",
        "reconnecting",
        "listening",
    ]


def test_the_conversation_moves_it_and_times_the_answer_from_the_end_of_the_spoken_question():
    conversation, console, out, clock = talk()
    conversation.handle(event(protocol.Ready(session_id="s", sample_rate=16000)))
    conversation.user_started_speaking()
    clock.t = 101.0
    conversation.user_stopped_speaking(1.0)
    conversation.handle(event(protocol.TurnStarted(turn_id=1)))
    conversation.handle(event(protocol.Transcript(turn_id=1, delta="how are")))
    conversation.handle(event(protocol.Transcript(turn_id=1, delta=" you")))
    assert conversation.wants_audible
    conversation.answer_audible(101.25)  # the playout's first audible frame
    conversation.handle(event(protocol.TextDelta(turn_id=1, delta="fine")))
    conversation.handle(event(protocol.TextDelta(turn_id=1, delta=", thanks")))
    conversation.handle(event(protocol.TurnEnd(turn_id=1)))
    text = out.getvalue()
    # plain lines in a log; a status change while a streamed line was open waits for its end
    assert "you said: how are you\n" in text and "assistant: fine, thanks\n" in text
    lines = [line for line in text.splitlines() if line.startswith("status: ")]
    assert lines == [
        "status: listening",
        "status: thinking",
        "status: speaking · last answer 0.25 s after the question",
        "status: listening · last answer 0.25 s after the question",
    ]
    assert conversation.latencies == {1: 0.25}
    audible = [e for e in conversation.recording.local_events if e["event"] == "answer_audible"]
    assert audible == [{"t": audible[0]["t"], "event": "answer_audible", "turn": 1, "latency_s": 0.25}]


def test_a_typed_question_times_from_the_moment_it_was_sent():
    conversation, _, _, clock = talk()
    conversation.handle(event(protocol.Ready(session_id="s", sample_rate=16000)))
    clock.t = 105.0
    assert conversation.ask("what time is it?")
    conversation.handle(event(protocol.TurnStarted(turn_id=1)))
    conversation.answer_audible(105.5)
    assert conversation.status.state == CallState.SPEAKING and conversation.latencies == {1: 0.5}
    conversation.handle(event(protocol.Interrupted(turn_id=1)))
    conversation.handle(event(protocol.TurnEnd(turn_id=1, reason="interrupted")))
    assert conversation.status.state == CallState.LISTENING


def test_on_a_terminal_it_is_one_line_rewritten_below_the_conversation():
    conversation, console, out, clock = talk(tty=True)
    conversation.handle(event(protocol.Ready(session_id="s", sample_rate=16000)))
    conversation.ask("hi")
    conversation.handle(event(protocol.TurnStarted(turn_id=1)))
    conversation.handle(event(protocol.TextDelta(turn_id=1, delta="hello")))
    conversation.answer_audible(clock.t + 0.25)
    conversation.handle(event(protocol.TurnEnd(turn_id=1)))
    console.finish()
    text = out.getvalue()
    clear = "\r\x1b[2K"
    assert "status:" not in text  # no log lines on a terminal
    assert text.count(clear + "listening") >= 2 and clear + "thinking" in text
    # the streamed reply is never broken by a status update: the line is cleared before it and redrawn after it
    assert clear + "assistant: hello\n" in text
    assert text.endswith(clear + "listening · last answer 0.25 s after the question\n")
