import numpy as np
import pytest
from speechlike import voiced_like

from assistant.audio import float_to_pcm16
from assistant.endpointing import EndpointerConfig, SpeechEnd, SpeechStart, VadEndpointer


def frames_of(wave: np.ndarray, frame: int = 320) -> list[bytes]:
    pcm = float_to_pcm16(wave)
    return [pcm[i : i + frame].tobytes() for i in range(0, len(pcm) - frame + 1, frame)]


def run(endpointer, wave):
    events = []
    for f in frames_of(wave):
        events.extend(endpointer.push(f))
    return events


def test_speech_then_silence_gives_start_and_end_with_audio():
    rng = np.random.default_rng(0)
    wave = np.concatenate([np.zeros(8000, np.float32), voiced_like(1.5, rng), np.zeros(16000, np.float32)])
    events = run(VadEndpointer(EndpointerConfig(end_silence_ms=600, pause_ms=0)), wave)
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


# ----- pitch, pauses and early ends

from assistant.endpointing import SpeechDiscarded, SpeechPaused, SpeechResumed, periodicity  # noqa: E402


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(16000 * seconds), np.float32)


def cough(seconds: float, rng) -> np.ndarray:
    """A noise burst with a fast attack and a slow decay: webrtcvad calls much of it speech, but it has no pitch."""
    n = int(16000 * seconds)
    envelope = np.minimum(1.0, np.arange(n) / 160) * np.exp(-np.arange(n) / (0.3 * n))
    burst = np.convolve(rng.standard_normal(n), np.hanning(6), mode="same")
    return (0.6 * envelope * burst / np.max(np.abs(burst))).astype(np.float32)


def clicks(seconds: float, every_s: float, rng=None) -> np.ndarray:
    """Impulses every ``every_s`` (slower than any pitch), or at random moments that often (a crackle)."""
    wave = silence(seconds)
    step = int(16000 * every_s)
    at = np.arange(0, wave.size, step)
    if rng is not None:
        at = np.sort(rng.integers(0, wave.size, at.size))
    wave[at] = 0.9
    return wave


def test_periodicity_tells_a_voice_from_noise():
    rng = np.random.default_rng(3)
    assert periodicity(voiced_like(0.04, rng), 16000) > 0.8
    assert max(periodicity(rng.standard_normal(640), 16000) for _ in range(50)) < 0.3
    assert periodicity(np.zeros(640), 16000) == 0.0


def test_coughs_and_clicks_neither_start_nor_end_a_turn():
    rng = np.random.default_rng(4)
    webrtcvad_alone = EndpointerConfig(start_pitched_ms=0, min_speech_ms=0)
    for noise in [cough(0.3, rng), cough(0.4, rng), clicks(0.5, 0.05), clicks(0.4, 0.01, rng)]:
        wave = np.concatenate([silence(0.3), noise, silence(0.6)])
        assert run(VadEndpointer(), wave) == []
        assert SpeechEnd in [type(e) for e in run(VadEndpointer(webrtcvad_alone), wave)]  # the rule is what stops it
    # a cough inside a question's pause does not end it early either: one turn, with both parts
    question = np.concatenate([voiced_like(0.8, rng), silence(0.15), cough(0.3, rng), voiced_like(0.8, rng)])
    events = run(VadEndpointer(EndpointerConfig(pause_ms=0)), np.concatenate([silence(0.3), question, silence(0.8)]))
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd] and events[1].duration_s > 2.0


def test_a_noise_that_gets_past_the_start_rule_is_discarded_not_a_turn():
    rng = np.random.default_rng(5)
    config = EndpointerConfig(min_speech_ms=400, pause_ms=0)
    events = run(VadEndpointer(config), np.concatenate([silence(0.3), voiced_like(0.2, rng), silence(0.8)]))
    assert [type(e) for e in events] == [SpeechStart, SpeechDiscarded]


def test_a_pause_carries_the_audio_the_end_then_confirms():
    rng = np.random.default_rng(6)
    wave = np.concatenate([silence(0.3), voiced_like(1.0, rng), silence(0.8)])
    events = run(VadEndpointer(EndpointerConfig(pause_ms=120, end_silence_ms=400)), wave)
    assert [type(e) for e in events] == [SpeechStart, SpeechPaused, SpeechEnd]
    paused, end = events[1], events[2]
    assert end.same_as_pause and np.array_equal(paused.audio, end.audio)
    assert 1.0 <= end.duration_s <= 1.4  # pre-roll + the voice + 100 ms of the quiet


def test_speaking_on_after_a_pause_resumes_and_the_end_carries_everything():
    rng = np.random.default_rng(7)
    wave = np.concatenate([silence(0.3), voiced_like(0.7, rng), silence(0.2), voiced_like(0.7, rng), silence(0.8)])
    events = run(VadEndpointer(EndpointerConfig(pause_ms=120, end_silence_ms=400)), wave)
    kinds = [type(e) for e in events]
    assert kinds == [SpeechStart, SpeechPaused, SpeechResumed, SpeechPaused, SpeechEnd]
    first_pause, second_pause, end = events[1], events[3], events[4]
    assert end.same_as_pause and np.array_equal(second_pause.audio, end.audio)
    assert end.duration_s > first_pause.duration_s + 0.8


def test_the_quiet_level_ends_a_turn_before_webrtcvads_hangover_would():
    """webrtcvad keeps calling frames speech ~100 ms after the voice stops; the level rule does not wait for it."""
    rng = np.random.default_rng(8)
    voice = voiced_like(1.0, rng)
    wave = np.concatenate([silence(0.3), voice, silence(1.0)])
    frames = frames_of(wave)
    endpointer = VadEndpointer(EndpointerConfig(pause_ms=0, end_silence_ms=300))
    end_frame = next(i for i, f in enumerate(frames) if any(isinstance(e, SpeechEnd) for e in endpointer.push(f)))
    voice_end_frame = (int(0.3 * 16000) + voice.size) // 320
    assert (end_frame + 1 - voice_end_frame) * 0.02 <= 0.34  # 300 ms of quiet, and at most two frames more


def test_a_forced_end_is_not_the_pause_s_audio():
    rng = np.random.default_rng(9)
    config = EndpointerConfig(pause_ms=120, end_silence_ms=400, max_utterance_ms=1200)
    wave = np.concatenate([silence(0.3), voiced_like(0.8, rng), silence(0.3), voiced_like(1.0, rng)])
    events = run(VadEndpointer(config), wave)
    end = next(e for e in events if isinstance(e, SpeechEnd))
    assert end.forced and not end.same_as_pause


def test_progress_hands_on_the_utterance_so_far_while_it_goes_on():
    from assistant.endpointing import SpeechProgress

    rng = np.random.default_rng(8)
    wave = np.concatenate([silence(0.3), voiced_like(1.5, rng), silence(0.8)])
    config = EndpointerConfig(pause_ms=120, end_silence_ms=400, progress_every_ms=400)
    events = run(VadEndpointer(config), wave)
    kinds = [type(e) for e in events]
    assert kinds[0] is SpeechStart and kinds[-2:] == [SpeechPaused, SpeechEnd]
    progress = [e for e in events if isinstance(e, SpeechProgress)]
    assert kinds[1:-2] == [SpeechProgress] * len(progress) and len(progress) >= 2  # none once the quiet began
    lengths = [p.audio.size for p in progress]
    assert all(b - a == 400 * 16 for a, b in zip(lengths, lengths[1:], strict=False))  # every 400 ms of utterance
    end = events[-1].audio
    assert all(np.array_equal(p.audio, end[: p.audio.size]) for p in progress)  # the start of the question itself
    assert not any(isinstance(e, SpeechProgress) for e in run(VadEndpointer(EndpointerConfig()), wave))  # off: none
    with pytest.raises(ValueError):
        EndpointerConfig(progress_every_ms=-1)
