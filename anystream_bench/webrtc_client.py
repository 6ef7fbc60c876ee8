"""One simulated caller: a real aiortc peer that speaks a WAV question and times the spoken answer.

It is built from the edge client's parts (:class:`edge_client.tracks.CaptureTrack` paces the microphone frames,
:class:`edge_client.tracks.RemoteAudioConsumer` reads the server's track) and speaks the wire protocol of
:mod:`assistant.protocol`: ``POST /offer``, ``ready``, the question on the audio track, ``turn_end``, then ``bye``.

The end of the user's speech is the moment the capture track hands out the frame holding the question's last sample
(aiortc sends it on at once); answer frames are stamped when the remote-audio reader gets them (after aiortc's
jitter buffer, shortened to one frame as the edge client's: :mod:`assistant.webrtc.jitter`).
See :mod:`anystream_bench.timeline` for the figures.
This module imports neither torch nor ray.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from anystream_bench.timeline import AnswerTimeline, Thresholds
from assistant import fragments, protocol
from assistant.audio import WEBRTC_SAMPLE_RATE, FrameSplitter, resample
from assistant.webrtc.jitter import shorten_audio_jitter_buffers
from edge_client.audio_io import CAPTURE_RATE, FRAME_SAMPLES
from edge_client.tracks import CaptureTrack, RemoteAudioConsumer

log = logging.getLogger(__name__)


class QuestionSource:
    """An :class:`edge_client.audio_io.AudioSource`: silence until :meth:`speak`, then lead silence, the question,
    then silence again (the call stays live while the answer comes back)."""

    live = False
    finite = True
    file_done = True

    def __init__(self, question_16k: np.ndarray, lead_silence_s: float = 0.3):
        wave = resample(np.asarray(question_16k, dtype=np.float32), 16000, CAPTURE_RATE)
        lead = np.zeros(int(round(lead_silence_s * CAPTURE_RATE)), dtype=np.float32)
        splitter = FrameSplitter(FRAME_SAMPLES)
        self._speech = splitter.push(np.concatenate([lead, wave])) + splitter.flush(pad=True)
        self._queue: list[np.ndarray] = []
        self.spoke_last_frame = False  # the frame just read was the question's last
        self._closed = False

    def speak(self) -> None:
        self._queue = list(self._speech)

    async def read(self) -> np.ndarray | None:
        if self._closed:
            return None
        if self._queue:
            frame = self._queue.pop(0)
            self.spoke_last_frame = not self._queue
            return frame
        self.spoke_last_frame = False
        return np.zeros(FRAME_SAMPLES, dtype=np.float32)

    def close(self) -> None:
        self._closed = True


class _QuestionTrack(CaptureTrack):
    """The capture track, noting when the question's last frame leaves it."""

    def __init__(self, source: QuestionSource):
        super().__init__(source)
        self.speech_end_times: list[float] = []

    async def recv(self):
        frame = await super().recv()
        if self.source.spoke_last_frame:
            self.speech_end_times.append(time.monotonic())
        return frame


class _NullSink:
    def write(self, pcm: np.ndarray) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class ClientResult:
    client: int
    start_offset_s: float
    status: str = "ok"  # ok | rejected | failed
    http_status: int | None = None
    reason: str | None = None  # the server's "reason" of a refused offer, or why the client failed
    session_id: str | None = None
    turns: list[dict[str, Any]] = field(default_factory=list)
    connect_s: float | None = None  # POST /offer until the data channel said ready

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class BenchClient:
    def __init__(
        self,
        index: int,
        server_url: str,
        question: np.ndarray,
        *,
        start_offset_s: float = 0.0,
        turns: int = 1,
        turn_timeout_s: float = 120.0,
        loopback_only: bool = True,
        voice: str | None = None,
        thresholds: Thresholds | None = None,
        drain_s: float = 0.4,
        offer_timeout_s: float = 30.0,
        api_key: str | None = None,
    ):
        """api_key: an API key or session token sent with the offer (``Authorization: Bearer``); None sends none."""
        self.index = index
        self.server_url = server_url.rstrip("/")
        self.source = QuestionSource(question)
        self.start_offset_s = start_offset_s
        self.turns = turns
        self.turn_timeout_s = turn_timeout_s
        self.loopback_only = loopback_only
        self.voice = voice
        self.thresholds = thresholds or Thresholds()
        self.drain_s = drain_s
        self.offer_timeout_s = offer_timeout_s
        self.api_key = api_key
        self.result = ClientResult(client=index, start_offset_s=start_offset_s)
        self._events: list[tuple[float, dict[str, Any]]] = []
        self._new_event = asyncio.Event()
        # a server message larger than one data-channel message (a picture) comes as fragments
        self._reassembler = fragments.Reassembler(protocol.MAX_DOWNLOAD_MESSAGE_BYTES, max_count=1024)
        self._heard = AnswerTimeline(t0=0.0)  # every frame of the server's track since the last turn was measured
        self._channel_closed = asyncio.Event()

    # ----- events -----

    def _on_message(self, raw: str | bytes) -> None:
        try:
            whole = self._reassembler.push(raw)
            if whole is None:
                return
            message = json.loads(whole)
        except ValueError:  # ProtocolError (a broken fragment) included
            return
        if isinstance(message, dict):
            self._events.append((time.monotonic(), message))
            self._new_event.set()

    async def _wait_event(self, predicate, deadline: float, start: int = 0) -> tuple[float, dict[str, Any]]:
        """The first event from index ``start`` on that ``predicate`` accepts; TimeoutError at ``deadline``."""
        seen = start
        while True:
            for t, message in self._events[seen:]:
                if predicate(message):
                    return t, message
            seen = len(self._events)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._new_event.clear()
            try:
                await asyncio.wait_for(self._new_event.wait(), remaining)
            except TimeoutError:
                pass

    def _on_audio(self, pcm: np.ndarray) -> None:
        self._heard.add(time.monotonic(), pcm, WEBRTC_SAMPLE_RATE)

    # ----- the call -----

    async def run(self) -> ClientResult:
        await asyncio.sleep(self.start_offset_s)
        if self.loopback_only:
            from assistant.webrtc.ice import use_loopback_only

            use_loopback_only(True)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]) if self.loopback_only else RTCConfiguration())
        consumer: RemoteAudioConsumer | None = None
        try:
            channel = pc.createDataChannel(protocol.DATA_CHANNEL_LABEL)
            channel.on("message", self._on_message)
            channel.on("close", self._channel_closed.set)
            track = _QuestionTrack(self.source)
            pc.addTrack(track)
            shorten_audio_jitter_buffers(pc)  # as the edge client: its playback buffer absorbs the jitter

            @pc.on("track")
            def on_track(remote: Any) -> None:
                nonlocal consumer
                if remote.kind == "audio" and consumer is None:
                    consumer = RemoteAudioConsumer(remote, _NullSink(), on_audio=self._on_audio)
                    consumer.start()

            t_offer = time.monotonic()
            if not await self._negotiate(pc):
                return self.result
            try:
                await self._wait_event(lambda m: m.get("type") == "ready", time.monotonic() + self.offer_timeout_s)
            except TimeoutError:
                return self._fail("no 'ready' from the server")
            self.result.connect_s = time.monotonic() - t_offer
            for turn in range(self.turns):
                if not await self._one_turn(turn, track):
                    break
            await self._bye(channel)
        except Exception as exc:
            log.exception("client %d failed", self.index)
            self._fail(f"{type(exc).__name__}: {exc}")
        finally:
            self.source.close()
            await pc.close()
            if consumer is not None:
                await consumer.stop()
        return self.result

    def _fail(self, reason: str) -> ClientResult:
        self.result.status, self.result.reason = "failed", reason
        return self.result

    async def _negotiate(self, pc: RTCPeerConnection) -> bool:
        await pc.setLocalDescription(await pc.createOffer())
        body = protocol.OfferRequest(sdp=pc.localDescription.sdp, voice=self.voice).to_dict()
        try:
            timeout = aiohttp.ClientTimeout(total=self.offer_timeout_s)
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            async with aiohttp.ClientSession(timeout=timeout) as http:
                async with http.post(f"{self.server_url}/offer", json=body, headers=headers) as response:
                    self.result.http_status = response.status
                    text = await response.text()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._fail(f"cannot reach {self.server_url}/offer: {exc or type(exc).__name__}")
            return False
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {}
        if self.result.http_status != 200:
            # a full server (503) or a key at its session limit (429) refused a caller: a figure of the load level.
            # Anything else (401 no key, 403, 413, 415, 400) is a broken set-up: failed, with the server's words.
            refused = self.result.http_status in (429, 503)
            self.result.status = "rejected" if refused else "failed"
            if not isinstance(answer, dict):
                answer = {}
            reason, error = answer.get("reason"), answer.get("error")
            if refused:
                self.result.reason = reason or text[:200]
            else:
                self.result.reason = f"HTTP {self.result.http_status} {reason}: {error}" if reason else text[:200]
            return False
        self.result.session_id = answer.get("session_id")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return True

    async def _one_turn(self, turn: int, track: _QuestionTrack) -> bool:
        spoken_before = len(track.speech_end_times)
        events_before = len(self._events)
        self.source.speak()
        deadline = time.monotonic() + self.turn_timeout_s
        while len(track.speech_end_times) == spoken_before:
            if time.monotonic() > deadline:
                self._fail(f"turn {turn}: the question was never sent")
                return False
            await asyncio.sleep(0.01)
        t_end = track.speech_end_times[-1]
        record: dict[str, Any] = {"turn": turn}
        try:
            # the answer is the first turn the server starts after we began to speak, and its turn_end
            _, started = await self._wait_event(lambda m: m.get("type") == "turn_started", deadline, events_before)
            _, ended = await self._wait_event(
                lambda m: m.get("type") == "turn_end" and m.get("turn_id") == started.get("turn_id"),
                deadline,
                events_before,
            )
        except TimeoutError:
            self._fail(f"turn {turn}: no answer within {self.turn_timeout_s:g} s")
            return False
        await asyncio.sleep(self.drain_s)  # turn_end leaves after the last frame; the jitter buffer still holds some
        stopped = [t for t, m in self._events[events_before:] if m.get("type") == "speech_stopped" and t >= t_end]
        timeline = AnswerTimeline(t0=t_end, frames=[f for f in self._heard.frames if f[0] >= t_end])
        self._heard = AnswerTimeline(t0=0.0)  # measured; what follows is the silence before the next question
        figures = timeline.figures(self.thresholds)
        record.update(figures)
        record["finish_reason"] = ended.get("reason")
        record["endpoint_s"] = stopped[0] - t_end if stopped else None
        if stopped and figures["ttfa_s"] is not None:
            record["ttfa_after_endpoint_s"] = figures["ttfa_s"] - record["endpoint_s"]
        else:
            record["ttfa_after_endpoint_s"] = None
        record["errors"] = [m.get("message") for _, m in self._events[events_before:] if m.get("type") == "error"]
        # a question heard as two (the VAD ended the turn inside it) shows as more than one speech_stopped
        record["speech_stops"] = sum(m.get("type") == "speech_stopped" for _, m in self._events[events_before:])
        self.result.turns.append(record)
        return True

    async def _bye(self, channel: Any) -> None:
        if channel.readyState != "open":
            return
        channel.send(protocol.to_json(protocol.ByeMessage()))
        try:
            await asyncio.wait_for(self._channel_closed.wait(), 2.0)
        except TimeoutError:
            log.info("client %d: the server did not close the session after bye", self.index)


async def run_clients(
    server_url: str, question: np.ndarray, offsets: list[float], **options: Any
) -> list[ClientResult]:
    """Runs one client per start offset, all at once; returns their results in order."""
    clients = [
        BenchClient(i, server_url, question, start_offset_s=offset, **options) for i, offset in enumerate(offsets)
    ]
    return list(await asyncio.gather(*(client.run() for client in clients)))
