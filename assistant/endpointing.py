"""Voice-activity endpointing: decides when a person starts speaking, pauses, goes on, and when the turn ends.

Used on the server (gateway, on the incoming WebRTC audio) and on the edge client (on the capture path).
webrtcvad accepts only 16-bit mono PCM at 8/16/32/48 kHz in frames of exactly 10, 20 or 30 ms; anything else
is rejected here with a clear error rather than webrtcvad's opaque "Error while processing frame".

Events, in the order one utterance produces them:

- :class:`SpeechStart`: ``start_ms`` of voiced frames within ``start_window_ms``, of which at least
  ``start_pitched_ms`` have a pitch. webrtcvad alone calls a cough, a click or a door slam speech; the pitch rule
  (a normalised autocorrelation peak between 60 and 400 Hz, :func:`periodicity`) keeps them from starting a turn, and
  so from interrupting a reply (barge-in starts here);
- :class:`SpeechProgress` (only with ``progress_every_ms`` > 0): every ``progress_every_ms`` of an utterance while it
  goes on, the utterance so far, so a listener can encode and prefill it before the turn ends;
- :class:`SpeechPaused` (only with ``pause_ms`` > 0): the speaker has been quiet for ``pause_ms``. It carries the
  utterance so far, exactly the audio a :class:`SpeechEnd` with no sound in between would carry, so a listener can
  start work on it speculatively;
- :class:`SpeechResumed`: sound again after a pause: whatever was started on the paused audio is stale;
- :class:`SpeechEnd`: ``end_silence_ms`` of quiet (or ``max_utterance_ms`` of utterance). ``same_as_pause`` says its
  audio is the audio of the last :class:`SpeechPaused` (nothing heard since), so speculative work on it stands.
  An utterance with less than ``min_speech_ms`` of pitched voice ends in :class:`SpeechDiscarded` instead (a short
  noise that got past the start rule is not a question).

Quiet is measured two ways, and the first to reach a duration counts. webrtcvad keeps calling frames speech for about
100 ms after a voice stops (its hangover), so within an utterance a frame is also quiet when its level is
``quiet_below_db`` under the utterance's loudest pitched frame: a pause and an end are then seen that much sooner,
which is most of what a listener waits for. In loud background noise no frame is that quiet, and webrtcvad's own
silence decides as before.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import webrtcvad

from assistant.audio import pcm16_to_float

VAD_SAMPLE_RATES = (8000, 16000, 32000, 48000)
VAD_FRAME_MS = (10, 20, 30)
# The pitch range the periodicity test searches (Hz): low male voices to high children's voices.
PITCH_RANGE_HZ = (60.0, 400.0)


@dataclass(frozen=True)
class EndpointerConfig:
    sample_rate: int = 16000
    frame_ms: int = 20
    aggressiveness: int = 2  # 0 (least) .. 3 (most eager to call audio non-speech)
    start_ms: int = 120  # voiced audio needed (within the start window) before we call it speech
    start_window_ms: int = 200
    start_pitched_ms: int = 60  # of which this much must have a pitch (0: webrtcvad alone decides)
    min_speech_ms: int = 200  # pitched voice an utterance needs to count as a turn (else SpeechDiscarded)
    pitch_threshold: float = 0.5  # normalised autocorrelation peak that makes a frame pitched (noise stays < 0.25)
    # Quiet after which a listener may start its answer speculatively (SpeechPaused; 0, or not under end_silence_ms:
    # none). Much shorter and the gaps inside words trigger it; each false one costs a discarded encode and prefill
    # (SpeechResumed), never a wrong answer. benchmarks/endpointing.py measures both on the held-out questions.
    pause_ms: int = 120
    # While the speaker goes on, the utterance so far is handed on this often (SpeechProgress; 0: never), so a
    # listener can encode and prefill the question before it ends: the pause's speculative start then prefills only
    # the last part. Each costs an encode and a prefill of what is new.
    progress_every_ms: int = 0
    # Quiet that ends a turn. Shorter answers sooner and cuts people off mid-sentence more often: on the held-out
    # questions 300 ms still cut none, but people pause longer than espeak does.
    end_silence_ms: int = 400
    # Read by the server's session, not by the endpointer: speech that starts within this long of the end of the
    # previous turn continues that turn's question (the pause was not its end). Both halves are asked as one and the
    # answer to the first half, cut off by the barge-in, is forgotten (0: every utterance is a question of its own).
    # 800 ms covers mid-question pauses of about a second at end_silence_ms 300 (speech is called started 120 ms in);
    # much longer and someone who interrupts the answer with a new question gets it joined to the old one.
    continue_within_ms: int = 800
    quiet_below_db: float = 30.0  # a frame this far under the utterance's loudest pitched frame is quiet
    quiet_floor_dbfs: float = -60.0  # and any frame under this level
    pre_roll_ms: int = 200  # audio kept from before the start decision, so the first syllable is not lost
    max_utterance_ms: int = 30_000  # a turn is forced to end here (a stuck-open mic must not grow forever)

    def __post_init__(self) -> None:
        if self.sample_rate not in VAD_SAMPLE_RATES:
            raise ValueError(f"webrtcvad needs a sample rate in {VAD_SAMPLE_RATES}, got {self.sample_rate}")
        if self.frame_ms not in VAD_FRAME_MS:
            raise ValueError(f"webrtcvad needs frames of {VAD_FRAME_MS} ms, got {self.frame_ms}")
        if not 0 <= self.aggressiveness <= 3:
            raise ValueError("aggressiveness must be 0..3")
        if self.start_pitched_ms > self.start_window_ms:
            raise ValueError("start_pitched_ms cannot exceed start_window_ms")
        if self.pause_ms < 0:
            raise ValueError("pause_ms must be >= 0 (0: no pause events)")
        if self.progress_every_ms < 0:
            raise ValueError("progress_every_ms must be >= 0 (0: no progress events)")
        if self.continue_within_ms < 0:
            raise ValueError("continue_within_ms must be >= 0 (0: turns never continue)")
        if not 0.0 < self.pitch_threshold < 1.0:
            raise ValueError("pitch_threshold must be between 0 and 1")

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
class SpeechPaused:
    audio: np.ndarray  # float32 mono, the utterance so far (what a SpeechEnd now would carry)
    sample_rate: int = 16000

    @property
    def duration_s(self) -> float:
        return self.audio.size / self.sample_rate


@dataclass(frozen=True)
class SpeechProgress:
    audio: np.ndarray  # float32 mono, the utterance so far (pre-roll included), while it goes on
    sample_rate: int = 16000


@dataclass(frozen=True)
class SpeechResumed:
    pass


@dataclass(frozen=True)
class SpeechEnd:
    audio: np.ndarray  # float32 mono at the endpointer's sample rate, pre-roll included
    forced: bool = False  # True when max_utterance_ms cut the turn
    sample_rate: int = 16000
    same_as_pause: bool = False  # the audio equals the last SpeechPaused's: no voice since that pause

    @property
    def duration_s(self) -> float:
        return self.audio.size / self.sample_rate


@dataclass(frozen=True)
class SpeechDiscarded:
    """An utterance that started but held less than ``min_speech_ms`` of pitched voice: no turn."""

    duration_s: float


VadEvent = SpeechStart | SpeechProgress | SpeechPaused | SpeechResumed | SpeechEnd | SpeechDiscarded


def periodicity(window: np.ndarray, sample_rate: int) -> float:
    """The highest normalised autocorrelation of ``window`` at a lag in the pitch range: near 1 for voiced speech
    (a periodic glottal source), near 0 for noise, clicks and coughs. Each lag is normalised by the energy of the
    two overlapping parts, so a window that fades in or out is not penalised."""
    x = np.asarray(window, dtype=np.float64)
    x = x - x.mean()
    n = x.size
    low = int(sample_rate / PITCH_RANGE_HZ[1])
    high = min(int(sample_rate / PITCH_RANGE_HZ[0]), n // 2)
    if high <= low:
        return 0.0
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(x, size)
    ac = np.fft.irfft(spectrum * np.conj(spectrum), size)[: high + 1]
    energy = np.concatenate([[0.0], np.cumsum(x * x)])
    lags = np.arange(low, high + 1)
    head = energy[n - lags]  # x[0 : n-lag]
    tail = energy[n] - energy[lags]  # x[lag : n]
    denominator = np.sqrt(head * tail)
    valid = denominator > 1e-9
    if not valid.any():
        return 0.0
    return float(np.max(ac[lags][valid] / denominator[valid]))


def level_dbfs(frame: np.ndarray) -> float:
    """RMS level of float samples in dB relative to full scale (-120 for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float64)))) if frame.size else 0.0
    return 20.0 * np.log10(max(rms, 1e-6))


class VadEndpointer:
    def __init__(self, config: EndpointerConfig | None = None):
        self.config = config or EndpointerConfig()
        c = self.config
        frames = lambda ms: max(1, ms // c.frame_ms)  # noqa: E731
        self._start_frames = frames(c.start_ms)
        self._start_pitched_frames = c.start_pitched_ms // c.frame_ms
        self._min_speech_frames = c.min_speech_ms // c.frame_ms
        window = max(self._start_frames, c.start_window_ms // c.frame_ms)
        self._window: deque[tuple[bool, bool, float]] = deque(maxlen=window)
        self._pre_roll: deque[bytes] = deque(maxlen=max(1, c.pre_roll_ms // c.frame_ms))
        self._pause_frames = c.pause_ms // c.frame_ms if 0 < c.pause_ms < c.end_silence_ms else 0
        self._end_frames = frames(c.end_silence_ms)
        self._keep_frames = 100 // c.frame_ms  # trailing quiet kept on the utterance
        self._progress_frames = c.progress_every_ms // c.frame_ms if c.progress_every_ms else 0
        self._max_frames = frames(c.max_utterance_ms)
        self._previous = np.zeros(c.frame_samples, np.float32)  # the periodicity window spans two frames
        self.reset()

    def reset(self) -> None:
        """Forgets any turn in progress (used on interrupt or when the peer goes away)."""
        # webrtcvad keeps a hangover state that would call the next frames speech; start it afresh too.
        self._vad = webrtcvad.Vad(self.config.aggressiveness)
        self._window.clear()
        self._pre_roll.clear()
        self._previous[:] = 0.0
        self._speaking = False
        self._utterance: list[bytes] = []
        self._unvoiced_run = 0  # frames since webrtcvad last said speech
        self._quiet_run = 0  # frames since the last frame above the quiet level
        self._pitched_frames = 0
        self._loudest_dbfs = -120.0  # the utterance's loudest pitched frame
        self._paused_audio: np.ndarray | None = None  # the last SpeechPaused's audio, until sound resumes

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
        samples = pcm16_to_float(frame)
        voiced = self._vad.is_speech(frame, c.sample_rate)
        pitched = self._pitched(samples, voiced)
        level = level_dbfs(samples)
        if not self._speaking:
            self._window.append((voiced, pitched, level))
            self._pre_roll.append(frame)
            if self._starts():
                self._begin_utterance()
                return [SpeechStart()]
            return []
        events: list[VadEvent] = []
        self._utterance.append(frame)
        if pitched:
            self._pitched_frames += 1
            self._loudest_dbfs = max(self._loudest_dbfs, level)
        self._unvoiced_run = 0 if voiced else self._unvoiced_run + 1
        quiet = not voiced or level < max(self._loudest_dbfs - c.quiet_below_db, c.quiet_floor_dbfs)
        if quiet:
            self._quiet_run += 1
        else:
            self._quiet_run = 0
            if self._paused_audio is not None:
                self._paused_audio = None
                events.append(SpeechResumed())
        if max(self._quiet_run, self._unvoiced_run) >= self._end_frames:
            events.append(self._finish(forced=False))
        elif len(self._utterance) >= self._max_frames:
            events.append(self._finish(forced=True))
        elif self._pause_frames and self._quiet_run == self._pause_frames and self._long_enough():
            self._paused_audio = self._audio_so_far()
            events.append(SpeechPaused(audio=self._paused_audio, sample_rate=c.sample_rate))
        elif self._progress_frames and len(self._utterance) % self._progress_frames == 0 and not self._quiet_run:
            events.append(SpeechProgress(audio=self._audio_so_far(), sample_rate=c.sample_rate))
        return events

    def _pitched(self, samples: np.ndarray, voiced: bool) -> bool:
        window = np.concatenate([self._previous, samples])
        self._previous = samples
        if not voiced or not self.config.start_pitched_ms and not self.config.min_speech_ms:
            return voiced
        return periodicity(window, self.config.sample_rate) >= self.config.pitch_threshold

    def _starts(self) -> bool:
        voiced = sum(v for v, _, _ in self._window)
        pitched = sum(p for _, p, _ in self._window)
        return voiced >= self._start_frames and pitched >= self._start_pitched_frames

    def _begin_utterance(self) -> None:
        self._speaking = True
        self._utterance = list(self._pre_roll)
        self._pitched_frames = sum(p for _, p, _ in self._window)
        self._loudest_dbfs = max((level for _, p, level in self._window if p), default=-120.0)
        self._pre_roll.clear()
        self._window.clear()
        self._unvoiced_run = self._quiet_run = 0
        self._paused_audio = None

    def _long_enough(self) -> bool:
        return self._pitched_frames >= self._min_speech_frames

    def _audio_so_far(self) -> np.ndarray:
        # Drop the trailing quiet that only served to detect the pause or end (keep 100 ms of it).
        quiet = min(self._quiet_run, len(self._utterance))
        keep = len(self._utterance) - max(0, quiet - self._keep_frames)
        return pcm16_to_float(b"".join(self._utterance[:keep]))

    def _finish(self, forced: bool) -> SpeechEnd | SpeechDiscarded:
        c = self.config
        long_enough = self._long_enough()
        paused = self._paused_audio
        same_as_pause = paused is not None and not forced
        audio = paused if same_as_pause and paused is not None else self._audio_so_far()
        self._speaking = False
        self._utterance = []
        self._unvoiced_run = self._quiet_run = 0
        self._pitched_frames = 0
        self._paused_audio = None
        if not long_enough:
            return SpeechDiscarded(duration_s=audio.size / c.sample_rate)
        return SpeechEnd(audio=audio, forced=forced, sample_rate=c.sample_rate, same_as_pause=same_as_pause)
