"""Audio sources (what the user says) and sinks (where the assistant's audio goes) for the edge client.

Everything here speaks 20 ms frames at 48 kHz mono (WebRTC's Opus rate):
- a source's ``read()`` returns ``np.float32[960]`` or ``None`` when it has nothing more to send;
- a sink's ``write()`` takes ``np.int16[n]`` at 48 kHz mono; ``flush()`` drops whatever is still queued for
  playback (the server said ``interrupted``). The received audio reaches the speaker through a jitter buffer
  (:mod:`edge_client.jitter`): :class:`SpeakerSink` has one that its sound card pulls, and :class:`PacedSink` gives
  any other sink (a file, a test's list) one pulled by a clock. Both take the frame's slot: ``write(pcm, seq)``.

Sources and sinks are swappable so tests and headless runs use files; ``sounddevice`` (and so PortAudio) is
imported only when a microphone or speaker stream is actually opened, or the devices are listed
(:func:`query_audio_devices`, :func:`find_device`; the device query is injectable for tests).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from assistant.audio import WEBRTC_SAMPLE_RATE, FrameSplitter, read_wav
from assistant.rtc_audio import REAL_TIME, Clock
from edge_client.jitter import JitterBuffer, PacedOutput

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


class JitteredSink(Protocol):
    """A sink that plays through a :class:`~edge_client.jitter.JitterBuffer`: each frame comes with its 20 ms slot
    (None: the slot after the last one)."""

    jitter: JitterBuffer

    def write(self, pcm: np.ndarray, seq: int | None = None) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def takes_seq(sink: object) -> bool:
    """Whether ``sink.write`` takes the frame's slot (``seq=``): a jittered sink does, a plain one does not."""
    try:
        return "seq" in inspect.signature(sink.write).parameters  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):  # no write, or a callable without a signature
        return False


# ---------------------------------------------------------------------------------------------------------
# devices


class DeviceError(RuntimeError):
    """An audio device that cannot be listed or chosen; ``str()`` is the one line the user reads."""


@dataclass(frozen=True)
class AudioDevice:
    index: int
    name: str
    host_api: str
    input_channels: int
    output_channels: int
    default_rate: float
    default_input: bool = False
    default_output: bool = False

    def channels(self, kind: Literal["input", "output"]) -> int:
        return self.input_channels if kind == "input" else self.output_channels


# (devices, host APIs, (default input index, default output index)), as sounddevice reports them
DeviceQuery = Callable[[], tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]], tuple[int, int]]]


def _sounddevice_query() -> tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]], tuple[int, int]]:
    try:
        import sounddevice
    except OSError as exc:  # the module loads, PortAudio does not
        raise DeviceError(
            f"PortAudio is not installed ({exc}); on Debian/Raspberry Pi OS: apt install libportaudio2"
        ) from None
    except ImportError:
        raise DeviceError('sounddevice is not installed: pip install "anystream[edge]"') from None
    default_in, default_out = sounddevice.default.device
    return list(sounddevice.query_devices()), list(sounddevice.query_hostapis()), (default_in, default_out)


def query_audio_devices(query: DeviceQuery | None = None) -> list[AudioDevice]:
    """Every audio device PortAudio sees (``query`` replaces sounddevice in tests). Raises DeviceError."""
    try:
        devices, host_apis, (default_in, default_out) = (query or _sounddevice_query)()
    except DeviceError:
        raise
    except Exception as exc:  # PortAudio itself failed (no ALSA configuration, a broken driver)
        raise DeviceError(f"cannot list the audio devices: {type(exc).__name__}: {exc}") from exc
    found = []
    for position, device in enumerate(devices):
        index = int(device.get("index", position))
        api = int(device.get("hostapi", -1))
        found.append(
            AudioDevice(
                index=index,
                name=str(device.get("name", f"device {index}")),
                host_api=str(host_apis[api].get("name", "?")) if 0 <= api < len(host_apis) else "?",
                input_channels=int(device.get("max_input_channels", 0)),
                output_channels=int(device.get("max_output_channels", 0)),
                default_rate=float(device.get("default_samplerate", 0.0)),
                default_input=index == default_in,
                default_output=index == default_out,
            )
        )
    return found


def describe_devices(devices: Sequence[AudioDevice]) -> str:
    """The ``--list-devices`` text: inputs, then outputs, each with its index (what ``--input-device`` takes)."""
    if not devices:
        return "no audio devices found (PortAudio sees none: is a sound card or USB microphone attached?)\n"
    lines = []
    for kind in ("input", "output"):
        usable = [d for d in devices if d.channels(kind) > 0]
        lines.append(f"{kind} devices:")
        if not usable:
            lines.append("  (none)")
        for d in usable:
            default = d.default_input if kind == "input" else d.default_output
            mark = "*" if default else " "
            lines.append(
                f"{mark} {d.index:3d}  {d.name}  [{d.host_api}, {d.channels(kind)} ch, {d.default_rate:g} Hz]"
                + ("  (default)" if default else "")
            )
    return "\n".join(lines) + "\n"


def find_device(spec: str, kind: Literal["input", "output"], devices: Sequence[AudioDevice]) -> int:
    """The index of the ``kind`` device ``spec`` names: an index, or a part of its name (case does not matter;
    a name matched in full wins over names that only contain it). Raises DeviceError: none, or several."""
    usable = [d for d in devices if d.channels(kind) > 0]
    spec = spec.strip()
    if spec.isdigit():
        index = int(spec)
        if any(d.index == index for d in usable):
            return index
        if any(d.index == index for d in devices):
            raise DeviceError(f"audio device {index} has no {kind} channels; {_choices(kind, usable)}")
        raise DeviceError(f"there is no audio device {index}; {_choices(kind, usable)}")
    wanted = spec.casefold()
    if not wanted:
        raise DeviceError(f"an {kind} device needs an index or a part of its name; {_choices(kind, usable)}")
    matches = [d for d in usable if wanted in d.name.casefold()]
    exact = [d for d in matches if d.name.casefold() == wanted]
    if len(exact) == 1:
        return exact[0].index
    if len(matches) == 1:
        return matches[0].index
    if not matches:
        raise DeviceError(f"no {kind} device has {spec!r} in its name; {_choices(kind, usable)}")
    names = "; ".join(f"{d.index}: {d.name}" for d in matches)
    raise DeviceError(f"{spec!r} names several {kind} devices ({names}); give its index or more of its name")


def _choices(kind: str, usable: Sequence[AudioDevice]) -> str:
    if not usable:
        return f"this machine has no {kind} devices (--list-devices)"
    return f"{kind} devices: " + "; ".join(f"{d.index}: {d.name}" for d in usable)


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

    def rewind(self) -> None:
        """Speaks the file again from its start (the question is asked again on a new connection)."""
        self.frames_read = 0

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


class TappedSource:
    """A source whose every frame is also shown to ``tap`` (``--save`` keeps the question's audio); everything else
    (``live``, ``finite``, ``file_done``, ``rewind``, ``start``) is the wrapped source's."""

    def __init__(self, source: AudioSource, tap: Callable[[np.ndarray], None]):
        self.source = source
        self.tap = tap
        self.live = source.live
        self.finite = source.finite

    async def read(self) -> np.ndarray | None:
        frame = await self.source.read()
        if frame is not None:
            try:
                self.tap(frame)
            except Exception:
                log.exception("the capture tap failed")
        return frame

    def close(self) -> None:
        self.source.close()

    def __getattr__(self, name: str) -> Any:  # file_done, rewind, start, ... of the wrapped source
        return getattr(self.source, name)


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
        # a broken driver (or ALSA's null device, which hands out uninitialised memory) can give NaN, inf or huge
        # values: one such sample would poison every filter after it (resampler, VAD, echo canceller)
        np.clip(np.nan_to_num(block, copy=False, nan=0.0), -1.0, 1.0, out=block)
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
    """Plays the assistant's audio on an output device (default: the system's) through a
    ``sounddevice.OutputStream``, paced by the sound card: its callback pulls one frame after another from the sink's
    :class:`~edge_client.jitter.JitterBuffer` (``jitter``), which plays silence until it is primed, conceals lost
    frames, drops the oldest audio when it holds too much and, on ``flush()`` (interrupted), drops everything at once.
    ``write(pcm, seq)`` (event loop) only pushes into it. ``stream_factory`` replaces ``sounddevice.OutputStream`` in
    tests.
    """

    def __init__(
        self,
        device: int | str | None = None,
        jitter: JitterBuffer | None = None,
        stream_factory: Callable[..., Any] | None = None,
    ):
        self.device = device
        self.jitter = jitter if jitter is not None else JitterBuffer()
        self._lock = threading.Lock()  # the remainder of a frame, against flush()
        self._pending = np.zeros(0, dtype=np.int16)  # part of a frame the callback has not played yet
        self._stream_factory = stream_factory
        self._stream: Any = None

    def start(self) -> None:
        if self._stream is not None:
            return
        self._stream = _open_stream(
            self._stream_factory, "OutputStream", self.device, dtype="int16", callback=self._callback
        )

    @property
    def queued_frames(self) -> int:
        """Frames buffered ahead of what the device plays now (how far ahead a frame written now will be heard)."""
        return self.jitter.depth_frames

    @property
    def underruns(self) -> int:
        return self.jitter.underruns

    @property
    def dropped_frames(self) -> int:
        return self.jitter.dropped_frames

    def write(self, pcm: np.ndarray, seq: int | None = None) -> None:
        if self._stream is None:
            self.start()
        self.jitter.push(pcm, seq)

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio thread: fill `frames` samples from the remainder, then from the jitter buffer.
        out = outdata.reshape(-1) if outdata.ndim == 2 else outdata
        filled = 0
        with self._lock:
            while filled < frames:
                if self._pending.size == 0:
                    self._pending = self.jitter.pull()
                n = min(frames - filled, self._pending.size)
                out[filled : filled + n] = self._pending[:n]
                self._pending = self._pending[n:]
                filled += n

    def flush(self) -> None:
        """Drops everything not yet played (called when the server says ``interrupted``)."""
        with self._lock:
            self._pending = np.zeros(0, dtype=np.int16)
        self.jitter.flush()

    def close(self) -> None:
        stream, self._stream = self._stream, None
        _close_stream(stream, "output")


class PacedSink:
    """A jitter buffer in front of a sink without a clock of its own (``DirectorySink``, a test's list): every 20 ms
    of ``clock`` one frame is pulled from ``jitter`` and written to ``sink`` (silence too, so a file keeps the
    call's timeline as a speaker would have played it). :meth:`start` (in the event loop) starts the pacing;
    ``flush()`` drops what is buffered and tells ``sink``."""

    def __init__(self, sink: AudioSink, jitter: JitterBuffer | None = None, clock: Clock = REAL_TIME):
        self.sink = sink
        self.jitter = jitter if jitter is not None else JitterBuffer()
        self._output = PacedOutput(self.jitter, sink.write, clock)

    def start(self) -> None:
        start = getattr(self.sink, "start", None)
        if start is not None:
            start()
        self._output.start()

    @property
    def queued_frames(self) -> int:
        return self.jitter.depth_frames

    def write(self, pcm: np.ndarray, seq: int | None = None) -> None:
        self.jitter.push(pcm, seq)

    def flush(self) -> None:
        self.jitter.flush()
        self.sink.flush()

    def close(self) -> None:
        self._output.cancel()
        self.sink.close()
