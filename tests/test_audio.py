import numpy as np
import pytest

from assistant import audio


def test_constants_are_consistent():
    assert audio.CODEC_FRAME_RATE == 50
    assert audio.OUTPUT_FRAME_SAMPLES == 320
    assert audio.SAMPLE_RATE == audio.CODEC_HOP * audio.CODEC_FRAME_RATE


def test_resample_keeps_frequency(tmp_path):
    t = np.arange(48000) / 48000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    down = audio.resample(tone, 48000, 16000)
    assert down.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(down))
    assert abs(np.argmax(spectrum) - 440) <= 1


def test_wav_round_trip_resamples_and_downmixes(tmp_path):
    import soundfile

    stereo = np.stack([np.full(22050, 0.5), np.full(22050, -0.1)], axis=1)
    path = tmp_path / "s.wav"
    soundfile.write(path, stereo, 22050)
    wave = audio.read_wav(path)
    assert wave.dtype == np.float32
    assert abs(len(wave) - 16000) <= 1
    assert np.allclose(wave[100:-100], 0.2, atol=1e-3)


def test_broken_and_empty_wav_give_clear_errors(tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(audio.AudioFormatError, match="cannot read"):
        audio.read_wav(broken)
    empty = tmp_path / "empty.wav"
    audio.write_wav(empty, np.zeros(0, np.float32))
    with pytest.raises(audio.AudioFormatError, match="no samples"):
        audio.read_wav(empty)
    with pytest.raises(audio.AudioFormatError, match="cannot read"):
        audio.read_wav(tmp_path / "missing.wav")
    long = tmp_path / "long.wav"
    audio.write_wav(long, np.zeros(16000 * 3, np.float32))
    with pytest.raises(audio.AudioFormatError, match="limit"):
        audio.read_wav(long, max_seconds=2)


def test_pcm_conversions_clip_and_invert():
    wave = np.array([-2.0, -0.5, 0.0, 0.5, 2.0], np.float32)
    pcm = audio.float_to_pcm16(wave)
    assert pcm.tolist() == [-32767, -16383, 0, 16383, 32767]
    assert np.allclose(audio.pcm16_to_float(pcm.tobytes()), np.clip(wave, -1, 1), atol=1e-4)


def test_frame_splitter_emits_exact_frames_and_pads_rest():
    splitter = audio.FrameSplitter(4)
    assert splitter.push(np.arange(3, dtype=np.float32)) == []
    frames = splitter.push(np.arange(3, 10, dtype=np.float32))
    assert [f.tolist() for f in frames] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert splitter.pending_samples == 2
    rest = splitter.flush()
    assert [f.tolist() for f in rest] == [[8, 9, 0, 0]]
    assert splitter.flush() == []
    splitter.push(np.ones(3, np.float32))
    splitter.clear()
    assert splitter.pending_samples == 0


def test_frame_splitter_keeps_its_dtype():
    splitter = audio.FrameSplitter(3, dtype=np.int16)
    frames = splitter.push(np.array([1, 2, 3, 4], np.int16))
    assert frames[0].dtype == np.int16 and frames[0].tolist() == [1, 2, 3]
    assert splitter.flush()[0].tolist() == [4, 0, 0]


def test_join_utterances_shortens_the_quiet_between_two_utterances_to_the_gap():
    rate = 16000
    tone = 0.3 * np.sin(2 * np.pi * 200 * np.arange(rate // 2) / rate).astype(np.float32)
    hiss = np.full(rate // 2, 1e-4, dtype=np.float32)  # -80 dBFS: quiet, but not digital silence
    first = np.concatenate([hiss[:1600], tone, hiss])  # 0.1 s, 0.5 s voice, 0.5 s quiet (an end-of-turn silence)
    second = np.concatenate([hiss[:3200], tone, hiss[:4800]])  # 0.2 s pre-roll, 0.5 s voice, 0.3 s quiet
    joined = audio.join_utterances(first, second, rate, gap_s=0.2)
    assert np.array_equal(joined[:9600], first[:9600])  # the first utterance up to the end of its voice
    assert np.array_equal(joined[-(8000 + 4800) :], second[-(8000 + 4800) :])  # the second from its voice on
    assert joined.size == 9600 + 3200 + 8000 + 4800  # 0.1 s of quiet kept on each side of the join
    # no quiet to cut: the two are simply put together
    assert np.array_equal(audio.join_utterances(tone, tone, rate), np.concatenate([tone, tone]))
    silent = np.zeros(800, dtype=np.float32)
    assert audio.join_utterances(silent, silent, rate).size == 1600
