"""A tiny in-process stand-in for the anystream server, used by the edge client tests.

POST /offer answers with aiortc; once the data channel arrives it sends ``ready``; it runs webrtcvad on the
client's audio and, when the client's speech ends (or a picture with a question arrives), answers one turn:
turn_started, transcript, text deltas,
an image (tiny PNG), a tone on its audio track, then turn_end after the tone's last frame has been sent.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib
from fractions import Fraction

import av
import numpy as np
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from assistant import protocol
from assistant.audio import float_to_pcm16, resample, write_wav
from assistant.endpointing import EndpointerConfig, SpeechEnd, VadEndpointer
from edge_client.audio_io import DirectorySink
from edge_client.client import EdgeClient

SERVER_RATE = 16000
SERVER_FRAME = 320  # 20 ms at 16 kHz, like the real server
VOICES = ["alto", "bass"]
REPLY_DELTAS = ["Hello", " there", ", friend."]


def tiny_png(width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes([255, 0, 0]) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class ToneTrack(MediaStreamTrack):
    """Paced 16 kHz mono track: silence, or a 440 Hz tone while ``play()`` frames remain."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._n = 0
        self._start: float | None = None
        self._tone_left = 0
        self.tone_done = asyncio.Event()

    def play(self, frames: int) -> None:
        """Plays `frames` 20 ms frames of tone; 0 stops a tone in progress."""
        self.tone_done.clear()
        self._tone_left = frames

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        delay = self._start + self._n * SERVER_FRAME / SERVER_RATE - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._tone_left > 0:
            t = (self._n * SERVER_FRAME + np.arange(SERVER_FRAME)) / SERVER_RATE
            wave = 0.5 * np.sin(2 * np.pi * 440.0 * t)
            self._tone_left -= 1
            if self._tone_left == 0:
                asyncio.get_running_loop().call_soon(self.tone_done.set)
        else:
            wave = np.zeros(SERVER_FRAME)
        frame = av.AudioFrame.from_ndarray(float_to_pcm16(wave).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SERVER_RATE
        frame.pts = self._n * SERVER_FRAME
        frame.time_base = Fraction(1, SERVER_RATE)
        self._n += 1
        return frame


class FakeServer:
    def __init__(self, reject: bool = False, tone_frames: int | list[int] = 25, send_turn: bool = True):
        self.reject = reject
        self.tone_frames = tone_frames if isinstance(tone_frames, list) else [tone_frames]
        self.send_turn = send_turn
        self.pcs: list[RTCPeerConnection] = []
        self.client_messages: list[dict] = []
        self.offers: list[dict] = []  # the bodies of POST /offer
        self.frames_in = 0
        self.turns = 0
        self._tasks: list[asyncio.Task] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/offer", self._offer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for pc in self.pcs:
            await pc.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _offer(self, request: web.Request) -> web.Response:
        if self.reject:
            return web.json_response({"error": "offer rejected for the test"}, status=400)
        try:
            body = await request.json()
            self.offers.append(body)
            offer = protocol.OfferRequest.parse(body)
        except (protocol.ProtocolError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if offer.voice is not None and offer.voice not in VOICES:
            return web.json_response(
                {"error": f"unknown voice {offer.voice!r}; known voices: {', '.join(VOICES)}"}, status=400
            )
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pcs.append(pc)
        out = ToneTrack()
        state: dict = {"channel": None}

        @pc.on("datachannel")
        def on_channel(channel) -> None:
            state["channel"] = channel
            channel.send(
                protocol.to_json(
                    protocol.Ready(
                        session_id="s1", sample_rate=SERVER_RATE, voice=offer.voice or VOICES[0], voices=VOICES
                    )
                )
            )

            @channel.on("message")
            def on_message(raw) -> None:
                message = json.loads(raw)
                self.client_messages.append(message)
                if message["type"] == "image" and message.get("text") and self.send_turn:
                    state["answering"] = asyncio.ensure_future(self._answer(out, state))
                    self._tasks.append(state["answering"])
                if message["type"] == "bye":  # the caller hangs up: end the call like the real server
                    self._tasks.append(asyncio.ensure_future(pc.close()))
                if message["type"] == "interrupt" and state.get("answering"):
                    state["answering"].cancel()
                    state["answering"] = None
                    out.play(0)
                    channel.send(protocol.to_json(protocol.Interrupted(turn_id=self.turns)))
                    channel.send(protocol.to_json(protocol.TurnEnd(turn_id=self.turns, reason="interrupted")))

        @pc.on("track")
        def on_track(track) -> None:
            self._tasks.append(asyncio.ensure_future(self._listen(track, out, state)))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "audio":
                pc.addTrack(out)
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response(protocol.OfferAnswer(sdp=pc.localDescription.sdp, session_id="s1").to_dict())

    async def _listen(self, track, out: ToneTrack, state: dict) -> None:
        vad = VadEndpointer(EndpointerConfig(aggressiveness=2))
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.frames_in += 1
            stereo = frame.to_ndarray().reshape(-1, 2)[:, 0].astype(np.float32) / 32768.0
            pcm = float_to_pcm16(resample(stereo, frame.sample_rate, SERVER_RATE))
            for i in range(0, pcm.size - SERVER_FRAME + 1, SERVER_FRAME):
                for event in vad.push(pcm[i : i + SERVER_FRAME].tobytes()):
                    if isinstance(event, SpeechEnd) and self.send_turn:
                        state["answering"] = asyncio.ensure_future(self._answer(out, state))
                        self._tasks.append(state["answering"])

    async def _answer(self, out: ToneTrack, state: dict) -> None:
        channel = state["channel"]
        self.turns += 1
        turn = self.turns
        channel.send(protocol.to_json(protocol.TurnStarted(turn_id=turn)))
        channel.send(protocol.to_json(protocol.Transcript(turn_id=turn, delta="a noise burst")))
        out.play(self.tone_frames[min(turn, len(self.tone_frames)) - 1])
        for delta in REPLY_DELTAS:
            channel.send(protocol.to_json(protocol.TextDelta(turn_id=turn, delta=delta)))
            await asyncio.sleep(0.02)
        png = base64.b64encode(tiny_png()).decode("ascii")
        channel.send(protocol.to_json(protocol.ImageReady(turn_id=turn, index=0, width=2, height=2, png_base64=png)))
        await out.tone_done.wait()
        state["answering"] = None
        channel.send(protocol.to_json(protocol.TurnEnd(turn_id=turn)))


# ----- helpers of the edge client tests


def noise_file(tmp_path, seconds: float = 0.8, gap_s: float | None = None):
    """A noise burst (webrtcvad calls it speech); with gap_s, a second burst follows after gap_s of silence."""
    rng = np.random.default_rng(0)
    burst = (0.5 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)
    wave = burst if gap_s is None else np.concatenate([burst, np.zeros(int(16000 * gap_s), np.float32), burst])
    path = tmp_path / "question.wav"
    write_wav(path, wave, 16000)
    return path


async def run_client(server: FakeServer, tmp_path, source, **kwargs):
    """Runs an EdgeClient against ``server`` until it exits: (exit code, client, stdout, stderr, output folder)."""
    out = tmp_path / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    client = EdgeClient(
        server.url, source, DirectorySink(out), out_dir=out, loopback_only=True, stdout=stdout, stderr=stderr, **kwargs
    )
    code = await client.run()
    return code, client, stdout.getvalue(), stderr.getvalue(), out
