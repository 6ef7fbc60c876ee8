import numpy as np
import pytest

from training.music import BEATS, N_VARIANTS, duration_seconds, melody_midi, music_specs, synthesize
from training.specs import MODES, REGISTERS, TEMPOS_BPM, TIMBRES, MusicSpec


def test_synthesis_is_deterministic_float32_with_fixed_peak():
    spec = MusicSpec("medium", "minor", timbre="organ", variant=2)
    first, second = synthesize(spec), synthesize(spec)
    assert first.dtype == np.float32 and np.array_equal(first, second)
    assert np.abs(first).max() == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("tempo", list(TEMPOS_BPM))
def test_duration_is_a_whole_number_of_beats_near_three_seconds(tempo):
    spec = MusicSpec(tempo, "major")
    wave = synthesize(spec)
    beats = BEATS[tempo]
    assert len(melody_midi(spec)) == beats
    assert wave.shape == (round(beats * 60 / TEMPOS_BPM[tempo] * 16000),)
    assert duration_seconds(spec) == pytest.approx(wave.shape[0] / 16000, abs=1 / 16000)
    assert 2.5 <= duration_seconds(spec) <= 3.2  # <= 320 tokens at 25 Hz x 4 levels
    assert synthesize(spec, sample_rate=8000).shape == (wave.shape[0] // 2,)


def test_every_note_has_an_onset_on_its_beat():
    spec = MusicSpec("fast", "major", timbre="flute")
    wave = synthesize(spec)
    beat = round(60 / spec.bpm * 16000)
    for i in range(BEATS["fast"]):
        start = i * beat
        assert np.abs(wave[start : start + 80]).max() < 0.1  # quiet at the very start (attack)
        assert np.abs(wave[start + 1600 : start + 3200]).max() > 0.2  # sounding within the beat
        assert np.abs(wave[start + beat - 480 : start + beat]).max() < 1e-3  # gap before the next note


def test_melodies_start_and_end_on_the_tonic_and_the_third_marks_the_mode():
    for variant in range(N_VARIANTS):
        major = melody_midi(MusicSpec("fast", "major", variant=variant))
        minor = melody_midi(MusicSpec("fast", "minor", variant=variant))
        tonic = major[-1]
        assert minor[-1] == tonic and major[0] % 12 == tonic % 12
        assert (tonic + 4) % 12 in {n % 12 for n in major} and (tonic + 3) % 12 not in {n % 12 for n in major}
        assert (tonic + 3) % 12 in {n % 12 for n in minor} and (tonic + 4) % 12 not in {n % 12 for n in minor}


def test_variants_and_registers_change_the_tune():
    canonical = melody_midi(MusicSpec("fast", "major"))
    assert melody_midi(MusicSpec("fast", "major", variant=1)) != canonical
    assert melody_midi(MusicSpec("fast", "major", variant=N_VARIANTS)) == canonical  # variants wrap around
    low, high = melody_midi(MusicSpec("fast", "major", "low")), melody_midi(MusicSpec("fast", "major", "high"))
    assert [hi - lo for lo, hi in zip(low, high, strict=True)] == [24] * len(low)
    assert not np.array_equal(
        synthesize(MusicSpec("slow", "major", timbre="piano")), synthesize(MusicSpec("slow", "major", timbre="flute"))
    )


def test_music_specs_cover_every_attribute():
    specs = music_specs()
    assert len(specs) == len(TEMPOS_BPM) * len(MODES) * len(REGISTERS) * len(TIMBRES) * N_VARIANTS
    assert len(set(specs)) == len(specs) and len(music_specs(1)) == len(specs) // N_VARIANTS
