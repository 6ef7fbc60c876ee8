"""A scripted caller for the fault and soak suites: a real aiortc peer with a microphone that can speak a wave,
the ``events`` data channel, and a count of the loud answer frames it hears.

Kept apart from the edge client on purpose: these tests want every event and every frame in hand, and an error on
any step as a clear failure, not a console line.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from assistant import fragments, protocol
from assistant.audio import WEBRTC_SAMPLE_RATE, resample
from assistant.rtc_audio import PacedAudioTrack, frame_to_mono
from assistant.webrtc.ice import use_loopback_only

FRAME_SAMPLES = WEBRTC_SAMPLE_RATE // 50  # 20 ms at 48 kHz
LOUD_RMS = 300.0  # int16 units: an answer frame above this is speech or music, not the silence between replies


class ScriptedMicrophone(PacedAudioTrack):
    """48 kHz mono frames paced in real time: the wave given to :meth:`say`, then 2 s of silence at the full rate
    (the server's endpointer needs it to end the turn), then silence as Opus DTX sends it: one frame every
    ``idle_frame_interval_s``. Twenty callers at the full rate would spend more than this machine's two cores on
    encoding silence alone."""

    TRAILING_SILENCE_S = 2.0

    def __init__(self, idle_frame_interval_s: float = 0.2) -> None:
        super().__init__(WEBRTC_SAMPLE_RATE, 20)
        self.idle_frame_interval_s = idle_frame_interval_s
        self._pending: list[np.ndarray] = []
        self._full_rate_until = 0.0
        self.said = asyncio.Event()  # set when the last frame of the latest wave has left

    def say(self, wave_16k: np.ndarray) -> None:
        wave = resample(np.asarray(wave_16k, dtype=np.float32), 16_000, WEBRTC_SAMPLE_RATE)
        pcm = np.clip(wave * 32767.0, -32768, 32767).astype(np.int16)
        pad = (-pcm.size) % FRAME_SAMPLES
        pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
        self._pending = list(pcm.reshape(-1, FRAME_SAMPLES))
        self._full_rate_until = float("inf")  # until the wave and its trailing silence have left
        self.said.clear()

    async def next_pcm(self) -> np.ndarray:
        if not self._pending and self.clock.now() > self._full_rate_until:
            await self.clock.sleep(self.idle_frame_interval_s)
            self.skip_to_now()  # DTX: the clock jumps over the frames not sent
        if not self._pending:
            return np.zeros(FRAME_SAMPLES, dtype=np.int16)
        pcm = self._pending.pop(0)
        if not self._pending:
            self.said.set()
            self._full_rate_until = self.clock.now() + self.TRAILING_SILENCE_S
        return pcm


class RtcCaller:
    """One call: ``await connect()``, ``ask(text)`` / ``say(wave)``, ``await wait_event(...)``, ``await hang_up()``."""

    def __init__(self, server_url: str, *, headers: dict[str, str] | None = None, voice: str | None = None):
        self.server_url = server_url.rstrip("/")
        self.headers = dict(headers or {})
        self.voice = voice
        self.events: list[dict[str, Any]] = []
        self.event_times: list[float] = []
        self.loud_frames = 0
        self.last_loud_at: float | None = None
        self.session_id: str | None = None
        self.pc: RTCPeerConnection | None = None
        self.microphone = ScriptedMicrophone()
        self._channel: Any = None
        self._new_event = asyncio.Event()
        # a server message larger than one data-channel message (a picture) comes as fragments
        self._reassembler = fragments.Reassembler(protocol.MAX_DOWNLOAD_MESSAGE_BYTES, max_count=1024)
        self._reader: asyncio.Task | None = None

    # ----- call set-up and tear-down -----

    async def connect(self, timeout: float = 30.0) -> None:
        """Offers, answers and waits for ``ready``. Raises RuntimeError with the server's error on a refusal."""
        use_loopback_only()
        pc = self.pc = RTCPeerConnection()
        pc.addTransceiver(self.microphone, direction="sendrecv")
        channel = self._channel = pc.createDataChannel("events")
        channel.on("message", self._on_message)
        pc.on("track", self._on_track)
        await pc.setLocalDescription(await pc.createOffer())
        body: dict[str, Any] = {"sdp": pc.localDescription.sdp, "type": "offer"}
        if self.voice is not None:
            body["voice"] = self.voice
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{self.server_url}/offer",
                json=body,
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as reply:
                answer = await reply.json(content_type=None)
                if reply.status != 200:
                    await pc.close()
                    raise RuntimeError(f"offer refused: HTTP {reply.status} {answer}")
        self.session_id = answer["session_id"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await self.wait_event(lambda e: e["type"] == "ready", timeout=timeout)

    async def hang_up(self, bye: bool = True) -> None:
        """Says ``bye`` (unless told not to: a caller that vanishes) and closes the peer connection."""
        if bye and self._channel is not None and self._channel.readyState == "open":
            self._channel.send(json.dumps({"type": "bye"}))
            await asyncio.sleep(0)  # let the message leave before the transport closes
        if self._reader is not None:
            self._reader.cancel()
        if self.pc is not None:
            await self.pc.close()

    # ----- talking -----

    def send(self, message: dict[str, Any] | str) -> None:
        self._channel.send(message if isinstance(message, str) else json.dumps(message))

    def ask(self, text: str) -> None:
        self.send({"type": "text", "text": text})

    def say(self, wave_16k: np.ndarray) -> None:
        self.microphone.say(wave_16k)

    # ----- listening -----

    def _on_message(self, raw: str | bytes) -> None:
        try:
            whole = self._reassembler.push(raw)
            if whole is None:
                return
            event = json.loads(whole)
        except ValueError:  # a broken fragment (ProtocolError) included
            event = {"type": "<unparsable>", "raw": str(raw)[:200]}
        self.events.append(event)
        self.event_times.append(time.monotonic())
        self._new_event.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._reader = asyncio.ensure_future(self._read_audio(track))

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            pcm = frame_to_mono(frame, dtype=np.int16).astype(np.float32)
            if float(np.sqrt(np.mean(pcm**2))) >= LOUD_RMS:
                self.loud_frames += 1
                self.last_loud_at = time.monotonic()

    def events_of(self, kind: str, since: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.events[since:] if e.get("type") == kind]

    async def wait_event(self, predicate, timeout: float = 30.0, since: int = 0) -> dict[str, Any]:
        """The first event from index ``since`` on that satisfies ``predicate``; TimeoutError names the events seen."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[since:]:
                if predicate(event):
                    return event
            since = max(since, len(self.events))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                kinds = [e.get("type") for e in self.events[-12:]]
                raise TimeoutError(f"no matching event within {timeout} s; last events: {kinds}")
            self._new_event.clear()
            try:
                await asyncio.wait_for(self._new_event.wait(), remaining)
            except TimeoutError:
                pass

    async def turn(
        self,
        text: str | None = None,
        wave_16k: np.ndarray | None = None,
        message: dict[str, Any] | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Asks (typed, spoken, or any client message that starts a turn) and waits for that turn's ``turn_end``;
        returns it with the turn's events and the loud frames heard during it."""
        since, loud_before = len(self.events), self.loud_frames
        if text is not None:
            self.ask(text)
        elif message is not None:
            self.send(message)
        else:
            self.say(wave_16k)
        started = await self.wait_event(lambda e: e["type"] == "turn_started", timeout=timeout, since=since)
        turn_id = started["turn_id"]
        end = await self.wait_event(
            lambda e: e["type"] == "turn_end" and e["turn_id"] == turn_id, timeout=timeout, since=since
        )
        return {
            "turn_id": turn_id,
            "reason": end["reason"],
            "events": self.events[since:],
            "loud_frames": self.loud_frames - loud_before,
        }
