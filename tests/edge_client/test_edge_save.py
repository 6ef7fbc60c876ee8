"""``--save DIR``: every turn under DIR/turn-NNN/ (the question as captured, the answer as played, its text,
pictures and music cut by the ``music`` event's duration), from a scripted server turn and from a real call."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import soundfile
from edge_doubles import Clock, Live, NullSink
from edge_fake_server import REPLY_DELTAS, FakeServer, call_server, tiny_png, voice_burst_file

from assistant import protocol
from edge_client.audio_io import FileSource
from edge_client.config import EdgeClientConfig
from edge_client.console import Console
from edge_client.conversation import Conversation
from edge_client.playback import Playback
from edge_client.recording import SERVER_AUDIO_QUEUE_FRAMES, Recording, TurnArchive


def scripted(tmp_path):
    clock = Clock(50.0)
    archive = TurnArchive(tmp_path / "saved", clock)
    playback = Playback(NullSink())
    playback.on_frame.append(archive.answer_frame)
    conversation = Conversation(
        EdgeClientConfig("http://x", save_dir=tmp_path / "saved"),
        Live(),
        send=lambda message: True,
        console=Console(io.StringIO(), io.StringIO()),
        recording=Recording(None, clock),
        playback=playback,
        on_answered=lambda reason: None,
        archive=archive,
    )
    return conversation, archive, playback, clock


def send(conversation: Conversation, message) -> None:
    conversation.handle(protocol.to_json(message))


def frames_of(value: int, n: int) -> list[np.ndarray]:
    return [np.full(960, value, np.int16) for _ in range(n)]


def test_a_turn_is_kept_with_its_question_answer_picture_and_music(tmp_path):
    conversation, archive, playback, clock = scripted(tmp_path)
    send(conversation, protocol.Ready(session_id="s1", sample_rate=16000))
    # the microphone: 1 s of silence, then 0.6 s of "speech" (value 500), then the VAD's end (duration incl. pre-roll)
    for frame in frames_of(0, 50) + frames_of(500, 30):
        archive.captured(frame.astype(np.float32) / 32768)
    conversation.user_stopped_speaking(0.6)
    send(conversation, protocol.TurnStarted(turn_id=1))
    send(conversation, protocol.Transcript(turn_id=1, delta="play me a tune"))
    send(conversation, protocol.TextDelta(turn_id=1, delta="Here it is."))
    for frame in frames_of(0, 5) + frames_of(1000, 20):  # quiet before the answer is heard, then speech
        playback.write(frame)
    png = tiny_png(3, 3)
    send(
        conversation,
        protocol.ImageReady(turn_id=1, index=0, width=3, height=3, png_base64=base64.b64encode(png).decode()),
    )
    # the music event comes while 10 more frames of speech are still queued on the server's track; 0.4 s of music
    # (value 3000) follows and ends the answer, then the server's idle silence
    send(conversation, protocol.MusicReady(turn_id=1, index=0, duration_s=0.4))
    for frame in frames_of(1000, 10) + frames_of(3000, 20) + frames_of(0, 3):
        playback.write(frame)
    conversation.answer_audible(clock.t + 0.3)
    send(conversation, protocol.TurnEnd(turn_id=1))
    clock.t += 1.0
    playback.write(np.zeros(960, np.int16))  # a frame after the tail: the turn is written
    folder = tmp_path / "saved" / "turn-001"
    assert archive.saved == [folder]

    question, rate = soundfile.read(folder / "question.wav", dtype="int16")
    assert rate == 48000 and question.size == 30 * 960 and np.all(np.abs(question - 500) <= 1)
    answer, rate = soundfile.read(folder / "answer.wav", dtype="int16")
    assert rate == 48000 and answer.size == 50 * 960  # first audible frame to last: 30 of speech, 20 of music
    assert np.all(answer[: 30 * 960] == 1000) and np.all(answer[30 * 960 :] == 3000)
    music, _ = soundfile.read(folder / "music-0.wav", dtype="int16")
    assert music.size == 20 * 960 and np.all(music == 3000)  # exactly the music, cut from the answer
    assert (folder / "image-0.png").read_bytes() == png
    record = json.loads((folder / "turn.json").read_text())
    assert record["question"] == {
        "text": None,
        "heard": "play me a tune",
        "audio": "question.wav",
        "picture": None,
        "picture_name": None,
    }
    assert record["reply_text"] == "Here it is." and record["answer_audio"] == "answer.wav"
    assert record["images"] == ["image-0.png"] and record["end_reason"] == "complete"
    assert record["music"] == [{"file": "music-0.wav", "index": 0, "duration_s": 0.4, "start_s": 0.6}]
    assert record["answer_s"] == 1.0 and record["latency_s"] == 0.3 and record["turn"] == 1


def test_music_in_the_middle_is_cut_at_most_the_servers_queue_after_its_event():
    assert TurnArchive._music_cut(received=40, duration_s=1.0, total=200) == (
        40 + SERVER_AUDIO_QUEUE_FRAMES,
        40 + SERVER_AUDIO_QUEUE_FRAMES + 50,
    )
    assert TurnArchive._music_cut(received=40, duration_s=1.0, total=100) == (50, 100)  # it ends the answer
    assert TurnArchive._music_cut(received=40, duration_s=1.0, total=60) == (40, 60)  # cut short (interrupted)
    assert TurnArchive._music_cut(received=40, duration_s=1.0, total=40) is None


def test_an_interrupted_turn_and_a_typed_one_each_get_their_folder(tmp_path):
    conversation, archive, playback, clock = scripted(tmp_path)
    send(conversation, protocol.Ready(session_id="s1", sample_rate=16000))
    conversation.ask("first?")
    send(conversation, protocol.TurnStarted(turn_id=1))
    for frame in frames_of(1000, 10):
        playback.write(frame)
    send(conversation, protocol.Interrupted(turn_id=1))
    for frame in frames_of(1000, 5):  # late audio of the interrupted reply: silence, and not part of the answer
        playback.write(frame)
    send(conversation, protocol.TurnEnd(turn_id=1, reason="interrupted"))
    conversation.ask("second?")
    send(conversation, protocol.TurnStarted(turn_id=2))  # writes turn 1 at once
    send(conversation, protocol.TextDelta(turn_id=2, delta="Text only."))
    send(conversation, protocol.TurnEnd(turn_id=2))
    archive.close()
    first, second = (tmp_path / "saved" / "turn-001"), (tmp_path / "saved" / "turn-002")
    assert archive.saved == [first, second]
    answer, _ = soundfile.read(first / "answer.wav", dtype="int16")
    assert answer.size == 10 * 960
    one = json.loads((first / "turn.json").read_text())
    assert one["end_reason"] == "interrupted" and one["question"]["text"] == "first?"
    two = json.loads((second / "turn.json").read_text())
    assert two["question"]["text"] == "second?" and two["reply_text"] == "Text only."
    assert two["answer_audio"] is None and not (second / "answer.wav").exists()


def test_a_continued_question_says_which_turn_it_goes_on_from(tmp_path):
    """The caller paused mid-question: the server answered the first half (turn 1, cut off when they went on), then
    asked the whole question as turn 2, which it says continues turn 1; the console and the archive say so too."""
    conversation, archive, playback, clock = scripted(tmp_path)
    send(conversation, protocol.Ready(session_id="s1", sample_rate=16000))
    send(conversation, protocol.TurnStarted(turn_id=1))
    send(conversation, protocol.Interrupted(turn_id=1))
    send(conversation, protocol.TurnEnd(turn_id=1, reason="interrupted"))
    send(conversation, protocol.TurnStarted(turn_id=2, continues=1))
    send(conversation, protocol.TurnEnd(turn_id=2))
    archive.close()
    first, second = (json.loads((tmp_path / "saved" / f"turn-00{n}" / "turn.json").read_text()) for n in (1, 2))
    assert first["continues_turn"] is None and second["continues_turn"] == 1
    assert "turn 2 goes on from turn 1's question" in conversation.console.out.getvalue()


@pytest.mark.slow  # real WebRTC in real time: > 1.5 s
def test_a_call_with_save_keeps_the_turn_and_the_session(tmp_path):
    server = FakeServer(tone_frames=25)
    source = FileSource(voice_burst_file(tmp_path), lead_silence_s=0.2, tail_silence_s=1.0)
    saved = tmp_path / "saved"
    code, client, _, stderr, _ = call_server(server, tmp_path, source, timeout=15, handle_signals=False, save_dir=saved)
    assert code == 0, stderr
    folder = saved / "turn-001"
    record = json.loads((folder / "turn.json").read_text())
    assert record["reply_text"] == "".join(REPLY_DELTAS) and record["question"]["heard"] == "a noise burst"
    assert (folder / "image-0.png").read_bytes() == tiny_png()
    question, rate = soundfile.read(folder / "question.wav", dtype="float32")
    assert rate == 48000 and 0.6 < question.size / rate < 2.5 and np.abs(question).max() > 0.3  # the noise burst
    answer, rate = soundfile.read(folder / "answer.wav", dtype="float32")
    assert 0.35 < answer.size / rate < 0.7 and np.abs(answer).max() > 0.2  # the 0.5 s tone as played
    assert record["latency_s"] is not None and 0 < record["latency_s"] < 5
    summary = json.loads((saved / "session.json").read_text())
    assert summary["turns_saved"] == [str(folder)] and summary["exit_code"] == 0
