"""Voice-activity endpointing with webrtcvad: decides when a person starts speaking and when the turn ends.

Used on the server (gateway, on the incoming WebRTC audio) and on the edge client (on the capture path).
webrtcvad accepts only 16-bit mono PCM at 8/16/32/48 kHz in frames of exactly 10, 20 or 30 ms; anything else
is rejected here with a clear error rather than webrtcvad's opaque "Error while processing frame".
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import webrtcvad

from assistant.audio import pcm16_to_float

VAD_SAMPLE_RATES = (8000, 16000, 32000, 48000)
VAD_FRAME_MS = (10, 20, 30)


@dataclass(frozen=True)
class EndpointerConfig:
    sample_rate: int = 16000
    frame_ms: int = 20
    aggressiveness: int = 2  # 0 (least) .. 3 (most eager to call audio non-speech)
    start_ms: int = 120  # voiced audio needed (within the start window) before we call it speech
    start_window_ms: int = 200
    end_silence_ms: int = 700  # unvoiced audio that ends a turn; shorter cuts people off mid-sentence
    pre_roll_ms: int = 200  # audio kept from before the start decision, so the first syllable is not lost
    max_utterance_ms: int = 30_000  # a turn is forced to end here (a stuck-open mic must not grow forever)

    def __post_init__(self) -> None:
        if self.sample_rate not in VAD_SAMPLE_RATES:
            raise ValueError(f"webrtcvad needs a sample rate in {VAD_SAMPLE_RATES}, got {self.sample_rate}")
        if self.frame_ms not in VAD_FRAME_MS:
            raise ValueError(f"webrtcvad needs frames of {VAD_FRAME_MS} ms, got {self.frame_ms}")
        if not 0 <= self.aggressiveness <= 3:
            raise ValueError("aggressiveness must be 0..3")

    @property
    def frame_samples(self) -> int:
        return self.sample_rate * self.frame_ms // 1000

    @property
    def frame_bytes(self) -> int:
        return 2 * self.frame_samples


@dataclass(frozen=True)
class SpeechStart:
    pass


@dataclass(frozen=True)
class SpeechEnd:
    audio: np.ndarray  # float32 mono at the endpointer's sample rate, pre-roll included
    forced: bool = False  # True when max_utterance_ms cut the turn
    sample_rate: int = 16000

    @property
    def duration_s(self) -> float:
        return self.audio.size / self.sample_rate


VadEvent = SpeechStart | SpeechEnd


class VadEndpointer:
    def __init__(self, config: EndpointerConfig | None = None):
        self.config = config or EndpointerConfig()
        c = self.config
        self._start_frames = max(1, c.start_ms // c.frame_ms)
        self._window: deque[bool] = deque(maxlen=max(self._start_frames, c.start_window_ms // c.frame_ms))
        self._pre_roll: deque[bytes] = deque(maxlen=max(1, c.pre_roll_ms // c.frame_ms))
        self._end_frames = max(1, c.end_silence_ms // c.frame_ms)
        self._max_frames = max(1, c.max_utterance_ms // c.frame_ms)
        self.reset()

    def reset(self) -> None:
        """Forgets any turn in progress (used on interrupt or when the peer goes away)."""
        # webrtcvad keeps a hangover state that would call the next frames speech; start it afresh too.
        self._vad = webrtcvad.Vad(self.config.aggressiveness)
        self._window.clear()
        self._pre_roll.clear()
        self._speaking = False
        self._utterance: list[bytes] = []
        self._silent_run = 0

    @property
    def speaking(self) -> bool:
        return self._speaking

    def push(self, frame: bytes) -> list[VadEvent]:
        c = self.config
        if len(frame) != c.frame_bytes:
            raise ValueError(
                f"VAD frame must be {c.frame_ms} ms of 16-bit mono at {c.sample_rate} Hz "
                f"({c.frame_bytes} bytes), got {len(frame)} bytes"
            )
        voiced = self._vad.is_speech(frame, c.sample_rate)
        if not self._speaking:
            self._window.append(voiced)
            self._pre_roll.append(frame)
            if sum(self._window) >= self._start_frames:
                self._speaking = True
                self._utterance = list(self._pre_roll)
                self._pre_roll.clear()
                self._window.clear()
                self._silent_run = 0
                return [SpeechStart()]
            return []
        self._utterance.append(frame)
        self._silent_run = 0 if voiced else self._silent_run + 1
        if self._silent_run >= self._end_frames:
            return [self._finish(forced=False)]
        if len(self._utterance) >= self._max_frames:
            return [self._finish(forced=True)]
        return []

    def _finish(self, forced: bool) -> SpeechEnd:
        c = self.config
        # Drop the trailing silence that only served to detect the end (keep 100 ms of it).
        keep = len(self._utterance) - max(0, self._silent_run - 100 // c.frame_ms)
        audio = pcm16_to_float(b"".join(self._utterance[:keep]))
        self._speaking = False
        self._utterance = []
        self._silent_run = 0
        return SpeechEnd(audio=audio, forced=forced, sample_rate=c.sample_rate)
