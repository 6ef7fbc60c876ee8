"""Barge-in end to end (loopback WebRTC): the server owns it, the client cuts its playback when told.

Speaking over the answer makes the (fake) server's VAD stop the reply and send ``interrupted``; the client sends no
``interrupt`` of its own for it. On ``interrupted`` the client flushes its playback, and audio of the interrupted
turn that is still on its way is not played. Each turn's answer tone has its own pitch, so what was played after the
cut can be told apart by turn.
"""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
from edge_fake_server import FakeServer, call_server, tone_hz, voice_burst_file
from waiting import until

from edge_client.audio_io import FileSource
from edge_client.client import EXIT_OK, EdgeClient, EdgeClientConfig


class RecordingSink:
    """Keeps every frame written and where each flush happened (as an index into ``frames``)."""

    def __init__(self):
        self.frames: list[np.ndarray] = []
        self.flushes: list[int] = []

    def write(self, pcm):
        self.frames.append(np.array(pcm, dtype=np.int16))

    def flush(self):
        self.flushes.append(len(self.frames))

    def close(self):
        pass

    def turns_heard(self, start: int = 0, end: int | None = None) -> list[int]:
        """For each loud frame in ``frames[start:end]``, the turn whose tone it is (0: neither)."""
        heard = []
        for pcm in self.frames[start:end]:
            wave = pcm.astype(np.float64)
            if wave.size < 480 or np.sqrt(np.mean(wave**2)) < 1000:
                continue
            spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
            pitch = np.argmax(spectrum) * 48000 / wave.size
            heard.append(next((turn for turn in (1, 2, 3) if abs(pitch - tone_hz(turn)) < 80), 0))
        return heard


@pytest.mark.slow  # real WebRTC in real time: several seconds
def test_speaking_over_the_answer_makes_the_server_interrupt_and_the_client_cut_its_playback(tmp_path):
    # burst 1 -> turn 1 with a long (3 s) 440 Hz tone; burst 2 starts while it plays -> the server's VAD interrupts
    # turn 1 (and, lagging, still sends 0.3 s of its tone); burst 2 gets turn 2 (660 Hz), whose end ends the session.
    sink = RecordingSink()
    server = FakeServer(tone_frames=[150, 10], frames_after_interrupt=15)
    source = FileSource(voice_burst_file(tmp_path, seconds=0.6, gap_s=1.6), lead_silence_s=0.2, tail_silence_s=1.0)
    code, client, stdout, stderr, out = call_server(
        server, tmp_path, source, sink=sink, timeout=15, handle_signals=False
    )
    assert code == EXIT_OK, stderr
    # the server decided the barge-in; the client did not ask for it
    assert server.interrupts == [(1, "speech")]
    assert not [m for m in server.client_messages if m["type"] == "interrupt"]
    assert "[assistant interrupted]" in stdout and "interrupting" not in stdout
    assert client.barge_ins == 1
    # the playback was flushed once, when "interrupted" came; turn 1 was playing before it and not a frame after
    (cut,) = sink.flushes
    assert set(sink.turns_heard(end=cut)) == {1}
    after = sink.turns_heard(start=cut)
    assert 1 not in after and after.count(2) >= 5, after
    summary = json.loads((out / "session.json").read_text())
    assert summary["audio"]["stale_frames_muted"] >= 10  # the lagging tail did arrive, and was played as silence
    ends = [(e["turn_id"], e["reason"]) for e in summary["events"] if e["type"] == "turn_end"]
    assert ends == [(1, "interrupted"), (2, "complete")]
    assert "turn 2 ended" in summary["exit_reason"]
    # the client's VAD still timed both bursts (console and records)
    assert [e["event"] for e in summary["local_events"]].count("speech_start") == 2
    assert stdout.count("listening…") == 2


def test_an_explicit_interrupt_asks_the_server_and_the_reply_stops(tmp_path):
    sink = RecordingSink()

    async def main():
        server = FakeServer(tone_frames=150, frames_after_interrupt=10)
        await server.start()
        try:
            source = FileSource(voice_burst_file(tmp_path), lead_silence_s=0.2, tail_silence_s=1.0)
            config = EdgeClientConfig(server.url, loopback_only=True, timeout=15, handle_signals=False)
            stdout = io.StringIO()
            client = EdgeClient(config, source, sink, stdout=stdout, stderr=io.StringIO())
            call = asyncio.ensure_future(client.run())
            await until(lambda: sink.turns_heard().count(1) >= 5 or call.done(), what="the answer playing")
            assert client.interrupt()
            return await call, client, stdout.getvalue(), server
        finally:
            await server.stop()

    code, client, stdout, server = asyncio.run(main())
    assert code == EXIT_OK
    assert {"type": "interrupt"} in server.client_messages and server.interrupts == [(1, "message")]
    assert "(interrupting the assistant)" in stdout and "[assistant interrupted]" in stdout
    assert [e["event"] for e in client.local_events].count("interrupt_sent") == 1
    (cut,) = sink.flushes
    assert 1 not in sink.turns_heard(start=cut)
    assert client.exit_reason == "turn 1 ended (interrupted)"  # the interrupted turn answered the file
