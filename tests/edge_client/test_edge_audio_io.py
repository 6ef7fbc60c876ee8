"""Sources and sinks of the edge client, without any audio device."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import soundfile

from assistant.audio import AudioFormatError, write_wav
from edge_client.audio_io import FRAME_SAMPLES, DirectorySink, FileSource, MicrophoneSource, SpeakerSink


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


def test_speaker_sink_prefill_playback_and_flush():
    streams = []
    sink = SpeakerSink(
        max_queue_frames=5,
        prefill_frames=2,
        stream_factory=lambda **kw: streams.append(FakeStream(**kw)) or streams[-1],
    )
    loud = np.full(FRAME_SAMPLES, 1000, dtype=np.int16)
    sink.write(loud)
    assert streams and streams[0].started and streams[0].kwargs["samplerate"] == 48000
    assert sink.queued_frames == 3
    assert np.all(_play(sink, 2 * FRAME_SAMPLES) == 0)  # the silence cushion plays first
    # blocks that do not line up with frames are served from the remainder
    first = _play(sink, FRAME_SAMPLES // 2)
    assert np.all(first == 1000)
    for _ in range(10):
        sink.write(loud)
    assert sink.dropped_frames == 5 and sink.queued_frames == 5  # bounded, drop-oldest
    sink.flush()  # interrupt: nothing queued is ever played
    assert sink.queued_frames == 2
    assert np.all(_play(sink, 3 * FRAME_SAMPLES) == 0)
    assert sink.underruns == 1  # the third frame found the queue empty and played silence
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
                block = np.full((FRAME_SAMPLES // 2, 1), i, dtype=np.float32)
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
    assert frames[0][0] == 4 and frames[0][-1] == 5 and frames[1][0] == 6
    assert stream.closed


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
