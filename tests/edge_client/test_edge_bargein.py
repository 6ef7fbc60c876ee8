"""Barge-in end to end: speaking while the assistant answers interrupts it (loopback WebRTC)."""

from __future__ import annotations

import asyncio
import json

from edge_fake_server import FakeServer, noise_file, run_client

from edge_client.audio_io import FileSource
from edge_client.client import EXIT_OK


def test_speaking_over_the_answer_interrupts_it(tmp_path):
    # burst 1 -> turn 1 with a long (3 s) tone; burst 2 starts while it plays -> the client barges in,
    # the server stops turn 1; burst 2 gets turn 2, whose end ends the session.
    async def main():
        server = FakeServer(tone_frames=[150, 10])
        await server.start()
        try:
            source = FileSource(noise_file(tmp_path, seconds=0.6, gap_s=1.6), lead_silence_s=0.2, tail_silence_s=1.0)
            return await run_client(server, tmp_path, source, timeout=15, handle_signals=False), server
        finally:
            await server.stop()

    (code, client, stdout, stderr, out), server = asyncio.run(main())
    assert code == EXIT_OK, stderr
    assert client.barge_ins == 1
    assert {"type": "interrupt"} in server.client_messages
    assert "(barge-in: interrupting the assistant)" in stdout
    assert "[assistant interrupted]" in stdout
    summary = json.loads((out / "session.json").read_text())
    ends = [(e["turn_id"], e["reason"]) for e in summary["events"] if e["type"] == "turn_end"]
    assert ends == [(1, "interrupted"), (2, "complete")]
    assert "turn 2 ended" in summary["exit_reason"]
    assert [e["event"] for e in summary["local_events"]].count("speech_start") == 2
