"""training.augment: deterministic, length-preserving, time-aligned degradations of synthesized questions."""

import dataclasses

import numpy as np
import pytest
from scipy.signal import correlate

from training.augment import (
    AugmentConfig,
    active_power,
    add_noise,
    augment,
    coloured_noise,
    opus_round_trip,
    reverberate,
    room_impulse_response,
)

SR = 16_000
EVERYTHING = AugmentConfig(clean_probability=0.0, noise_probability=1.0, reverb_probability=1.0, opus_probability=1.0)
NOTHING = AugmentConfig(
    clean_probability=0.0, noise_probability=0.0, reverb_probability=0.0, opus_probability=0.0, gain_db=(0.0, 0.0)
)


def vowel(f0: float = 130.0, seconds: float = 1.5) -> np.ndarray:
    """A vowel-like signal: harmonics of a gliding f0 through three formants (700, 1220, 2600 Hz), with a speech-like
    spectral tilt (most energy below 1.5 kHz), modulated into syllables."""
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.08 * np.sin(2 * np.pi * 1.3 * t))) / SR
    x = np.zeros_like(t)
    for k in range(1, int(7000 / f0)):
        f = k * f0
        h = 1.0
        for formant, bandwidth in ((700, 110), (1220, 120), (2600, 160)):
            h /= np.sqrt((1 - (f / formant) ** 2) ** 2 + (f * bandwidth / formant**2) ** 2)
        x += h / k * np.sin(k * phase)
    x *= 0.55 - 0.45 * np.cos(2 * np.pi * 3 * t)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def utterance() -> np.ndarray:
    """Half a second of silence, the vowel, half a second of silence (segment edges on 20 ms frame boundaries)."""
    silence = np.zeros(SR // 2, dtype=np.float32)
    return np.concatenate([silence, vowel(seconds=1.0), silence])


def lag_of(reference: np.ndarray, other: np.ndarray, max_lag: int = 80) -> float:
    """Where ``other`` best matches ``reference``, in samples (negative: ``other`` is early), parabola-refined."""
    full = correlate(other.astype(np.float64), reference.astype(np.float64), mode="full", method="fft")
    zero = reference.size - 1
    scores = full[zero - max_lag : zero + max_lag + 1]
    i = int(np.argmax(scores))
    if 0 < i < scores.size - 1:
        a, b, c = scores[i - 1 : i + 2]
        return i - max_lag + 0.5 * (a - c) / (a - 2 * b + c)
    return float(i - max_lag)


def energy(x: np.ndarray) -> float:
    # not np.dot: OpenBLAS threads make it slow on a busy machine
    return float(np.sum(np.square(x, dtype=np.float64)))


def correlation(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean(dtype=np.float64)
    y = y - y.mean(dtype=np.float64)
    return float(np.sum(x * y) / np.sqrt(energy(x) * energy(y)))


def test_same_seed_same_output():
    x = vowel(seconds=1.0)
    for config in (EVERYTHING, AugmentConfig()):
        for seed in range(3):
            first = augment(x, np.random.default_rng(seed), config)
            again = augment(x, np.random.default_rng(seed), config)
            np.testing.assert_array_equal(first, again)
    a = augment(x, np.random.default_rng(1), EVERYTHING)
    b = augment(x, np.random.default_rng(2), EVERYTHING)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("n", [1, 7, 319, 321, 4001, 16_000 + 13])
def test_length_dtype_and_range_preserved(n):
    x = np.random.default_rng(n).uniform(-0.9, 0.9, n)  # float64 in
    for seed in range(2):
        y = augment(x, np.random.default_rng(seed), dataclasses.replace(EVERYTHING, gain_db=(6.0, 6.0)))
        assert y.shape == (n,) and y.dtype == np.float32
        assert np.all(np.abs(y) <= 1.0)


def test_augment_leaves_the_input_alone():
    x = utterance()
    kept = x.copy()
    augment(x, np.random.default_rng(0), EVERYTHING)
    np.testing.assert_array_equal(x, kept)


def test_clean_probability_one_returns_the_input_unchanged():
    x = utterance()
    config = dataclasses.replace(EVERYTHING, clean_probability=1.0)
    for seed in range(3):
        y = augment(x, np.random.default_rng(seed), config)
        assert y.dtype == np.float32
        np.testing.assert_array_equal(y, x)


def test_nothing_enabled_is_the_identity():
    x = utterance()
    np.testing.assert_array_equal(augment(x, np.random.default_rng(0), NOTHING), x)


def test_default_config_mixes_clean_and_degraded():
    x = vowel(seconds=0.2)
    rng = np.random.default_rng(0)
    untouched = sum(
        np.array_equal(augment(x, rng, dataclasses.replace(AugmentConfig(), opus_probability=0.0)), x)
        for _ in range(200)
    )
    assert 30 <= untouched <= 70  # clean_probability 0.25 of 200 (gain 0 dB exactly has probability 0)


def test_gain_in_range():
    x = utterance()
    config = dataclasses.replace(NOTHING, gain_db=(-12.0, 6.0))
    active = np.abs(x) > 0.05
    for seed in range(5):
        y = augment(x, np.random.default_rng(seed), config)
        gains = y[active] / x[active]
        unclipped = np.abs(y[active]) < 1.0
        assert np.allclose(gains[unclipped], gains[unclipped][0], rtol=1e-5)
        assert 10 ** (-12 / 20) - 1e-6 <= gains[unclipped][0] <= 10 ** (6 / 20) + 1e-6


# -- Opus -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bitrate", [12_000, 24_000, 32_000])
def test_opus_round_trip_keeps_alignment(bitrate):
    # measured: SILK/hybrid modes come back 0.8-1.4 samples early at 16 kHz (< 0.1 ms), CELT within 0.1 sample
    x = vowel()
    y = opus_round_trip(x, bitrate)
    assert y.shape == x.shape and y.dtype == np.float32
    assert abs(lag_of(x, y)) <= 2.0  # 0.125 ms


def test_opus_round_trip_keeps_the_signal_at_24_kbit():
    x = vowel()
    y = opus_round_trip(x, 24_000)
    assert correlation(x, y) > 0.8  # measured 0.92 (0.89 at complexity 5)
    assert 0.7 < energy(y) / energy(x) < 1.2  # measured 0.95


@pytest.mark.parametrize("n", [1, 5, 319, 961, 16_000 + 1])
def test_opus_round_trip_any_length(n):
    x = (0.1 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    assert opus_round_trip(x, 16_000).shape == (n,)
    assert opus_round_trip(np.zeros(0, np.float32), 16_000).shape == (0,)


def test_opus_round_trip_at_48_khz():
    x = np.repeat(vowel(seconds=0.5), 3)
    y = opus_round_trip(x, 32_000, sample_rate=48_000)
    assert y.shape == x.shape
    assert correlation(x, y) > 0.8


def test_opus_round_trip_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bit rates"):
        opus_round_trip(vowel(seconds=0.1), 1_000)
    with pytest.raises(ValueError, match="1-D"):
        opus_round_trip(np.zeros((2, 100), np.float32), 24_000)


# -- noise ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("colour", ["white", "pink", "brown"])
@pytest.mark.parametrize("snr_db", [5.0, 17.0, 30.0])
def test_noise_at_the_requested_snr(colour, snr_db):
    x = utterance()
    config = dataclasses.replace(NOTHING, noise_probability=1.0, snr_db=(snr_db, snr_db), noise_colours=(colour,))
    y = augment(x, np.random.default_rng(3), config)
    noise = y.astype(np.float64) - x
    speech = x[SR // 2 : SR // 2 + SR].astype(np.float64)  # the non-silent part, measured independently
    measured = 10 * np.log10(np.mean(speech**2) / np.mean(noise**2))
    assert abs(measured - snr_db) <= 1.0


def test_noise_power_ignores_silence():
    x = utterance()
    assert active_power(x) == pytest.approx(float(np.mean(x[SR // 2 : SR // 2 + SR].astype(np.float64) ** 2)))
    assert active_power(np.zeros(100)) == 0.0
    np.testing.assert_array_equal(add_noise(np.zeros(100, np.float32), 10.0, np.random.default_rng(0)), 0.0)


@pytest.mark.parametrize(("colour", "slope"), [("white", 0.0), ("pink", -1.0), ("brown", -2.0)])
def test_noise_colours_have_their_spectral_slope(colour, slope):
    n = 1 << 16
    noise = coloured_noise(n, colour, np.random.default_rng(0))
    assert np.mean(noise**2) == pytest.approx(1.0)
    power = np.abs(np.fft.rfft(noise)) ** 2
    f = np.fft.rfftfreq(n, 1 / SR)
    band = (f >= 50) & (f <= 7000)
    fitted = np.polyfit(np.log10(f[band]), np.log10(power[band]), 1)[0]
    assert fitted == pytest.approx(slope, abs=0.1)


# -- reverberation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rt60", "drr"), [(0.15, 0.0), (0.6, 0.0), (0.3, 12.0)])
def test_room_impulse_response(rt60, drr):
    rir = room_impulse_response(rt60, drr, np.random.default_rng(0))
    assert rir.size == int(np.ceil(rt60 * SR))
    assert int(np.argmax(np.abs(rir))) == 0
    assert energy(rir) == pytest.approx(1.0)
    assert 10 * np.log10(rir[0] ** 2 / energy(rir[1:])) == pytest.approx(drr)
    # the tail decays by 60 dB over rt60: compare the first and last tenth
    tenth = rir.size // 10
    decay = 10 * np.log10(np.mean(rir[1 : 1 + tenth] ** 2) / np.mean(rir[-tenth:] ** 2))
    assert 40 < decay < 60


def test_reverb_keeps_the_direct_path_at_lag_zero():
    x = vowel()
    for seed in range(3):
        rir = room_impulse_response(0.6, 0.0, np.random.default_rng(seed))
        y = reverberate(x, rir)
        assert y.shape == x.shape and y.dtype == np.float32
        assert abs(lag_of(x, y)) < 0.5
        np.testing.assert_allclose(y[:1], x[:1] * rir[0], rtol=1e-5)  # nothing precedes the direct path
    config = dataclasses.replace(NOTHING, reverb_probability=1.0, rt60_s=(0.6, 0.6), direct_to_reverb_db=(0.0, 0.0))
    assert abs(lag_of(x, augment(x, np.random.default_rng(0), config))) < 0.5


def test_everything_together_stays_aligned():
    x = vowel()
    config = dataclasses.replace(EVERYTHING, snr_db=(30.0, 30.0), gain_db=(0.0, 0.0), direct_to_reverb_db=(12.0, 12.0))
    for seed in range(2):
        assert abs(lag_of(x, augment(x, np.random.default_rng(seed), config))) <= 2.0


# -- validation -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"clean_probability": 1.5}, "clean_probability"),
        ({"noise_probability": -0.1}, "noise_probability"),
        ({"reverb_probability": 2.0}, "reverb_probability"),
        ({"opus_probability": float("nan")}, "opus_probability"),
        ({"snr_db": (30.0, 5.0)}, "snr_db"),
        ({"snr_db": (5.0, float("inf"))}, "snr_db"),
        ({"rt60_s": (0.0, 0.5)}, "rt60_s"),
        ({"rt60_s": (0.2, 30.0)}, "rt60_s"),
        ({"direct_to_reverb_db": (12.0, 0.0)}, "direct_to_reverb_db"),
        ({"gain_db": (6.0, -12.0)}, "gain_db"),
        ({"opus_bitrate": (1_000, 32_000)}, "opus_bitrate"),
        ({"opus_bitrate": (12_000.5, 32_000)}, "opus_bitrate"),
        ({"opus_bitrate": (12_000,)}, "opus_bitrate"),
        ({"noise_colours": ()}, "noise_colours"),
        ({"noise_colours": ("white", "violet")}, "noise_colours"),
        ({"opus_complexity": 11}, "opus_complexity"),
        ({"sample_rate": 0}, "sample_rate"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**changes)


def test_augment_rejects_bad_waves():
    with pytest.raises(ValueError, match="1-D"):
        augment(np.zeros((2, 100)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="NaN"):
        augment(np.array([0.0, np.nan]), np.random.default_rng(0))
