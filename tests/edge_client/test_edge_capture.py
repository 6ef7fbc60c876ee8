"""CaptureTrack: pacing (on an injected clock), frame format and client-side endpointing; VAD frame-size checks.
The frame converter and the paced track themselves are tested in tests/test_rtc_audio.py."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import numpy as np
import pytest
from speechlike import voiced_like

from assistant.endpointing import EndpointerConfig, VadEndpointer
from assistant.rtc_audio import frame_to_mono
from edge_client.audio_io import FRAME_SAMPLES
from edge_client.tracks import CaptureTrack


class ListSource:
    live = False
    finite = True
    file_done = True

    def __init__(self, frames):
        self.frames = list(frames)

    async def read(self):
        return self.frames.pop(0) if self.frames else None

    def close(self):
        pass


def _burst_frames(lead_s=0.4, burst_s=1.0, tail_s=1.2):
    burst = 1.6 * voiced_like(burst_s, rate=48000)
    wave = np.concatenate([np.zeros(int(48000 * lead_s)), burst, np.zeros(int(48000 * tail_s))]).astype(np.float32)
    return [wave[i : i + FRAME_SAMPLES] for i in range(0, wave.size - FRAME_SAMPLES + 1, FRAME_SAMPLES)]


async def _drain(track):
    frames = []
    while True:
        try:
            frames.append(await track.recv())
        except Exception:  # MediaStreamError at the end of the source
            return frames


def test_vad_rejects_wrong_frame_sizes():
    vad = VadEndpointer(EndpointerConfig(sample_rate=16000, frame_ms=20))
    with pytest.raises(ValueError, match="640 bytes"):
        vad.push(b"\x00" * 960)  # 30 ms at 16 kHz is not what it was configured for
    with pytest.raises(ValueError):
        EndpointerConfig(frame_ms=25)
    with pytest.raises(ValueError):
        EndpointerConfig(sample_rate=44100)
    track = CaptureTrack(ListSource([np.zeros(480, dtype=np.float32)]))
    with pytest.raises(ValueError, match="960-sample"):
        asyncio.run(track.recv())


class StepClock:
    """A clock that moves only when the track waits on it."""

    def __init__(self):
        self.t = 100.0
        self.sleeps = []

    def now(self):
        return self.t

    async def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.t += seconds


def test_capture_track_frames_are_paced_48k_mono_s16():
    frames_in = [np.full(FRAME_SAMPLES, 0.25, dtype=np.float32) for _ in range(15)]
    clock = StepClock()
    track = CaptureTrack(ListSource(frames_in), clock=clock)
    frames = asyncio.run(_drain(track))
    assert len(frames) == 15 and track.readyState == "ended" and track.frames_sent == 15
    # 15 frames of 20 ms, paced by pts: the first goes out at once, each next one 20 ms after the one before
    assert clock.sleeps == pytest.approx([0.02] * 15)  # the 16th wait is for the read that found the end
    assert [f.pts for f in frames] == [i * FRAME_SAMPLES for i in range(15)]
    f = frames[0]
    assert (f.sample_rate, f.format.name, f.layout.name, f.samples) == (48000, "s16", "mono", FRAME_SAMPLES)
    assert f.time_base == Fraction(1, 48000)
    assert np.all(f.to_ndarray() == int(0.25 * 32767))
    assert np.array_equal(frame_to_mono(f, 48000, np.int16), f.to_ndarray().reshape(-1))


def test_a_live_source_is_not_paced_by_the_track():
    class Live(ListSource):
        live = True

    clock = StepClock()
    frames = asyncio.run(_drain(CaptureTrack(Live([np.zeros(FRAME_SAMPLES, np.float32)] * 5), clock=clock)))
    assert len(frames) == 5 and clock.sleeps == []


def test_capture_track_endpointing_on_noise_burst_vs_silence():
    events = []

    class Instant(ListSource):
        live = True  # no pacing: the test needs no real time

    track = CaptureTrack(
        Instant(_burst_frames()),
        on_speech_start=lambda: events.append(("start", len(frames_seen))),
        on_speech_end=lambda d: events.append(("end", round(d, 1))),
    )
    frames_seen = []

    async def run():
        while True:
            try:
                frames_seen.append(await track.recv())
            except Exception:
                return

    asyncio.run(run())
    assert [e[0] for e in events] == ["start", "end"]
    assert 20 <= events[0][1] <= 30  # the burst starts at frame 20 (0.4 s)
    assert 0.9 <= events[1][1] <= 1.6  # about the burst plus the pre-roll and a little tail

    silent = []
    track = CaptureTrack(
        Instant([np.zeros(FRAME_SAMPLES, dtype=np.float32)] * 150), on_speech_start=lambda: silent.append("start")
    )
    asyncio.run(_drain(track))
    assert silent == [] and not track.endpointer.speaking
