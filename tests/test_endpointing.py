import numpy as np
import pytest

from assistant.audio import float_to_pcm16
from assistant.endpointing import EndpointerConfig, SpeechEnd, SpeechStart, VadEndpointer


def frames_of(wave: np.ndarray, frame: int = 320) -> list[bytes]:
    pcm = float_to_pcm16(wave)
    return [pcm[i : i + frame].tobytes() for i in range(0, len(pcm) - frame + 1, frame)]


def voiced_like(seconds: float, rng) -> np.ndarray:
    # A buzzy harmonic source with a syllable-rate envelope: webrtcvad calls this speech.
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    wave = sum(np.sin(k * phase) / k for k in range(1, 12))
    wave = wave * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2) + 0.01 * rng.standard_normal(t.size)
    return (0.3 * wave / np.max(np.abs(wave))).astype(np.float32)


def run(endpointer, wave):
    events = []
    for f in frames_of(wave):
        events.extend(endpointer.push(f))
    return events


def test_speech_then_silence_gives_start_and_end_with_audio():
    rng = np.random.default_rng(0)
    wave = np.concatenate([np.zeros(8000, np.float32), voiced_like(1.5, rng), np.zeros(16000, np.float32)])
    events = run(VadEndpointer(EndpointerConfig(end_silence_ms=600)), wave)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd]
    assert 1.3 <= events[1].duration_s <= 2.2
    assert not events[1].forced


def test_silence_alone_never_starts():
    assert run(VadEndpointer(), np.zeros(32000, np.float32)) == []


def test_max_utterance_forces_an_end():
    rng = np.random.default_rng(1)
    events = run(VadEndpointer(EndpointerConfig(max_utterance_ms=1000)), voiced_like(3.0, rng))
    ends = [e for e in events if isinstance(e, SpeechEnd)]
    assert ends and ends[0].forced and ends[0].duration_s <= 1.3


def test_reset_forgets_a_turn_in_progress():
    rng = np.random.default_rng(2)
    endpointer = VadEndpointer()
    events = run(endpointer, voiced_like(0.6, rng))
    assert isinstance(events[0], SpeechStart) and endpointer.speaking
    endpointer.reset()
    assert not endpointer.speaking
    assert run(endpointer, np.zeros(16000, np.float32)) == []


def test_wrong_frame_size_and_rates_are_rejected_clearly():
    with pytest.raises(ValueError, match="640 bytes"):
        VadEndpointer().push(b"\x00" * 100)
    with pytest.raises(ValueError, match="sample rate"):
        EndpointerConfig(sample_rate=22050)
    with pytest.raises(ValueError, match="frames of"):
        EndpointerConfig(frame_ms=25)
