"""espeak-ng in process (``libespeak-ng`` through ctypes): speech together with the phonemes it is made of, and when.

The content level of the speech codec is trained to tell phonemes apart frame by frame (``training/
fit_speech_codec.py``), so every training utterance needs its phoneme alignment. espeak-ng knows it exactly: with
phoneme events enabled, its synthesis callback reports each phoneme and the sample it starts at. The library keeps
global state (one voice, one callback), so a process synthesizes one utterance at a time, under a lock; at about
300x real time on one core that costs little next to the command line's synthesis.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from assistant.audio import SAMPLE_RATE
from training.specs import Voice

PAUSE = "_"  # espeak's pause phonemes are "_", "_:", "_!" ...: all of them are silence here

# libespeak-ng's speak_lib.h (API revision 12): the constants and the event record this module reads.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAMETER_RATE = 1
_PARAMETER_PITCH = 3
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class AlignedSpeech:
    """One utterance: ``wave`` float32 ``[T]`` at 16 kHz, and ``phonemes``: (start in seconds, espeak phoneme) in
    order, each lasting until the next one starts (the last one until the end of the wave)."""

    wave: np.ndarray
    phonemes: tuple[tuple[float, str], ...]

    def frame_labels(self, frame_rate: int, inventory: dict[str, int]) -> np.ndarray:
        """The phoneme class of every frame (frame f centred at f / frame_rate s, as the codec's STFT frames are):
        int64 ``[ceil(T / hop)]``; pauses, anything before the first phoneme and phonemes missing from ``inventory``
        are class 0 (silence)."""
        hop = SAMPLE_RATE // frame_rate
        frames = -(-self.wave.shape[0] // hop)
        labels = np.zeros(frames, dtype=np.int64)
        times = np.arange(frames) / frame_rate
        for (start, symbol), end in zip(self.phonemes, [s for s, _ in self.phonemes[1:]] + [float("inf")], strict=True):
            if not symbol.startswith(PAUSE):
                labels[(times >= start) & (times < end)] = inventory.get(symbol, 0)
        return labels


class _Library:
    """The loaded library, initialised once per process with phoneme events on."""

    def __init__(self) -> None:
        path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(path)
        except OSError as exc:
            raise RuntimeError("libespeak-ng is not installed (apt-get install espeak-ng)") from exc
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS)
        if self.rate <= 0:
            raise RuntimeError("libespeak-ng failed to initialise (is espeak-ng-data installed?)")
        self.lock = threading.Lock()
        self._events: list[tuple[int, str]] = []
        self._callback = _Callback(self._receive)  # kept alive as long as the library is
        self.lib.espeak_SetSynthCallback(self._callback)

    def _receive(self, wave: ctypes._Pointer | None, count: int, events: ctypes._Pointer) -> int:
        index = 0
        while events[index].type != _EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == _EVENT_PHONEME:
                self._events.append((int(event.sample), event.id.string.decode("ascii", "replace")))
            index += 1
        return 0  # 0: go on synthesizing (the audio itself is not kept)

    def phoneme_events(self, text: str, espeak_voice: str, pitch: int, speed: int) -> list[tuple[int, str]]:
        """(start sample at ``self.rate``, phoneme) of every phoneme of ``text``."""
        with self.lock:
            self._events = []
            if self.lib.espeak_SetVoiceByName(espeak_voice.encode("ascii")) != 0:
                raise ValueError(f"espeak-ng has no voice {espeak_voice!r}")
            self.lib.espeak_SetParameter(_PARAMETER_RATE, speed, 0)
            self.lib.espeak_SetParameter(_PARAMETER_PITCH, pitch, 0)
            data = text.encode("utf-8") + b"\0"
            status = self.lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
            if status != 0:
                raise ValueError(f"espeak-ng failed on {text!r} (status {status})")
            return list(self._events)


@functools.cache
def _library() -> _Library:
    return _Library()


def phoneme_timings(text: str, voice: Voice, speed: int) -> tuple[tuple[float, str], ...]:
    """The phonemes of ``text`` read by ``voice`` at ``speed`` words per minute: (start in seconds, espeak phoneme).

    The audio this synthesis makes is thrown away: in-process synthesis is not bit-for-bit repeatable (the
    library's noise sources keep state between utterances), while the command line's is. Their timings agree (same
    length, or within 3 ms on the Klatt voices), so ``training.voices.synthesize_aligned`` pairs these timings with
    the command line's wave.
    """
    library = _library()
    events = library.phoneme_events(text, voice.espeak, voice.pitch, speed)
    return tuple((sample / library.rate, symbol) for sample, symbol in events)


def phoneme_inventory(utterances: Sequence[AlignedSpeech]) -> dict[str, int]:
    """Every non-pause phoneme of ``utterances`` -> class 1.. (sorted, so the same set gives the same classes); class
    0 is silence."""
    symbols = sorted({s for u in utterances for _, s in u.phonemes if not s.startswith(PAUSE)})
    return {symbol: index + 1 for index, symbol in enumerate(symbols)}
