"""The edge client's pictures and tunes against a real server session (RtcSession over loopback WebRTC): large
messages go up and come down as fragments, within the sizes each side advertises."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
import soundfile
from aiohttp import web
from edge_doubles import serve_offers
from edge_resume_server import QuestionTurn
from PIL import Image

from assistant import fragments, protocol
from assistant.pipeline.outputs import ImageOutput, TurnFinished
from assistant.protocol import FinishReason
from assistant.webrtc.ice import use_loopback_only
from assistant.webrtc.session import RtcSession
from edge_client.audio_io import DirectorySink, SilenceSource
from edge_client.client import EXIT_OK, EdgeClient, EdgeClientConfig
from edge_client.config import ConfigError

pytestmark = pytest.mark.timeout(120)


def noisy_png(width: int, height: int, seed: int) -> bytes:
    """A real PNG of random pixels: it does not compress, so it is about width * height * 3 bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def wav_tune(seconds: float, rate: int = 22050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.3 * np.sin(2 * np.pi * 330 * t), rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


class PictureEngine:
    """An engine session that answers every turn with one picture."""

    def __init__(self, png: bytes):
        self.png = png
        self.turns: list[QuestionTurn] = []

    async def respond(self, turn):
        self.turns.append(turn)
        yield ImageOutput(index=0, png=self.png, width=500, height=500)
        yield TurnFinished(reason=FinishReason.COMPLETE)

    def interrupt(self):
        pass

    async def close(self):
        pass


class SessionServer:
    """``POST /offer`` answered by a real :class:`RtcSession` around ``engine``."""

    def __init__(self, engine: PictureEngine):
        self.engine = engine
        self.sessions: list[RtcSession] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        use_loopback_only()
        self._runner, self.url = await serve_offers(self._offer, protocol.MAX_OFFER_BODY_BYTES)

    async def _offer(self, request: web.Request) -> web.Response:
        session = RtcSession(self.engine, f"s{len(self.sessions) + 1}", turn_factory=QuestionTurn)
        self.sessions.append(session)
        answer = await session.accept(protocol.parse_offer_body(await request.read()))
        return web.json_response(answer.to_dict())

    async def stop(self) -> None:
        for session in self.sessions:
            await session.close()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.mark.slow  # real WebRTC, ~2.5 MB each way and back
def test_a_large_picture_and_a_tune_go_up_and_a_large_picture_comes_down_intact(tmp_path):
    server_png = noisy_png(500, 500, seed=1)  # ~750 KB: a message of ~1 MB
    user_png, tune = noisy_png(500, 400, seed=2), wav_tune(3.0)
    engine = PictureEngine(server_png)
    server = SessionServer(engine)
    out = tmp_path / "out"

    async def main():
        await server.start()
        try:
            config = EdgeClientConfig(
                server.url,
                out_dir=out,
                loopback_only=True,
                text="what goes with these?",
                image=user_png,
                image_name="noise.png",
                music=tune,
                music_name="tune.wav",
                timeout=60,
                handle_signals=False,
                stall_timeout_s=30.0,  # the machine may be busy: this test is about the messages, not the audio
            )
            stdout, stderr = io.StringIO(), io.StringIO()
            client = EdgeClient(config, SilenceSource(), DirectorySink(out), stdout=stdout, stderr=stderr)
            return await client.run(), stdout.getvalue(), stderr.getvalue()
        finally:
            await server.stop()

    code, stdout, stderr = asyncio.run(main())
    assert code == EXIT_OK, stderr
    (session,) = server.sessions
    turn = engine.turns[0]
    assert (turn.image, turn.music, turn.text) == (user_png, tune, "what goes with these?")  # one turn took both
    assert session.stats.fragments_received >= 15 and session.stats.fragments_sent >= 15  # ~1 MB each way
    assert session.stats.client_errors == 0
    assert (out / "image_1_0.png").read_bytes() == server_png  # saved byte for byte, whatever its size
    assert "you (picture noise.png): sent; it goes with your next question" in stdout
    assert "you (tune tune.wav): what goes with these?" in stdout
    summary = json.loads((out / "session.json").read_text())
    assert summary["music_sent"] == [
        {"t": summary["music_sent"][0]["t"], "name": "tune.wav", "bytes": len(tune), "text": "what goes with these?"}
    ]
    assert summary["images_sent"][0]["text"] is None and summary["images_sent"][0]["bytes"] == len(user_png)
    assert [e["event"] for e in summary["local_events"]].index("image_sent") < [
        e["event"] for e in summary["local_events"]
    ].index("music_sent")


def test_a_tune_is_checked_like_a_picture_and_carries_the_question():
    config = EdgeClientConfig("http://x", music=wav_tune(0.5), text="what mood?")
    assert config.music_name == "tune"
    assert config.music_message().text == "what mood?" and config.image_message() is None
    with_picture = EdgeClientConfig("http://x", music=wav_tune(0.5), image=noisy_png(4, 4, 0), text="and these?")
    assert with_picture.image_message().text is None and with_picture.music_message().text == "and these?"
    for bad, problem in [(b"ID3 an mp3", "not a WAV file"), (wav_tune(31.0, rate=4000), "exceeds the limit of 30 s")]:
        with pytest.raises(ConfigError, match=problem) as caught:
            EdgeClientConfig("http://x", music=bad)
        assert caught.value.field == "music"


def test_the_command_line_reads_the_tune_and_names_a_bad_one(tmp_path, capsys):
    from edge_client.cli import build_parser, config_from_args, main

    path = tmp_path / "tune.wav"
    path.write_bytes(wav_tune(0.5))
    args = build_parser().parse_args(["--server", "http://x", "--music", str(path), "--text", "which key?"])
    config = config_from_args(args, music=path.read_bytes())
    assert config.music == path.read_bytes() and config.music_name == str(path)
    (tmp_path / "bad.wav").write_bytes(b"not a tune")
    assert main(["--server", "http://x", "--music", str(tmp_path / "bad.wav")]) != 0
    assert f"cannot send tune {tmp_path / 'bad.wav'}: tune is not a WAV file" in capsys.readouterr().err
    assert main(["--server", "http://x", "--music", str(tmp_path / "missing.wav")]) != 0
    assert "cannot read tune" in capsys.readouterr().err


def test_a_fragmented_server_message_is_reassembled_and_a_broken_one_noted(tmp_path):
    from edge_fake_server import tiny_png

    config = EdgeClientConfig("http://x", out_dir=tmp_path, handle_signals=False)
    client = EdgeClient(config, SilenceSource(), DirectorySink(tmp_path))
    reassembler = fragments.Reassembler(protocol.MAX_DOWNLOAD_MESSAGE_BYTES)
    png = tiny_png() + bytes(200_000)  # a large PNG message: saved whatever its size
    image = protocol.ImageReady(turn_id=1, index=0, width=2, height=2, png_base64=base64.b64encode(png).decode())
    pieces = fragments.split_message(protocol.to_json(image), 65536)
    assert len(pieces) == 5
    for piece in pieces:
        client._receive(reassembler, piece)
    assert (tmp_path / "image_1_0.png").read_bytes() == png
    client._receive(reassembler, pieces[1])  # a fragment out of its message
    assert client.recording.local_events[-1]["event"] == "bad_message"
    assert "without the ones before it" in client.recording.local_events[-1]["error"]
