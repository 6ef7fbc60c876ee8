"""Audio sources (what the user says) and sinks (where the assistant's audio goes) for the edge client.

Everything here speaks 20 ms frames at 48 kHz mono (WebRTC's Opus rate):
- a source's ``read()`` returns ``np.float32[960]`` or ``None`` when it has nothing more to send;
- a sink's ``write()`` takes ``np.int16[n]`` at 48 kHz mono; ``flush()`` drops whatever is still queued for
  playback (the server said ``interrupted``).

Sources and sinks are swappable so tests and headless runs use files; ``sounddevice`` (and so PortAudio) is
imported only when a microphone or speaker stream is actually opened.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from assistant.audio import WEBRTC_SAMPLE_RATE, FrameSplitter, read_wav

log = logging.getLogger(__name__)

CAPTURE_RATE = WEBRTC_SAMPLE_RATE  # 48 kHz, what the capture track sends
FRAME_MS = 20
FRAME_SAMPLES = CAPTURE_RATE * FRAME_MS // 1000  # 960 samples per 20 ms frame


def _open_stream(factory: Callable[..., Any] | None, sounddevice_class: str, device: Any, **kwargs: Any) -> Any:
    """Starts a 48 kHz mono 20 ms-block stream; ``factory`` replaces sounddevice in tests."""
    kwargs.update(samplerate=CAPTURE_RATE, channels=1, blocksize=FRAME_SAMPLES)
    if factory is None:
        import sounddevice  # lazy: file-only use never needs PortAudio

        factory = getattr(sounddevice, sounddevice_class)
        kwargs["device"] = device
    stream = factory(**kwargs)
    stream.start()
    return stream


def _close_stream(stream: Any, what: str) -> None:
    """Stops and closes a stream of ``_open_stream`` (None: nothing to close). A device that fails to close is only
    logged: closing ends a call, and nothing more can be done about the device then."""
    if stream is None:
        return
    try:
        stream.stop()
        stream.close()
    except Exception:
        log.debug("closing the %s stream failed", what, exc_info=True)


class AudioSource(Protocol):
    live: bool  # True when a real-time clock (the microphone) paces read(); False when the reader must pace
    finite: bool  # True when the source carries one utterance (a file); the client then exits after the answer

    async def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class AudioSink(Protocol):
    def write(self, pcm: np.ndarray) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------------------
# sources


class FileSource:
    """Plays a sound file as if spoken into a microphone: lead silence, the file, then silence.

    After the file it sends ``tail_silence_s`` of silence so the server's VAD sees the end of the utterance;
    with ``keep_alive`` (default) it goes on sending silence until closed, so the connection stays a live
    call while the answer comes back. ``read()`` does not pace itself (``live`` is False): the capture track
    paces frames by their timestamps.
    """

    live = False
    finite = True

    def __init__(
        self, path: str | Path, lead_silence_s: float = 0.3, tail_silence_s: float = 1.0, keep_alive: bool = True
    ):
        if lead_silence_s < 0 or tail_silence_s < 0:
            raise ValueError("lead_silence_s and tail_silence_s must be >= 0")
        self.path = Path(path)
        wave = read_wav(self.path, sample_rate=CAPTURE_RATE)  # raises AudioFormatError with a clear message
        self.duration_s = wave.size / CAPTURE_RATE
        lead = np.zeros(int(round(lead_silence_s * CAPTURE_RATE)), dtype=np.float32)
        splitter = FrameSplitter(FRAME_SAMPLES)
        self._frames = splitter.push(np.concatenate([lead, wave])) + splitter.flush(pad=True)
        self._speech_frames = len(self._frames)  # frames up to the end of the file
        self._tail_frames = int(np.ceil(tail_silence_s * 1000 / FRAME_MS))
        self.keep_alive = keep_alive
        self.frames_read = 0
        self._closed = False

    @property
    def file_done(self) -> bool:
        """True once every frame of the file itself has been read (silence follows)."""
        return self.frames_read >= self._speech_frames

    async def read(self) -> np.ndarray | None:
        if self._closed:
            return None
        i = self.frames_read
        if i < self._speech_frames:
            frame = self._frames[i]
        elif self.keep_alive or i < self._speech_frames + self._tail_frames:
            frame = np.zeros(FRAME_SAMPLES, dtype=np.float32)
        else:
            return None
        self.frames_read += 1
        return frame

    def close(self) -> None:
        self._closed = True


class SilenceSource:
    """Sends only silence: for typed questions (``--text``) without a microphone or file."""

    live = False
    finite = True
    file_done = True

    def __init__(self) -> None:
        self._closed = False
        self.frames_read = 0

    async def read(self) -> np.ndarray | None:
        if self._closed:
            return None
        self.frames_read += 1
        return np.zeros(FRAME_SAMPLES, dtype=np.float32)

    def close(self) -> None:
        self._closed = True


class MicrophoneSource:
    """The default input device through a ``sounddevice.InputStream``.

    The PortAudio callback runs on a foreign thread: it only copies the block and hands it to the event loop
    with ``call_soon_threadsafe``. The loop side keeps a bounded queue; when the consumer falls behind the
    oldest frame is dropped (and counted in ``dropped_frames``) so latency stays bounded.
    ``stream_factory(callback=..., samplerate=..., channels=..., dtype=..., blocksize=...)`` replaces
    ``sounddevice.InputStream`` in tests.
    """

    live = True
    finite = False

    def __init__(
        self,
        device: int | str | None = None,
        max_queue_frames: int = 25,
        stream_factory: Callable[..., Any] | None = None,
    ):
        if max_queue_frames < 1:
            raise ValueError("max_queue_frames must be >= 1")
        self.device = device
        self.max_queue_frames = max_queue_frames
        self._stream_factory = stream_factory
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[np.ndarray] | None = None
        self._splitter = FrameSplitter(FRAME_SAMPLES)
        self.dropped_frames = 0
        self.status_flags = 0  # PortAudio over/underflow reports seen by the callback
        self._closed = False

    def start(self) -> None:
        """Opens the stream; must be called from the event loop that will ``read()``."""
        if self._stream is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=self.max_queue_frames)
        self._stream = _open_stream(
            self._stream_factory, "InputStream", self.device, dtype="float32", callback=self._callback
        )

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio thread: copy (indata is reused after return) and hand off. Nothing else here.
        if status:
            self.status_flags += 1
        block = np.array(indata[:, 0] if indata.ndim == 2 else indata, dtype=np.float32, copy=True)
        loop = self._loop
        if loop is not None and not self._closed:
            try:
                loop.call_soon_threadsafe(self._enqueue, block)
            except RuntimeError:  # loop closed while the stream was still running
                pass

    def _enqueue(self, block: np.ndarray) -> None:
        assert self._queue is not None
        for frame in self._splitter.push(block):
            if self._queue.full():
                self._queue.get_nowait()
                self.dropped_frames += 1
            self._queue.put_nowait(frame)

    async def read(self) -> np.ndarray | None:
        if self._closed:
            return None
        if self._stream is None:
            self.start()
        assert self._queue is not None
        return await self._queue.get()

    def close(self) -> None:
        self._closed = True
        stream, self._stream = self._stream, None
        _close_stream(stream, "input")


# ---------------------------------------------------------------------------------------------------------
# sinks


class DirectorySink:
    """Writes the assistant's audio to ``<dir>/answer.wav`` (48 kHz mono 16-bit) as frames arrive.

    The RIFF and data sizes are rewritten and the file flushed after every write, so the file is a valid
    WAV at any moment (a test or a person can open it while the call runs).
    """

    def __init__(self, directory: str | Path, filename: str = "answer.wav", sample_rate: int = CAPTURE_RATE):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / filename
        self.sample_rate = sample_rate
        self.samples_written = 0
        self._file = open(self.path, "wb")
        self._file.write(self._header(0))
        self._file.flush()

    def _header(self, data_bytes: int) -> bytes:
        channels, bits = 1, 16
        block_align = channels * bits // 8
        return (
            b"RIFF"
            + struct.pack("<I", 36 + data_bytes)
            + b"WAVE"
            + b"fmt "
            + struct.pack(
                "<IHHIIHH", 16, 1, channels, self.sample_rate, self.sample_rate * block_align, block_align, bits
            )
            + b"data"
            + struct.pack("<I", data_bytes)
        )

    def write(self, pcm: np.ndarray) -> None:
        if self._file.closed:
            return
        data = np.asarray(pcm, dtype="<i2").tobytes()
        if not data:
            return
        self._file.seek(0, 2)
        self._file.write(data)
        self.samples_written += len(data) // 2
        size = 2 * self.samples_written
        self._file.seek(4)
        self._file.write(struct.pack("<I", 36 + size))
        self._file.seek(40)
        self._file.write(struct.pack("<I", size))
        self._file.flush()

    def flush(self) -> None:
        """Nothing is queued for playback in a file; the recording keeps what already arrived."""

    @property
    def duration_s(self) -> float:
        return self.samples_written / self.sample_rate

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class SpeakerSink:
    """Plays the assistant's audio on the default output device through a ``sounddevice.OutputStream``.

    ``write()`` (event loop) puts 20 ms frames into a bounded queue that starts pre-filled with
    ``prefill_frames`` of silence (a small cushion against network jitter); the PortAudio callback pulls
    from it and plays silence on underrun. When the queue is full the oldest frame is dropped
    (``dropped_frames``). ``flush()`` drops everything queued, so an interruption is heard at once.
    ``stream_factory`` replaces ``sounddevice.OutputStream`` in tests.
    """

    def __init__(
        self,
        device: int | str | None = None,
        max_queue_frames: int = 50,
        prefill_frames: int = 3,
        stream_factory: Callable[..., Any] | None = None,
    ):
        if max_queue_frames < 1 or not 0 <= prefill_frames <= max_queue_frames:
            raise ValueError("need max_queue_frames >= 1 and 0 <= prefill_frames <= max_queue_frames")
        self.device = device
        self.prefill_frames = prefill_frames
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=max_queue_frames)
        self._lock = threading.Lock()  # makes drop-oldest + put atomic against flush()
        self._pending = np.zeros(0, dtype=np.int16)  # part of a frame the callback has not played yet
        self._stream_factory = stream_factory
        self._stream: Any = None
        self.dropped_frames = 0
        self.underruns = 0
        self._prefill()

    def _prefill(self) -> None:
        for _ in range(self.prefill_frames):
            self._queue.put_nowait(np.zeros(FRAME_SAMPLES, dtype=np.int16))

    def start(self) -> None:
        if self._stream is not None:
            return
        self._stream = _open_stream(
            self._stream_factory, "OutputStream", self.device, dtype="int16", callback=self._callback
        )

    @property
    def queued_frames(self) -> int:
        return self._queue.qsize()

    def write(self, pcm: np.ndarray) -> None:
        if self._stream is None:
            self.start()
        frame = np.asarray(pcm, dtype=np.int16).reshape(-1).copy()
        with self._lock:
            if self._queue.full():
                try:
                    self._queue.get_nowait()
                    self.dropped_frames += 1
                except queue.Empty:
                    pass
            self._queue.put_nowait(frame)

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio thread: fill `frames` samples from the pending remainder and the queue.
        out = outdata.reshape(-1) if outdata.ndim == 2 else outdata
        filled = 0
        with self._lock:
            while filled < frames:
                if self._pending.size == 0:
                    try:
                        self._pending = self._queue.get_nowait()
                    except queue.Empty:
                        break
                n = min(frames - filled, self._pending.size)
                out[filled : filled + n] = self._pending[:n]
                self._pending = self._pending[n:]
                filled += n
        if filled < frames:
            out[filled:] = 0
            self.underruns += 1

    def flush(self) -> None:
        """Drops everything not yet played (called when the server says ``interrupted``)."""
        with self._lock:
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._pending = np.zeros(0, dtype=np.int16)
            self._prefill()

    def close(self) -> None:
        stream, self._stream = self._stream, None
        _close_stream(stream, "output")
