"""Shared by the RtcSession tests: a scripted fake engine session, a scripted microphone, and a real aiortc caller
(loopback ICE) that records the server's events and counts loud answer frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription

from assistant.audio import OUTPUT_FRAME_SAMPLES
from assistant.endpointing import EndpointerConfig
from assistant.pipeline.outputs import AudioFrame, ReplyTextDelta, TranscriptDelta, TurnFinished
from assistant.protocol import FinishReason, OfferRequest
from assistant.rtc_audio import PacedAudioTrack, frame_to_mono
from assistant.webrtc.ice import use_loopback_only
from assistant.webrtc.session import RtcSession


@dataclass(eq=False)
class FakeTurn:
    audio: np.ndarray | None
    text: str | None
    image: bytes | None = None
    music: bytes | None = None
    continues: FakeTurn | None = None  # the turn this one goes on from (RtcSession's continued questions)


class FakeEngineSession:
    """Replies to every turn with a transcript, a text delta and ``n_frames`` of a loud 440 Hz tone."""

    def __init__(self, n_frames: int = 15, frame_delay_s: float = 0.0):
        self.n_frames = n_frames
        self.frame_delay_s = frame_delay_s
        self.turns: list[FakeTurn] = []
        self.interrupts = 0
        self.closed = False
        self.close_calls = 0
        self.tentative: list[bool] = []  # per turn: started speculatively?
        self.history: list[FakeTurn] = []  # turns remembered (a speculative one once committed)
        self.discards = 0
        self.prepared: list[FakeTurn] = []  # turns prepared while the caller was still speaking
        self._undecided: FakeTurn | None = None
        self._interrupted = asyncio.Event()

    async def prepare(self, turn):
        self.prepared.append(turn)

    async def respond(self, turn, *, tentative=False):
        self.turns.append(turn)
        self.tentative.append(tentative)
        if tentative:
            self._undecided = turn
        else:
            self.history.append(turn)
        self._interrupted = asyncio.Event()
        yield TranscriptDelta(text="you said")
        yield ReplyTextDelta(text="hello")
        t = np.arange(OUTPUT_FRAME_SAMPLES) / 16000
        tone = (0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        for _ in range(self.n_frames):
            if self._interrupted.is_set():
                yield TurnFinished(reason=FinishReason.INTERRUPTED)
                return
            if self.frame_delay_s:
                await asyncio.sleep(self.frame_delay_s)
            yield AudioFrame(pcm=tone.copy())
        yield TurnFinished(reason=FinishReason.INTERRUPTED if self._interrupted.is_set() else FinishReason.COMPLETE)

    def interrupt(self):
        self.interrupts += 1
        self._interrupted.set()

    def commit(self):
        if self._undecided is not None:
            self.history.append(self._undecided)
            self._undecided = None

    def discard(self):
        self.discards += 1
        self._undecided = None
        self._interrupted.set()

    async def close(self):
        self.closed = True
        self.close_calls += 1


class ScriptedMic(PacedAudioTrack):
    """48 kHz mono mic, paced in real time: silence, or a loud voiced buzz while ``loud`` is set. ``loud_frames``
    counts the 20 ms frames sent loud: ``loud_frames * 0.02`` s is how long the caller actually spoke."""

    def __init__(self):
        super().__init__(48000, 20)
        self.loud = False
        self.loud_frames = 0
        self._rng = np.random.default_rng(0)

    @property
    def loud_s(self) -> float:
        return self.loud_frames * self.frame_samples / self.sample_rate

    async def next_pcm(self):
        n = self.frame_samples
        if not self.loud:
            return np.zeros(n, dtype=np.int16)
        self.loud_frames += 1
        t = (self.pts + np.arange(n)) / 48000
        buzz = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 25))
        wave = 0.3 * buzz + 0.05 * self._rng.standard_normal(n)
        return (np.clip(wave, -1, 1) * 32767).astype(np.int16)


class Client:
    """An aiortc caller: mic track, ``events`` data channel, and a reader for the assistant's audio."""

    def __init__(self):
        self.pc = RTCPeerConnection()
        self.mic = ScriptedMic()
        self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel("events")
        self.messages: list[dict] = []
        self._new = asyncio.Event()
        self.loud_frames = 0
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)
        self._tasks = []

    def _on_message(self, raw):
        self.messages.append(json.loads(raw))
        self._new.set()

    def _on_track(self, track):
        async def read():
            try:
                while True:
                    frame = await track.recv()
                    pcm = frame_to_mono(frame, dtype=np.int16).astype(np.float32)
                    if np.sqrt(np.mean(pcm**2)) > 1000:
                        self.loud_frames += 1
            except Exception:
                return

        self._tasks.append(asyncio.ensure_future(read()))

    async def offer(self) -> OfferRequest:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return OfferRequest.parse({"sdp": self.pc.localDescription.sdp, "type": "offer"})

    async def answer(self, answer):
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type=answer.type))

    def send(self, obj):
        self.channel.send(obj if isinstance(obj, str) else json.dumps(obj))

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.messages if m["type"] == kind]
            if len(found) >= count:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {count}x '{kind}' within {timeout} s; got {self.types()}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), remaining)
            except TimeoutError:
                pass

    async def close(self):
        for t in self._tasks:
            t.cancel()
        await self.pc.close()


# the endpointer of every session ``connect`` opens: quick to start (3 voiced 20 ms frames) and to end (300 ms)
ENDPOINTER = EndpointerConfig(aggressiveness=1, start_ms=60, end_silence_ms=300)


async def connect(engine, **options) -> tuple[RtcSession, Client]:
    use_loopback_only()
    session = RtcSession(engine, "s1", ENDPOINTER, turn_factory=FakeTurn, **options)
    client = Client()
    answer = await session.accept(await client.offer())
    assert answer.session_id == "s1"
    await client.answer(answer)
    await client.wait_for("ready")
    return session, client


@contextlib.asynccontextmanager
async def connected(engine, **options) -> AsyncIterator[tuple[RtcSession, Client]]:
    """``connect`` for the length of the block; then the session is closed, and the caller."""
    session, client = await connect(engine, **options)
    try:
        yield session, client
    finally:
        await session.close()
        await client.close()


class FakeClock:
    """A monotonic clock moved by hand: ``now`` for the session limits' watchdog and token buckets."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
