"""The conversation without a network: server messages go through the one dispatcher; the playback is cut on the
server's ``interrupted`` and on a newer turn that replaces an unfinished one, never on the client's own VAD."""

from __future__ import annotations

import ast
import io
import typing
from pathlib import Path

import numpy as np
from edge_fake_server import tiny_png

import edge_client
from assistant import protocol
from edge_client.config import EdgeClientConfig
from edge_client.console import Console
from edge_client.conversation import Conversation
from edge_client.playback import Playback
from edge_client.recording import Recording

LOUD = np.full(960, 8000, np.int16)


class ListSink:
    def __init__(self):
        self.written: list[np.ndarray] = []
        self.flushes = 0

    def write(self, pcm):
        self.written.append(np.array(pcm))

    def flush(self):
        self.flushes += 1

    def close(self):
        pass

    def last_is_silent(self) -> bool:
        return not self.written[-1].any()


class FileLike:
    live = False
    finite = True
    file_done = True


class Clock:
    def __init__(self):
        self.t = 10.0

    def __call__(self):
        return self.t


def conversation(tmp_path=None, **settings):
    sink, sent, answered, out = ListSink(), [], [], io.StringIO()
    clock = Clock()
    config = EdgeClientConfig("http://x", out_dir=tmp_path, **settings)
    talk = Conversation(
        config,
        FileLike(),
        send=lambda message: sent.append(message) or True,
        console=Console(out, io.StringIO()),
        recording=Recording(config.out_dir, clock),
        playback=Playback(sink, max_stale_s=0.2),
        on_answered=answered.append,
    )
    return talk, sink, sent, answered, out, clock


def server(message) -> str:
    return protocol.to_json(message)


def test_the_interrupted_reply_is_flushed_and_its_late_audio_played_as_silence():
    talk, sink, sent, answered, out, clock = conversation()
    talk.handle(server(protocol.TurnStarted(turn_id=1)))
    talk.playback.write(LOUD)
    assert not sink.last_is_silent()
    clock.t += 0.5
    talk.user_started_speaking()  # the client's VAD: the console hears it, the playback does not
    talk.playback.write(LOUD)
    assert sink.flushes == 0 and not sink.last_is_silent() and not sent
    talk.handle(server(protocol.Interrupted(turn_id=1)))
    assert sink.flushes == 1
    talk.playback.write(LOUD)  # turn 1's audio, still on its way
    assert sink.last_is_silent() and talk.playback.stale_frames == 1
    talk.handle(server(protocol.TurnEnd(turn_id=1, reason="interrupted")))
    assert answered == []  # the user spoke after turn 1 started: turn 1 does not answer what was said
    talk.playback.write(LOUD)
    assert sink.last_is_silent()
    clock.t += 0.5
    talk.handle(server(protocol.TurnStarted(turn_id=2)))  # the newer turn's audio plays
    talk.playback.write(LOUD)
    assert not sink.last_is_silent() and sink.flushes == 1
    talk.handle(server(protocol.TurnEnd(turn_id=2)))
    assert answered == ["turn 2 ended (complete)"]  # the turn started after the user spoke answers it
    assert talk.recording.barge_ins == 1
    assert "listening…" in out.getvalue() and "[assistant interrupted]" in out.getvalue()


def test_a_newer_turn_replacing_an_unfinished_one_flushes_and_a_finished_one_does_not():
    talk, sink, *_ = conversation()
    talk.handle(server(protocol.TurnStarted(turn_id=1)))
    talk.handle(server(protocol.TurnStarted(turn_id=2)))  # no turn_end for 1: its queued audio is stale
    assert sink.flushes == 1
    talk.handle(server(protocol.TurnEnd(turn_id=2)))
    talk.handle(server(protocol.TurnStarted(turn_id=3)))  # 2 ended: its tail may play out
    assert sink.flushes == 1
    talk.handle(server(protocol.Interrupted(turn_id=2)))  # late news of an older turn cuts nothing
    talk.playback.write(LOUD)
    assert sink.flushes == 1 and not sink.last_is_silent()


def test_stale_audio_is_bounded_when_no_turn_follows():
    talk, sink, *_ = conversation()
    talk.handle(server(protocol.TurnStarted(turn_id=1)))
    talk.handle(server(protocol.Interrupted(turn_id=1)))
    silent = 0
    for _ in range(20):
        talk.playback.write(LOUD)
        silent += sink.last_is_silent()
    assert silent == 10  # max_stale_s = 0.2 s of 20 ms frames, then audio plays again


def test_ready_sends_the_picture_question_and_turn_end_answers_it(tmp_path):
    talk, _, sent, answered, out, clock = conversation(tmp_path, image=tiny_png(), text="what?", voice="alto")
    talk.channel_open()
    talk.handle(server(protocol.Ready(session_id="s", sample_rate=16000, voice="alto", voices=["alto", "bass"])))
    assert [type(m).__name__ for m in sent] == ["Hello", "ImageMessage"] and sent[1].text == "what?"
    assert "voice: alto (available: alto, bass)" in out.getvalue()
    clock.t += 1
    talk.handle(server(protocol.TurnStarted(turn_id=1)))
    talk.handle(server(protocol.Transcript(turn_id=1, delta="what?")))
    talk.handle(server(protocol.TextDelta(turn_id=1, delta="A red square.")))
    png = protocol.ImageMessage.from_bytes(tiny_png()).png_base64
    talk.handle(server(protocol.ImageReady(turn_id=1, index=0, width=2, height=2, png_base64=png)))
    talk.handle(server(protocol.TurnEnd(turn_id=1)))
    assert answered == ["turn 1 ended (complete)"]
    assert (tmp_path / "image_1_0.png").read_bytes() == tiny_png()
    assert talk.recording.reply_text == {1: "A red square."} and talk.recording.transcripts == {1: "what?"}
    assert talk.recording.events[-2]["png_bytes"] == len(tiny_png())
    # times are on the recording's clock since the call started: the picture went at ready, the answer came 1 s on
    assert talk.recording.images_sent[0]["t"] == 0.0
    assert [e["t"] for e in talk.recording.events] == [0.0] + [1.0] * 5


def test_a_malformed_message_is_recorded_and_ignored():
    talk, *_ = conversation()
    talk.handle('{"type": "no such thing"}')
    assert talk.recording.events == [] and talk.recording.local_events[0]["event"] == "bad_message"


def test_no_isinstance_chain_over_server_messages_is_left_in_the_client():
    # server messages reach the client through assistant.dispatch only
    server_types = {t.__name__ for t in typing.get_args(protocol.ServerMessage)}
    offenders = []
    for path in sorted(Path(edge_client.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                named = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                offenders += [f"{path.name}:{node.lineno} {name}" for name in sorted(named & server_types)]
    assert server_types and offenders == []
