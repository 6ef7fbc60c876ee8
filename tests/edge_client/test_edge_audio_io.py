"""Sources and sinks of the edge client, without any audio device."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import soundfile

from assistant.audio import AudioFormatError, write_wav
from edge_client.audio_io import FRAME_SAMPLES, DirectorySink, FileSource, MicrophoneSource, SpeakerSink
from edge_client.jitter import JitterBuffer


def _tone(seconds: float, rate: int = 16000, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


async def _read_n(source, n):
    return [await source.read() for _ in range(n)]


def test_file_source_frames_lead_and_tail_silence(tmp_path):
    path = tmp_path / "a.wav"
    write_wav(path, _tone(0.5), 16000)  # 0.5 s -> 25 frames at 48 kHz
    source = FileSource(path, lead_silence_s=0.1, tail_silence_s=0.2, keep_alive=False)
    frames = asyncio.run(_read_n(source, 5 + 25 + 10 + 1))
    assert frames[-1] is None  # ends after lead + file + tail when not kept alive
    frames = frames[:-1]
    assert all(f.dtype == np.float32 and f.shape == (FRAME_SAMPLES,) for f in frames)
    assert all(np.abs(f).max() == 0 for f in frames[:5])  # 100 ms lead silence
    assert all(np.abs(f).max() > 0.3 for f in frames[6:29])  # the file itself
    assert all(np.abs(f).max() == 0 for f in frames[31:])  # tail silence
    assert source.file_done


def test_file_source_keeps_sending_silence_until_closed(tmp_path):
    path = tmp_path / "a.wav"
    write_wav(path, _tone(0.1), 16000)
    source = FileSource(path, lead_silence_s=0.0, tail_silence_s=0.0)
    frames = asyncio.run(_read_n(source, 200))
    assert not source.file_done or source.frames_read == 200
    assert all(f is not None for f in frames) and np.abs(frames[-1]).max() == 0
    source.close()
    assert asyncio.run(source.read()) is None


def test_file_source_rejects_unreadable_files(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    with pytest.raises(AudioFormatError, match="cannot read"):
        FileSource(bad)


def test_directory_sink_writes_a_valid_growing_wav(tmp_path):
    sink = DirectorySink(tmp_path / "out")
    path = tmp_path / "out" / "answer.wav"
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == 48000 and data.size == 0  # valid (empty) from the start
    frame = (np.arange(FRAME_SAMPLES) % 100 * 100).astype(np.int16)
    for n in range(1, 4):
        sink.write(frame)
        data, rate = soundfile.read(path, dtype="int16")  # readable while still open
        assert rate == 48000 and data.ndim == 1 and data.size == n * FRAME_SAMPLES
        assert np.array_equal(data[-FRAME_SAMPLES:], frame)
    sink.close()
    info = soundfile.info(path)
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (48000, 1, "PCM_16", 3 * FRAME_SAMPLES)


class FakeStream:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.callback = kwargs["callback"]
        self.started = self.closed = False

    def start(self):
        self.started = True

    def stop(self):
        self.started = False

    def close(self):
        self.closed = True


def _play(sink: SpeakerSink, frames: int) -> np.ndarray:
    out = np.full((frames, 1), 7, dtype=np.int16)
    sink._callback(out, frames, None, None)
    return out[:, 0]


def test_speaker_sink_plays_through_its_jitter_buffer_and_flushes():
    streams = []
    sink = SpeakerSink(
        jitter=JitterBuffer(target_ms=40, max_ms=100),
        stream_factory=lambda **kw: streams.append(FakeStream(**kw)) or streams[-1],
    )
    loud = np.full(FRAME_SAMPLES, 1000, dtype=np.int16)
    sink.write(loud, seq=0)
    assert streams and streams[0].started and streams[0].kwargs["samplerate"] == 48000
    assert sink.queued_frames == 1
    assert np.all(_play(sink, FRAME_SAMPLES) == 0)  # priming: 40 ms wanted, 20 ms buffered
    sink.write(loud, seq=1)
    # blocks that do not line up with frames are served from the remainder
    assert np.all(_play(sink, FRAME_SAMPLES // 2) == 1000)
    assert np.all(_play(sink, FRAME_SAMPLES) == 1000)  # the rest of frame 0, then half of frame 1
    for seq in range(2, 12):
        sink.write(loud, seq=seq)
    assert sink.dropped_frames == 5 and sink.queued_frames == 5  # bounded at 100 ms by dropping the oldest
    sink.flush()  # interrupt: nothing buffered is ever played, not even the half frame in the callback
    assert sink.queued_frames == 0
    assert np.all(_play(sink, 3 * FRAME_SAMPLES) == 0)
    sink.close()
    assert streams[0].closed


def test_microphone_source_hands_off_and_drops_oldest():
    async def main():
        streams = []
        mic = MicrophoneSource(
            max_queue_frames=2, stream_factory=lambda **kw: streams.append(FakeStream(**kw)) or streams[-1]
        )
        mic.start()
        stream = streams[0]
        assert stream.kwargs["samplerate"] == 48000 and stream.kwargs["channels"] == 1

        def device_thread():  # PortAudio calls back from its own thread, in half-frame blocks here
            for i in range(8):
                block = np.full((FRAME_SAMPLES // 2, 1), i / 10, dtype=np.float32)  # block i holds i/10
                stream.callback(block, FRAME_SAMPLES // 2, None, None)
                block[:] = -1  # the device reuses its buffer; the source must have copied

        thread = threading.Thread(target=device_thread)
        thread.start()
        thread.join()
        for _ in range(20):
            await asyncio.sleep(0)
        frames = [await mic.read() for _ in range(2)]
        mic.close()
        return frames, mic, stream

    frames, mic, stream = asyncio.run(main())
    assert mic.dropped_frames == 2  # 4 frames arrived, the queue holds 2
    assert all(f.shape == (FRAME_SAMPLES,) for f in frames)
    assert [frames[0][0], frames[0][-1], frames[1][0]] == pytest.approx([0.4, 0.5, 0.6])
    assert stream.closed


def test_microphone_source_clears_samples_no_audio_can_hold():
    async def main():
        streams = []
        mic = MicrophoneSource(stream_factory=lambda **kw: streams.append(FakeStream(**kw)) or streams[-1])
        mic.start()
        garbage = np.full((FRAME_SAMPLES, 1), 0.25, dtype=np.float32)
        garbage[:4, 0] = [np.nan, np.inf, -np.inf, 3e38]  # ALSA's null device hands out uninitialised memory
        streams[0].callback(garbage, FRAME_SAMPLES, None, None)
        frame = await mic.read()
        mic.close()
        return frame

    frame = asyncio.run(main())
    assert list(frame[:5]) == [0.0, 1.0, -1.0, 1.0, 0.25] and np.isfinite(frame).all()


def test_real_sounddevice_streams_on_the_alsa_null_device(tmp_path):
    """Smoke test of the real PortAudio path (skipped where PortAudio or ALSA's config is missing)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("no ALSA configuration on this machine")
    try:
        import sounddevice  # noqa: F401
    except OSError:
        pytest.skip("PortAudio is not installed")
    conf = tmp_path / "asound_null.conf"
    conf.write_text(
        "</usr/share/alsa/alsa.conf>\n"
        'pcm.!default { type plug slave.pcm "nullsink" }\n'
        "pcm.nullsink { type null }\n"
        "ctl.!default { type hw card 0 }\n"
    )
    code = (
        "import asyncio, numpy as np\n"
        "from edge_client.audio_io import MicrophoneSource, SpeakerSink\n"
        "async def main():\n"
        "    mic = MicrophoneSource(); mic.start()\n"
        "    frames = [await mic.read() for _ in range(5)]\n"
        "    assert all(f.shape == (960,) for f in frames)\n"
        "    spk = SpeakerSink(); spk.write(np.zeros(960, np.int16))\n"
        "    await asyncio.sleep(0.1)\n"
        "    spk.flush(); mic.close(); spk.close()\n"
        "    print('ok')\n"
        "asyncio.run(main())\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ALSA_CONFIG_PATH": str(conf)},
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
