"""The WebRTC media side of the edge client: the capture track we send and the consumer of the track we get.

``CaptureTrack`` is the shared :class:`assistant.rtc_audio.PacedAudioTrack` fed by an audio source (20 ms 48 kHz mono
s16 frames). On the way each frame goes through the echo canceller when there is one (:mod:`edge_client.echo`: the
assistant's own voice from the speaker is taken out before anything listens to the frame or sends it), then through
client-side endpointing (webrtcvad at 16 kHz) so the client knows when the user starts and stops speaking: the
"listening…" feedback and the records only; the server's VAD decides turns and barge-in. ``RemoteAudioConsumer``
always reads the server's track (an unread aiortc track backs up its decoder queue) and writes it to the sink as
48 kHz mono int16 (through :func:`assistant.rtc_audio.frame_to_mono`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import cast

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from assistant.audio import float_to_pcm16, resample
from assistant.endpointing import EndpointerConfig, SpeechEnd, SpeechStart, VadEndpointer
from assistant.rtc_audio import REAL_TIME, Clock, PacedAudioTrack, frame_to_mono
from edge_client.audio_io import CAPTURE_RATE, FRAME_MS, FRAME_SAMPLES, AudioSink, AudioSource, takes_seq
from edge_client.echo import EchoCanceller
from edge_client.jitter import frame_seq

log = logging.getLogger(__name__)

VAD_RATE = 16_000
VAD_FRAME_MS = 20


class CaptureTrack(PacedAudioTrack):
    """Audio track fed by an :class:`~edge_client.audio_io.AudioSource`.

    Frames carry ``pts = n * 960`` with ``time_base = 1/48000``. A source that is not ``live`` (a file) is paced here
    by those timestamps on ``clock``, so it goes out in real time; a live source (the microphone) is already paced by
    its device clock. ``on_speech_start()`` / ``on_speech_end(duration_s)`` are called (in the event loop) when the
    client-side VAD decides the user started / stopped speaking. ``echo``: the canceller each frame goes through first
    (None: frames go out as captured).
    """

    def __init__(
        self,
        source: AudioSource,
        vad_aggressiveness: int = 2,
        on_speech_start: Callable[[], None] | None = None,
        on_speech_end: Callable[[float], None] | None = None,
        endpointer_config: EndpointerConfig | None = None,
        clock: Clock = REAL_TIME,
        echo: EchoCanceller | None = None,
    ):
        super().__init__(CAPTURE_RATE, FRAME_MS, clock=clock, paced=not source.live)
        self.source = source
        self.echo = echo
        config = endpointer_config or EndpointerConfig(
            sample_rate=VAD_RATE, frame_ms=VAD_FRAME_MS, aggressiveness=vad_aggressiveness
        )
        self.endpointer = VadEndpointer(config)
        self.on_speech_start = on_speech_start
        self.on_speech_end = on_speech_end

    @property
    def frames_sent(self) -> int:
        return self.frame_count

    async def next_pcm(self) -> np.ndarray | None:
        wave = await self.source.read()
        if wave is None:
            return None
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        if wave.size != FRAME_SAMPLES:
            raise ValueError(f"audio sources must yield {FRAME_SAMPLES}-sample frames, got {wave.size}")
        if self.echo is not None:
            wave = self.echo.process(wave)
        self._run_vad(wave)
        return wave

    def _run_vad(self, wave_48k: np.ndarray) -> None:
        # 960 samples at 48 kHz -> exactly 320 at 16 kHz: one 20 ms VAD frame per capture frame.
        pcm16k = float_to_pcm16(resample(wave_48k, CAPTURE_RATE, VAD_RATE))
        for event in self.endpointer.push(pcm16k.tobytes()):
            try:
                if isinstance(event, SpeechStart) and self.on_speech_start is not None:
                    self.on_speech_start()
                elif isinstance(event, SpeechEnd) and self.on_speech_end is not None:
                    self.on_speech_end(event.duration_s)
            except Exception:
                log.exception("speech callback failed")


class RemoteAudioConsumer:
    """Reads the server's audio track until it ends and writes every frame to the sink.

    A sink whose ``write`` takes ``seq`` (a jittered one) gets each frame's 20 ms slot, from its RTP timestamp, so its
    jitter buffer can order frames and see the lost ones. ``on_audio(pcm)`` (optional) sees each mono frame too
    (statistics, tests); ``onsets`` holds the ``clock()`` times at which received audio arrived audible;
    ``last_frame_at`` the time the last frame arrived (the client's watch for a dead connection).
    """

    # A frame louder than about -40 dBFS after 200 ms of quiet is the start of a sound worth timing.
    ONSET_PEAK = 328
    ONSET_QUIET_FRAMES = 10

    def __init__(
        self,
        track: MediaStreamTrack,
        sink: AudioSink,
        on_audio: Callable[[np.ndarray], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.track = track
        self.sink = sink
        self.on_audio = on_audio
        self.clock = clock
        self.frames = 0
        self.samples = 0
        self.peak = 0
        self.onsets: list[float] = []  # clock() of each silent -> audible change (start of a reply)
        self._quiet_frames = self.ONSET_QUIET_FRAMES
        self._task: asyncio.Task[None] | None = None
        self._sink_takes_seq = takes_seq(sink)
        self.last_frame_at: float | None = None  # clock() when the last frame arrived

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return self._task

    async def _run(self) -> None:
        while True:
            try:
                frame = await self.track.recv()
            except MediaStreamError:
                log.debug("remote audio track ended")
                return
            pcm = frame_to_mono(cast(av.AudioFrame, frame), CAPTURE_RATE, np.int16)
            self.last_frame_at = self.clock()
            self.frames += 1
            self.samples += pcm.size
            frame_peak = int(np.abs(pcm.astype(np.int32)).max()) if pcm.size else 0
            self.peak = max(self.peak, frame_peak)
            if frame_peak >= self.ONSET_PEAK:
                if self._quiet_frames >= self.ONSET_QUIET_FRAMES:
                    self.onsets.append(self.clock())
                self._quiet_frames = 0
            else:
                self._quiet_frames += 1
            try:
                if self._sink_takes_seq:
                    self.sink.write(pcm, seq=frame_seq(frame.pts, frame.time_base))  # type: ignore[call-arg]
                else:
                    self.sink.write(pcm)
            except Exception:
                log.exception("audio sink write failed")
            if self.on_audio is not None:
                self.on_audio(pcm)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
