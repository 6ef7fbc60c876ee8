"""assistant.rtc_audio: the one frame-to-mono converter and the one paced audio track (on an injected clock)."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from assistant.rtc_audio import MonoResampler, PacedAudioTrack, frame_to_mono, pcm_frame


def _frame(samples: np.ndarray, fmt: str, layout: str, rate: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples, format=fmt, layout=layout)
    frame.sample_rate = rate
    return frame


def _sine(hz: float, rate: int, n: int, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype(np.float32)


# ----- the converter


def test_mono_s16_at_its_own_rate_comes_back_exactly():
    pcm = np.array([-32768, -1, 0, 1, 12345, 32767] * 160, dtype=np.int16)
    frame = _frame(pcm.reshape(1, -1), "s16", "mono", 48000)
    assert np.array_equal(frame_to_mono(frame, 48000, np.int16), pcm)
    assert np.array_equal(frame_to_mono(frame, dtype=np.int16), pcm)  # rate None: the frame's own
    as_float = frame_to_mono(frame)
    assert as_float.dtype == np.float32 and np.allclose(as_float, pcm / 32768.0)


def test_packed_stereo_s16_is_the_mean_of_its_channels():
    left, right = np.full(960, 1000, np.int16), np.full(960, 3000, np.int16)
    interleaved = np.stack([left, right], axis=1).reshape(1, -1)  # what aiortc's Opus decoder gives
    mono = frame_to_mono(_frame(interleaved, "s16", "stereo", 48000), 48000, np.int16)
    assert mono.dtype == np.int16 and mono.shape == (960,) and np.all(mono == 2000)


def test_planar_float_stereo_and_mono():
    left, right = _sine(440, 48000, 960, 0.8), np.zeros(960, np.float32)
    planar = _frame(np.stack([left, right]), "fltp", "stereo", 48000)
    assert np.allclose(frame_to_mono(planar), left / 2, atol=1e-6)
    mono = _frame(left.reshape(1, -1), "fltp", "mono", 48000)
    assert np.allclose(frame_to_mono(mono), left, atol=1e-6)
    as_int = frame_to_mono(mono, dtype=np.int16)
    assert np.max(np.abs(as_int.astype(int) - np.round(left * 32768))) <= 1


def test_other_integer_formats_are_scaled_to_the_same_units():
    s32 = _frame(np.full((1, 480), 2**30, np.int32), "s32", "mono", 48000)
    assert np.allclose(frame_to_mono(s32), 0.5)
    u8 = _frame(np.full((1, 480), 192, np.uint8), "u8", "mono", 48000)  # offset binary: 128 is silence
    assert np.allclose(frame_to_mono(u8), 0.5)


@pytest.mark.parametrize("fmt, layout", [("s16", "stereo"), ("fltp", "stereo"), ("s16", "mono"), ("flt", "mono")])
def test_48k_to_16k_keeps_the_tone(fmt, layout):
    wave = _sine(440, 48000, 4800)  # 100 ms
    channels = 2 if layout == "stereo" else 1
    data = np.stack([wave] * channels)  # [C, n]
    if fmt == "s16":
        data = np.round(data * 32767).astype(np.int16)
    data = data if fmt.endswith("p") else data.T.reshape(1, -1)  # planar [C, n], packed [1, n*C]
    frame = _frame(data, fmt, layout, 48000)
    for dtype, scale in ((np.float32, 1.0), (np.int16, 32768.0)):
        out = frame_to_mono(frame, 16000, dtype)
        assert out.dtype == dtype and out.shape == (1600,)
        expected = _sine(440, 16000, 1600) * scale
        middle = slice(100, 1500)  # away from the filter's edges
        assert np.max(np.abs(out[middle] - expected[middle])) < 0.01 * scale


def test_16k_up_to_48k():
    frame = _frame(np.full((1, 320), 0.5, np.float32), "flt", "mono", 16000)
    up = frame_to_mono(frame, 48000, np.int16)
    assert up.shape == (960,) and abs(int(up[480]) - 16384) < 200


def test_unsupported_output_type_is_refused():
    frame = _frame(np.zeros((1, 960), np.int16), "s16", "mono", 48000)
    with pytest.raises(ValueError, match="float32 or int16"):
        frame_to_mono(frame, dtype=np.float64)


def test_streaming_resampler_matches_one_long_conversion_and_rebuilds_on_a_new_rate():
    wave = _sine(300, 48000, 48000)  # 1 s in 50 frames of 20 ms
    stream = MonoResampler(16000, np.float32)
    pieces = []
    for i in range(50):
        pcm = np.round(wave[i * 960 : (i + 1) * 960] * 32767).astype(np.int16)
        interleaved = np.stack([pcm, pcm], axis=1).reshape(1, -1)
        pieces.append(stream.convert(_frame(interleaved, "s16", "stereo", 48000)))
    joined = np.concatenate(pieces)
    assert abs(joined.size - 16000) <= 64  # a few samples stay in the filter
    # no clicks at the 20 ms seams: the 300 Hz sine changes by at most 2*pi*300/16000*0.5 per sample
    assert np.max(np.abs(np.diff(joined[200:]))) < 0.07
    assert stream.format_changes == 0
    # a frame at the target rate passes straight through; a new rate is counted and gets a fresh resampler
    same = stream.convert(_frame(np.full((1, 320), 8192, np.int16), "s16", "mono", 16000))
    assert same.shape == (320,) and np.allclose(same, 0.25)
    low = stream.convert(_frame(np.zeros((1, 160), np.int16), "s16", "mono", 8000))
    assert stream.format_changes == 2 and low.dtype == np.float32


def test_pcm_frame_stamps_s16_mono():
    frame = pcm_frame(np.full(320, 0.5, np.float32), 16000, pts=640)
    assert (frame.format.name, frame.layout.name, frame.sample_rate, frame.pts) == ("s16", "mono", 16000, 640)
    assert frame.time_base == Fraction(1, 16000)
    assert np.all(frame.to_ndarray() == int(0.5 * 32767))
    ints = pcm_frame(np.arange(320, dtype=np.int16), 16000)
    assert np.array_equal(ints.to_ndarray().reshape(-1), np.arange(320))


# ----- the paced track


class FakeClock:
    """Time moves only when someone waits on it, or when a test moves it."""

    def __init__(self):
        self.t = 50.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.t += seconds


class CountingTrack(PacedAudioTrack):
    def __init__(self, frames: int, clock: FakeClock, **kwargs):
        super().__init__(16000, 20, clock=clock, **kwargs)
        self.left = frames
        self.sent_at: list[float] = []

    async def next_pcm(self):
        if self.left == 0:
            return None
        self.left -= 1
        self.sent_at.append(self.clock.now())
        return np.full(self.frame_samples, self.left, np.int16)


async def _all(track):
    frames = []
    while True:
        try:
            frames.append(await track.recv())
        except MediaStreamError:
            return frames


def test_frames_leave_every_20_ms_from_the_first_and_the_track_ends_with_its_source():
    clock = FakeClock()
    track = CountingTrack(5, clock)
    frames = asyncio.run(_all(track))
    assert [f.pts for f in frames] == [0, 320, 640, 960, 1280]
    assert all(f.time_base == Fraction(1, 16000) and f.samples == 320 for f in frames)
    assert track.sent_at == pytest.approx([50.0, 50.02, 50.04, 50.06, 50.08])
    assert track.readyState == "ended" and track.frame_count == 5
    with pytest.raises(MediaStreamError):
        asyncio.run(track.recv())


def test_a_stalled_track_catches_up_or_restarts_its_clock():
    async def stall_after_two(track, clock):
        await track.recv()
        await track.recv()
        clock.t += 1.0  # the loop was busy for a second
        sleeps_before = len(clock.sleeps)
        await track.recv()
        await track.recv()
        return clock.sleeps[sleeps_before:]

    clock = FakeClock()
    catching_up = CountingTrack(10, clock)
    assert asyncio.run(stall_after_two(catching_up, clock)) == []  # behind: the frames go out at once (a burst)

    clock = FakeClock()
    restarting = CountingTrack(10, clock, max_lag_s=0.2)
    assert asyncio.run(stall_after_two(restarting, clock)) == pytest.approx([0.02])  # one frame now, then 20 ms


def test_skip_to_now_stamps_the_next_frame_with_the_time_it_leaves():
    async def run(track, clock):
        await track.recv()
        clock.t += 0.41  # nothing was sent for 410 ms (DTX)
        track.skip_to_now()
        return await track.recv()

    clock = FakeClock()
    frame = asyncio.run(run(CountingTrack(3, clock), clock))
    assert frame.pts == 6400  # 400 ms: the whole frames of the gap
    assert clock.sleeps == []


def test_an_unpaced_track_never_waits_and_wrong_sizes_are_refused():
    clock = FakeClock()
    track = CountingTrack(4, clock, paced=False)
    assert len(asyncio.run(_all(track))) == 4 and clock.sleeps == []

    class Short(CountingTrack):
        async def next_pcm(self):
            return np.zeros(100, np.int16)

    with pytest.raises(ValueError, match="320 samples"):
        asyncio.run(Short(1, FakeClock()).recv())

    class Ended(PacedAudioTrack):
        async def next_pcm(self):
            return None

    with pytest.raises(ValueError):
        Ended(44100, 15)
