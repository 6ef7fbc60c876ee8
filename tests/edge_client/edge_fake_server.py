"""A tiny in-process stand-in for the anystream server, used by the edge client tests.

POST /offer answers with aiortc; once the data channel arrives it sends ``ready``; it runs webrtcvad on the
client's audio and, when the client's speech ends (or a picture with a question arrives), answers one turn:
turn_started, transcript, text deltas, an image (tiny PNG), a tone on its audio track (its pitch says which turn),
then turn_end after the tone's last frame has been sent. Speech that starts while it answers interrupts the answer
(the server owns barge-in).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib

import numpy as np
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from edge_doubles import serve_offers
from speechlike import voiced_like

from assistant import protocol
from assistant.audio import FrameSplitter, write_wav
from assistant.endpointing import EndpointerConfig, SpeechEnd, SpeechStart, VadEndpointer
from assistant.rtc_audio import MonoResampler, PacedAudioTrack
from edge_client.audio_io import DirectorySink
from edge_client.client import EdgeClient, EdgeClientConfig

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


def tone_hz(turn: int) -> float:
    """The pitch of turn ``turn``'s answer: 440 Hz, 660 Hz, 880 Hz, ... (tests tell the turns apart by ear)."""
    return 440.0 * (1 + 0.5 * (turn - 1))


class ToneTrack(PacedAudioTrack):
    """Paced 16 kHz mono track: silence, or a tone (or a recorded answer) while ``play()`` frames remain."""

    def __init__(self) -> None:
        super().__init__(SERVER_RATE, 20)
        self._tone_left = 0
        self._hz = tone_hz(1)
        self._wave: np.ndarray | None = None  # a recorded answer instead of the tone
        self._wave_at = 0
        self.tone_done = asyncio.Event()

    def play(self, frames: int, hz: float | None = None, wave: np.ndarray | None = None) -> None:
        """Plays `frames` 20 ms frames of tone (at ``hz``, default: the pitch playing last), or of ``wave`` (16 kHz
        float, from its start; without ``wave`` a recording playing goes on where it was); 0 stops a tone."""
        self.tone_done.clear()
        self._tone_left = frames
        if hz is not None:
            self._hz, self._wave = hz, None
        if wave is not None:
            self._wave, self._wave_at = wave, 0

    async def next_pcm(self) -> np.ndarray:
        if self._tone_left <= 0:
            return np.zeros(SERVER_FRAME, dtype=np.int16)
        self._tone_left -= 1
        if self._tone_left == 0:
            asyncio.get_running_loop().call_soon(self.tone_done.set)
        if self._wave is not None:
            piece = self._wave[self._wave_at : self._wave_at + SERVER_FRAME]
            self._wave_at += SERVER_FRAME
            return np.pad(piece, (0, SERVER_FRAME - piece.size)).astype(np.float32)
        t = (self.pts + np.arange(SERVER_FRAME)) / SERVER_RATE
        return (0.5 * np.sin(2 * np.pi * self._hz * t)).astype(np.float32)


class FakeServer:
    """
    tone_frames: how long each turn's answer tone is (20 ms frames), per turn when a list (the last one repeats).
    send_turn: answer at all (False: never start a turn).
    frames_after_interrupt: how many frames of the interrupted answer's tone still go out after ``interrupted`` (a
        server whose audio lags its events: what the client must not play).
    answer_wave: every turn's answer is this recording (16 kHz float, e.g. speech) instead of a tone; tone_frames is
        then not used.

    Like the real server, it owns barge-in: when its VAD hears the caller start speaking while it answers, it stops
    the answer and sends ``interrupted`` and ``turn_end(interrupted)``; an ``interrupt`` message does the same.
    ``interrupts`` lists ``(turn, "speech" | "message")`` for each.
    """

    def __init__(
        self,
        reject: bool = False,
        tone_frames: int | list[int] = 25,
        send_turn: bool = True,
        frames_after_interrupt: int = 0,
        answer_wave: np.ndarray | None = None,
    ):
        self.reject = reject
        self.answer_wave = answer_wave
        self.tone_frames = tone_frames if isinstance(tone_frames, list) else [tone_frames]
        self.send_turn = send_turn
        self.frames_after_interrupt = frames_after_interrupt
        self.interrupts: list[tuple[int, str]] = []
        self.pcs: list[RTCPeerConnection] = []
        self.client_messages: list[dict] = []
        self.offers: list[dict] = []  # the bodies of POST /offer
        self.frames_in = 0
        self.turns = 0
        self._tasks: list[asyncio.Task] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        self._runner, self.url = await serve_offers(self._offer)
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
                if message["type"] == "interrupt":
                    self._interrupt(out, state, "message")

        @pc.on("track")
        def on_track(track) -> None:
            self._tasks.append(asyncio.ensure_future(self._listen(track, out, state)))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "audio":
                pc.addTrack(out)
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response(protocol.OfferAnswer(sdp=pc.localDescription.sdp, session_id="s1").to_dict())

    def _interrupt(self, out: ToneTrack, state: dict, cause: str) -> None:
        """Stops the answer in progress (if any): ``interrupted`` and ``turn_end(interrupted)`` go out at once, the
        tone goes on for ``frames_after_interrupt`` frames."""
        answering = state.get("answering")
        if answering is None:
            return
        answering.cancel()
        state["answering"] = None
        out.play(self.frames_after_interrupt)
        self.interrupts.append((self.turns, cause))
        channel = state["channel"]
        channel.send(protocol.to_json(protocol.Interrupted(turn_id=self.turns)))
        channel.send(protocol.to_json(protocol.TurnEnd(turn_id=self.turns, reason="interrupted")))

    async def _listen(self, track, out: ToneTrack, state: dict) -> None:
        vad = VadEndpointer(EndpointerConfig(aggressiveness=2))
        to_16k = MonoResampler(SERVER_RATE, np.int16)
        frames = FrameSplitter(SERVER_FRAME, dtype=np.int16)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.frames_in += 1
            for piece in frames.push(to_16k.convert(frame)):
                for event in vad.push(piece.tobytes()):
                    if isinstance(event, SpeechStart):  # barge-in: the server decides it
                        self._interrupt(out, state, "speech")
                    elif isinstance(event, SpeechEnd) and self.send_turn:
                        state["answering"] = asyncio.ensure_future(self._answer(out, state))
                        self._tasks.append(state["answering"])

    async def _answer(self, out: ToneTrack, state: dict) -> None:
        channel = state["channel"]
        self.turns += 1
        turn = self.turns
        channel.send(protocol.to_json(protocol.TurnStarted(turn_id=turn)))
        channel.send(protocol.to_json(protocol.Transcript(turn_id=turn, delta="a noise burst")))
        if self.answer_wave is not None:
            out.play(-(-self.answer_wave.size // SERVER_FRAME), wave=self.answer_wave)
        else:
            out.play(self.tone_frames[min(turn, len(self.tone_frames)) - 1], tone_hz(turn))
        for delta in REPLY_DELTAS:
            channel.send(protocol.to_json(protocol.TextDelta(turn_id=turn, delta=delta)))
            await asyncio.sleep(0.02)
        png = base64.b64encode(tiny_png()).decode("ascii")
        channel.send(protocol.to_json(protocol.ImageReady(turn_id=turn, index=0, width=2, height=2, png_base64=png)))
        await out.tone_done.wait()
        state["answering"] = None
        channel.send(protocol.to_json(protocol.TurnEnd(turn_id=turn)))


# ----- helpers of the edge client tests


def voice_burst_file(tmp_path, seconds: float = 0.8, gap_s: float | None = None):
    """A burst of voice-like sound (``speechlike.voiced_like``: the VAD calls it speech, as it would not call a
    noise burst); with gap_s, a second burst follows after gap_s of silence."""
    burst = 1.6 * voiced_like(seconds)
    wave = burst if gap_s is None else np.concatenate([burst, np.zeros(int(16000 * gap_s), np.float32), burst])
    path = tmp_path / "question.wav"
    write_wav(path, wave, 16000)
    return path


async def run_client(server: FakeServer, tmp_path, source, sink=None, **settings):
    """Runs an EdgeClient against ``server`` until it exits: (exit code, client, stdout, stderr, output folder).
    ``settings`` are :class:`EdgeClientConfig` fields; the sink defaults to ``answer.wav`` in the output folder."""
    out = tmp_path / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    config = EdgeClientConfig(server.url, out_dir=out, loopback_only=True, **settings)
    client = EdgeClient(config, source, sink if sink is not None else DirectorySink(out), stdout=stdout, stderr=stderr)
    code = await client.run()
    return code, client, stdout.getvalue(), stderr.getvalue(), out


async def serve_and_call(server: FakeServer, tmp_path, source, sink=None, **settings):
    """``run_client`` with ``server`` started for the call and stopped after it (whatever happened)."""
    await server.start()
    try:
        return await run_client(server, tmp_path, source, sink, **settings)
    finally:
        await server.stop()


def call_server(server: FakeServer, tmp_path, source, sink=None, **settings):
    """``serve_and_call`` on a fresh event loop: (exit code, client, stdout, stderr, output folder)."""
    return asyncio.run(serve_and_call(server, tmp_path, source, sink, **settings))
