"""A loudspeaker and a microphone in one room, for the echo tests.

- :func:`speech`: words from espeak-ng (a subprocess) at any rate and level; where espeak-ng is missing, a voice-like
  stand-in (:func:`voice_like`: harmonics of a moving pitch, shaped by formants that change every syllable, in
  syllable-rate bursts).
- :func:`echo_path`: a room's response: a bulk delay, then a random decaying tail, scaled so the echo comes back
  ``level_db`` under what was played.
- :func:`speech_starts`: where the server's endpointer (its default config: webrtcvad at aggressiveness 2 and the
  pitch rule) starts a turn in a 48 kHz signal.
- :class:`Room`: an edge client's sink and source in one room. ``room.speaker`` is an
  :class:`~edge_client.audio_io.AudioSink` (what the client plays); ``room.microphone`` an
  :class:`~edge_client.audio_io.AudioSource` that hears the speaker through the echo path, plus noise and the
  user's utterances, each at a fixed time or a delay after the speaker starts playing.

The room's clock is its sound card, full duplex: each time the microphone delivers a frame, the speaker takes the next
frame to play from its jitter buffer. Microphone and speaker thus run on one sample count, as on a real card, and a
stall of the event loop shifts nothing between them.
"""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import soundfile
from scipy.signal import fftconvolve

from assistant.audio import float_to_pcm16, resample
from assistant.endpointing import EndpointerConfig, SpeechStart, VadEndpointer
from assistant.rtc_audio import REAL_TIME, Clock
from edge_client.audio_io import CAPTURE_RATE, FRAME_SAMPLES
from edge_client.jitter import JitterBuffer

RATE = CAPTURE_RATE


def level(wave: np.ndarray) -> float:
    """RMS in dBFS over the samples that are not (near) silent."""
    x = np.asarray(wave, dtype=np.float64)
    active = x[np.abs(x) > 1e-3 * max(np.abs(x).max(), 1e-9)]
    return 10 * np.log10(np.mean(active**2) + 1e-20)


def at_level(wave: np.ndarray, dbfs: float) -> np.ndarray:
    return (wave * 10 ** ((dbfs - level(wave)) / 20)).astype(np.float32)


def voice_like(seconds: float, pitch_hz: float, seed: int, rate: int = RATE) -> np.ndarray:
    """A stand-in for speech: harmonics of a pitch that drifts, weighted by three formants that move to a new
    vowel every syllable (~4 a second), in syllable bursts with short gaps."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0 = pitch_hz * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    syllable = (t * 4.2).astype(int)
    formants = rng.uniform([300, 900, 2300], [800, 2200, 3200], size=(syllable.max() + 1, 3))[syllable]
    wave = np.zeros(n)
    for k in range(1, int(4000 / pitch_hz)):
        weight = sum(np.exp(-(((k * f0 - formants[:, i]) / (80 + 40 * i)) ** 2)) / (1 + i) for i in range(3))
        wave += weight * np.sin(k * phase) / np.sqrt(k)
    envelope = np.clip(np.sin(np.pi * (t * 4.2 % 1)) * 1.4, 0, 1) ** 2
    return at_level(wave * envelope + 0.01 * rng.standard_normal(n) * envelope, -20)


def speech(
    text: str, voice: str = "en-us", rate: int = RATE, dbfs: float = -20, pitch: int = 50, seconds_if_missing=3.0
) -> np.ndarray:
    """``text`` spoken by espeak-ng (float32 mono at ``rate``, RMS of the voiced part at ``dbfs``); a voice-like
    sound of ``seconds_if_missing`` when espeak-ng is not installed."""
    if shutil.which("espeak-ng") is None:
        return at_level(voice_like(seconds_if_missing, 100 + 2 * pitch, seed=pitch, rate=rate), dbfs)
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", "165", "--stdout", text],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    data, source_rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    # through 16 kHz, as the server's speech is: nothing above 8 kHz
    wave = resample(resample(data.reshape(-1), source_rate, 16000), 16000, rate)
    return at_level(wave, dbfs)


def echo_path(
    rng: np.random.Generator, delay_ms: float, tail_ms: float = 150, level_db: float = -15, rate: int = RATE
) -> np.ndarray:
    """A bulk delay, then a random response decaying by 60 dB over ``tail_ms``; its energy (the echo's power gain
    for a white sound) is ``level_db``."""
    n = int(rate * tail_ms / 1000)
    t = np.arange(n) / rate
    tail = rng.standard_normal(n) * 10 ** (-3 * t / (tail_ms / 1000))
    path = np.concatenate([np.zeros(int(rate * delay_ms / 1000)), tail])
    return (path * 10 ** (level_db / 20) / np.sqrt(np.sum(path**2))).astype(np.float32)


def speech_starts(wave48: np.ndarray, config: EndpointerConfig | None = None) -> list[float]:
    """The times (s) at which the server's endpointer starts a turn in ``wave48`` (48 kHz float)."""
    pcm = float_to_pcm16(resample(np.asarray(wave48, dtype=np.float32), RATE, 16000))
    vad = VadEndpointer(config or EndpointerConfig())
    frame = vad.config.frame_samples
    return [
        i / 16000
        for i in range(0, pcm.size - frame + 1, frame)
        for event in vad.push(pcm[i : i + frame].tobytes())
        if isinstance(event, SpeechStart)
    ]


class _Utterance:
    def __init__(self, wave: np.ndarray, at_s: float | None, after_playback_s: float | None):
        self.wave = wave
        self.start: int | None = None if at_s is None else int(at_s * RATE)  # in microphone samples
        self.after_playback = None if after_playback_s is None else int(after_playback_s * RATE)
        self.heard_at: float | None = None  # clock() when the microphone frame holding its first sample was read


class _Speaker:
    """What the client plays: a sink with its own jitter buffer (as the client's speaker has), which the room's sound
    card pulls one frame from each time the microphone delivers one (a full-duplex card: one clock for both)."""

    def __init__(self, room: Room, capacity_s: float):
        self.room = room
        self.jitter = JitterBuffer()
        self.samples = np.zeros(int(capacity_s * RATE), dtype=np.float32)  # everything played, end to end
        self.written = 0
        self.first_loud: int | None = None  # speaker sample where the first audible playback began

    def write(self, pcm: np.ndarray, seq: int | None = None) -> None:
        self.jitter.push(pcm, seq)

    def play_next(self) -> None:
        """The sound card takes the next frame to play (the jitter buffer's listeners, the canceller's among them,
        see it now)."""
        frame = self.jitter.pull().astype(np.float32) / 32768
        n = min(frame.size, self.samples.size - self.written)  # a full room stops recording: bounded
        self.samples[self.written : self.written + n] = frame[:n]
        if self.first_loud is None and n and np.sqrt(np.mean(frame[:n] ** 2)) > 10 ** (-45 / 20):
            self.first_loud = self.written
        self.written += n

    def flush(self) -> None:
        self.jitter.flush()

    def close(self) -> None:
        pass


class _Microphone:
    """What the client captures: the speaker through the echo path, the user's utterances, noise."""

    live = False  # the capture track paces it
    finite = True

    def __init__(self, room: Room):
        self.room = room
        self.frames_read = 0
        self._closed = False

    @property
    def file_done(self) -> bool:
        """Every utterance has been said (the client then hangs up after the next answer)."""
        end = self.frames_read * FRAME_SAMPLES
        return all(u.start is not None and end >= u.start + u.wave.size for u in self.room.utterances)

    async def read(self) -> np.ndarray | None:
        if self._closed:
            return None
        frame = self.room.capture(self.frames_read)
        self.room.speaker.play_next()  # heard from the next frame on
        self.frames_read += 1
        return frame

    def close(self) -> None:
        self._closed = True


class Room:
    """``path``: the echo path at 48 kHz (None: no echo). ``noise_dbfs``: the microphone's white noise."""

    def __init__(
        self,
        path: np.ndarray | None,
        noise_dbfs: float = -65,
        seed: int = 0,
        clock: Clock = REAL_TIME,
        capacity_s: float = 60,
    ):
        self.path = path
        self.noise = 10 ** (noise_dbfs / 20)
        self.rng = np.random.default_rng(seed)
        self.clock = clock
        self.utterances: list[_Utterance] = []
        self.speaker = _Speaker(self, capacity_s)
        self.microphone = _Microphone(self)
        self.echo = np.zeros(int(capacity_s * RATE), dtype=np.float32)  # the echo as captured, for the tests
        # speaker sample s is heard (before the echo path) at microphone sample s + FRAME_SAMPLES: a frame is played
        # from the moment the card took it, when it delivered the microphone frame before
        self._offset = -FRAME_SAMPLES

    def say(self, wave: np.ndarray, at_s: float) -> None:
        """The user says ``wave`` (48 kHz) ``at_s`` seconds into the microphone's stream."""
        self.utterances.append(_Utterance(wave, at_s, None))

    def say_during_playback(self, wave: np.ndarray, after_s: float) -> None:
        """The user says ``wave`` ``after_s`` seconds after the speaker starts playing (talking over the answer)."""
        self.utterances.append(_Utterance(wave, None, after_s))

    def capture(self, index: int) -> np.ndarray:
        start = index * FRAME_SAMPLES
        frame = self._echo(start) + self.noise * self.rng.standard_normal(FRAME_SAMPLES)
        for utterance in self.utterances:
            begin = utterance.start
            if begin is None and utterance.after_playback is not None and self.speaker.first_loud is not None:
                begin = utterance.start = max(start, self.speaker.first_loud - self._offset + utterance.after_playback)
            if begin is None:
                continue
            lo, hi = max(start, begin), min(start + FRAME_SAMPLES, begin + utterance.wave.size)
            if lo >= hi:
                continue
            frame[lo - start : hi - start] += utterance.wave[lo - begin : hi - begin]
            if utterance.heard_at is None:  # when its first sample was captured: the frame ends now
                utterance.heard_at = self.clock.now() - (start + FRAME_SAMPLES - begin) / RATE
        return frame.astype(np.float32)

    def _echo(self, start: int) -> np.ndarray:
        if self.path is None:
            return np.zeros(FRAME_SAMPLES)
        first = start + self._offset - self.path.size + 1  # speaker samples the frame's echo is made of
        window = np.zeros(self.path.size - 1 + FRAME_SAMPLES, dtype=np.float32)
        lo, hi = max(first, 0), min(first + window.size, self.speaker.written)
        if hi > lo:
            window[lo - first : hi - first] = self.speaker.samples[lo:hi]
        echo = fftconvolve(window, self.path, mode="valid")
        if start + FRAME_SAMPLES <= self.echo.size:
            self.echo[start : start + FRAME_SAMPLES] = echo
        return echo
