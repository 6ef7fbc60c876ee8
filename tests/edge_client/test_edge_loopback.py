"""End to end: EdgeClient against an in-process aiortc server over loopback WebRTC."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket

import numpy as np
import pytest
import soundfile
from edge_fake_server import REPLY_DELTAS, FakeServer, call_server, serve_and_call, tiny_png, voice_burst_file

from edge_client.audio_io import DirectorySink, FileSource, SilenceSource
from edge_client.client import EXIT_OK, EXIT_SERVER, EXIT_TIMEOUT, EdgeClient, EdgeClientConfig


@pytest.mark.slow  # real WebRTC in real time: > 1.5 s
def test_file_question_gets_text_image_and_audio(tmp_path):
    server = FakeServer(tone_frames=25)
    source = FileSource(voice_burst_file(tmp_path), lead_silence_s=0.2, tail_silence_s=1.0)
    code, _, stdout, stderr, out = call_server(server, tmp_path, source, timeout=15, handle_signals=False)
    assert code == EXIT_OK, stderr
    # the image is saved byte for byte under its turn/index name
    assert (out / "image_1_0.png").read_bytes() == tiny_png()
    # the text deltas were printed as one assistant line
    assert "assistant: " + "".join(REPLY_DELTAS) in stdout
    assert "you said: a noise burst" in stdout
    assert "listening…" in stdout and "you stopped" in stdout  # client-side endpointing saw the burst
    # answer.wav is a valid 48 kHz mono file holding the tone (0.5 s at amplitude 0.5 through Opus)
    wave, rate = soundfile.read(out / "answer.wav", dtype="float32")
    assert rate == 48000 and wave.ndim == 1
    assert np.abs(wave).max() > 0.2
    loud = np.convolve(np.abs(wave) > 0.1, np.ones(480), "same") > 0
    assert loud.sum() / rate > 0.3  # most of the 0.5 s tone arrived before the hang-up
    # the server heard our audio and our hello
    assert server.frames_in > 50
    assert server.client_messages[0]["type"] == "hello"
    # session.json summarises the call
    summary = json.loads((out / "session.json").read_text())
    assert summary["exit_code"] == 0 and summary["session_id"] == "s1"
    assert summary["counts"]["text"] == len(REPLY_DELTAS)
    assert summary["counts"]["ready"] == 1 and summary["counts"]["turn_end"] == 1
    assert summary["images"] == [str(out / "image_1_0.png")]
    assert summary["reply_text"]["1"] == "".join(REPLY_DELTAS)
    assert summary["audio"]["frames_received"] > 0 and summary["audio"]["frames_sent"] > 50
    times = [e["t"] for e in summary["events"]]
    assert times == sorted(times)
    assert all("png_base64" not in e for e in summary["events"])


@pytest.mark.slow  # real WebRTC in real time: > 1.5 s
def test_the_client_hangs_up_by_saying_bye_and_the_server_closes(tmp_path):
    server = FakeServer(tone_frames=5)
    source = FileSource(voice_burst_file(tmp_path), lead_silence_s=0.2, tail_silence_s=1.0)
    code, client, _, stderr, out = call_server(
        server, tmp_path, source, timeout=15, handle_signals=False, bye_timeout=5.0
    )
    assert code == EXIT_OK, stderr
    assert server.client_messages[-1] == {"type": "bye"}
    byes = [e for e in client.local_events if e["event"] == "bye"]
    assert len(byes) == 1 and byes[0]["acknowledged"] is True  # the server closed the channel, well within 5 s
    hangup = next(e for e in client.local_events if e["event"] == "hangup")
    assert hangup["reason"] == "turn 1 ended (complete)"  # it hung up because its question was answered
    assert byes[0]["t"] - hangup["t"] < 4.0
    # session.json is written after the bye: it holds the hang-up and the acknowledged bye, in that order
    recorded = json.loads((out / "session.json").read_text())["local_events"]
    assert [e for e in recorded if e["event"] in ("hangup", "bye")] == [hangup, byes[0]]


@pytest.mark.slow  # real WebRTC in real time: > 1.5 s
def test_typed_question_with_silence_source(tmp_path):
    server = FakeServer(send_turn=False)
    code, _, stdout, stderr, out = call_server(
        server, tmp_path, SilenceSource(), text="what is this?", timeout=1.5, handle_signals=False
    )
    # the fake server never answers typed text, so the session times out with its own code and message
    assert code == EXIT_TIMEOUT
    assert "timed out after 1.5 s" in stderr
    assert {"type": "text", "text": "what is this?"} in server.client_messages
    assert "you (typed): what is this?" in stdout
    assert json.loads((out / "session.json").read_text())["exit_code"] == EXIT_TIMEOUT


def test_http_400_exits_2_with_the_servers_message(tmp_path):
    server = FakeServer(reject=True)
    code, _, _, stderr, out = call_server(server, tmp_path, SilenceSource(), timeout=5, handle_signals=False)
    assert code == EXIT_SERVER
    assert "HTTP 400" in stderr and "offer rejected for the test" in stderr
    assert json.loads((out / "session.json").read_text())["exit_code"] == EXIT_SERVER


def test_unreachable_server_exits_2(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    for url in (f"http://127.0.0.1:{port}", "not a url"):
        stderr = io.StringIO()
        config = EdgeClientConfig(url, loopback_only=True, handle_signals=False, timeout=5)
        client = EdgeClient(config, SilenceSource(), DirectorySink(tmp_path), stdout=io.StringIO(), stderr=stderr)
        assert asyncio.run(client.run()) == EXIT_SERVER
        assert "cannot reach the server" in stderr.getvalue()


def test_sigint_closes_cleanly_and_exits_0(tmp_path):
    async def main():
        asyncio.get_running_loop().call_later(1.0, os.kill, os.getpid(), signal.SIGINT)
        return await serve_and_call(
            FakeServer(send_turn=False), tmp_path, SilenceSource(), timeout=10, handle_signals=True
        )

    code, client, _, stderr, out = asyncio.run(main())
    assert code == EXIT_OK, stderr
    assert client.exit_reason == "stopped by SIGINT"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler removed afterwards
    summary = json.loads((out / "session.json").read_text())  # the summary is still written on a signal
    assert summary["exit_code"] == EXIT_OK
    assert [e["reason"] for e in summary["local_events"] if e["event"] == "hangup"] == ["stopped by SIGINT"]


def test_picture_with_a_question_and_a_voice(tmp_path):
    import base64

    from edge_fake_server import VOICES

    picture = tiny_png(4, 4)

    server = FakeServer(tone_frames=10)
    code, _, stdout, stderr, out = call_server(
        server,
        tmp_path,
        SilenceSource(),
        text="what is in this picture?",
        image=picture,
        image_name="cat.png",
        voice="bass",
        timeout=15,
        handle_signals=False,
    )
    assert code == EXIT_OK, stderr
    assert server.offers[0]["voice"] == "bass"
    sent = [m for m in server.client_messages if m["type"] == "image"]
    assert len(sent) == 1 and sent[0]["text"] == "what is in this picture?"
    assert base64.b64decode(sent[0]["png_base64"]) == picture
    assert not [m for m in server.client_messages if m["type"] == "text"]  # the question rode with the picture
    assert "you (picture cat.png): what is in this picture?" in stdout and "voice: bass" in stdout
    summary = json.loads((out / "session.json").read_text())
    assert summary["images_sent"] == [
        {
            "t": summary["images_sent"][0]["t"],
            "name": "cat.png",
            "bytes": len(picture),
            "text": "what is in this picture?",
        }
    ]
    assert summary["voice"] == {"requested": "bass", "server": "bass", "available": VOICES}
    assert summary["reply_text"]["1"] == "".join(REPLY_DELTAS)


@pytest.mark.slow  # real WebRTC in real time: > 1.5 s
def test_picture_alone_waits_for_the_spoken_question(tmp_path):
    picture = tiny_png()

    server = FakeServer(tone_frames=10)
    source = FileSource(voice_burst_file(tmp_path), lead_silence_s=0.2, tail_silence_s=1.0)
    code, _, stdout, stderr, out = call_server(
        server, tmp_path, source, image=picture, timeout=15, handle_signals=False
    )
    assert code == EXIT_OK, stderr
    (image,) = [m for m in server.client_messages if m["type"] == "image"]
    assert "text" not in image or image["text"] is None
    assert "goes with your next question" in stdout
    summary = json.loads((out / "session.json").read_text())
    assert summary["images_sent"][0]["bytes"] == len(picture) and summary["images_sent"][0]["text"] is None
    assert summary["voice"]["requested"] is None and summary["voice"]["server"] == "alto"


def test_unknown_voice_exits_2_with_the_servers_list(tmp_path):
    server = FakeServer()
    code, _, _, stderr, _ = call_server(
        server, tmp_path, SilenceSource(), voice="tenor", timeout=5, handle_signals=False
    )
    assert code == EXIT_SERVER
    assert "HTTP 400" in stderr and "unknown voice 'tenor'" in stderr and "alto, bass" in stderr
