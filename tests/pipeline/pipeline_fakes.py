"""Pure-Python fake backends with scripted token sequences over a real UnifiedVocab (no torch)."""

from __future__ import annotations

import asyncio

import numpy as np
from vocab_fixtures import make_tiny_vocab

from assistant.pipeline.backends import (
    AcousticBackend,
    Backends,
    LMBackend,
    LMLimits,
    MediaBackend,
    SpeechEncoderBackend,
    UnknownVoiceKeyError,
    voice_key,
)
from assistant.vocab import Modality, UnifiedVocab

N_Q = 4
HOP = 320
CODES = 64  # codes per modality of the fakes' vocabulary (FakeSpeech's codes are < 64)


def make_vocab() -> UnifiedVocab:
    """The shared tiny vocabulary with ``CODES`` codes per modality (read it, never change it)."""
    return make_tiny_vocab(CODES)


class Script:
    """Builds generated-id sequences."""

    def __init__(self, vocab: UnifiedVocab):
        self.v = vocab

    def text(self, s: str) -> list[int]:
        return self.v.encode_text(s)

    def seg(self, modality: Modality, codes) -> list[int]:
        return self.v.segment_ids(modality, codes)

    def codes(self, modality: Modality, codes) -> list[int]:
        return self.v.codes_to_ids(modality, codes)

    def start(self, modality: Modality) -> int:
        return self.v.range_of(modality).start_id

    def end(self, modality: Modality) -> int:
        return self.v.range_of(modality).end_id


class FakeSpeech(SpeechEncoderBackend):
    def __init__(self):
        self.calls = 0

    async def encode(self, wave):
        self.calls += 1
        frames = max(1, int(np.ceil(len(wave) / HOP)))
        return np.arange(frames, dtype=np.int64) % CODES  # level 1 only: [F]


class FakeLM(LMBackend):
    """Emits ``script`` in chunks of ``chunk`` ids; optionally waits on ``gate`` after ``pause_after`` ids.

    ``lm_limits`` (None: unknown) is what ``limits()`` answers; with limits, a prompt that leaves less than
    ``max_reply_tokens`` of the context for the reply is refused, as a real LM with a full context would fail."""

    def __init__(
        self,
        script: list[int],
        chunk: int = 1,
        pause_after: int | None = None,
        fail_after: int | None = None,
        lm_limits: LMLimits | None = None,
    ):
        self.lm_limits = lm_limits
        self.limits_calls = 0
        self.script = list(script)
        self.chunk = chunk
        self.pause_after = pause_after
        self.fail_after = fail_after
        self.gate = asyncio.Event()
        self.paused = asyncio.Event()
        self.closed = 0
        self.finished_normally = 0
        self.prompts: list[list[int]] = []
        self.forced: list[str | None] = []
        self.prefills: list[list[int]] = []
        self.prefill_error: Exception | None = None

    async def limits(self):
        self.limits_calls += 1
        return self.lm_limits

    async def prefill(self, prompt_ids):
        if self.prefill_error is not None:
            raise self.prefill_error
        self.prefills.append(list(prompt_ids))

    async def stream(self, prompt_ids, force_modality):
        self.prompts.append(list(prompt_ids))
        self.forced.append(force_modality)
        limits = self.lm_limits
        if limits is not None and len(prompt_ids) + limits.max_reply_tokens > limits.context_tokens:
            raise ValueError(
                f"a prompt of {len(prompt_ids)} tokens leaves no room for a reply of "
                f"{limits.max_reply_tokens} in {limits.context_tokens} positions"
            )
        try:
            for i in range(0, len(self.script), self.chunk):
                if self.fail_after is not None and i >= self.fail_after:
                    raise RuntimeError("LM exploded")
                if self.pause_after is not None and i >= self.pause_after and not self.gate.is_set():
                    self.paused.set()
                    await self.gate.wait()
                yield self.script[i : i + self.chunk]
                await asyncio.sleep(0)
            self.finished_normally += 1
        finally:
            self.closed += 1


class FakeAcoustic(AcousticBackend):
    """A 440 Hz tone per chunk; records chunk sizes, contexts, voice keys and registrations. ``forget()`` drops the
    registered voices (a restarted replica); ``forget_always`` makes every key unknown even right after it was sent
    again (a replica that keeps failing)."""

    def __init__(self, fail: bool = False, delay: float = 0.0):
        self.chunks: list[np.ndarray] = []
        self.contexts: list[np.ndarray | None] = []
        self.voices_used: list[str | None] = []
        self.prompts_sent = 0  # prompts that came with a chunk (re-registration)
        self.registered: list[str] = []  # register_voice calls, in order
        self.voices: dict[str, np.ndarray] = {}
        self.forget_always = False
        self.fail = fail
        self.delay = delay

    async def register_voice(self, prompt):
        key = voice_key(prompt)
        self.voices[key] = np.asarray(prompt)
        self.registered.append(key)
        return key

    def forget(self) -> None:
        self.voices.clear()

    async def decode_chunk(self, semantic, context, voice, prompt=None):
        if self.fail:
            raise RuntimeError("acoustic decoder exploded")
        if prompt is not None:
            self.prompts_sent += 1
            assert voice_key(prompt) == voice
            self.voices[voice] = np.asarray(prompt)
        if voice is not None and (voice not in self.voices or self.forget_always):
            raise UnknownVoiceKeyError(f"unknown voice key {voice!r}")
        if self.delay:
            await asyncio.sleep(self.delay)
        semantic = np.asarray(semantic, dtype=np.int64)
        self.chunks.append(semantic)
        self.contexts.append(None if context is None else np.asarray(context))
        self.voices_used.append(voice)
        codes = np.tile(semantic, (N_Q, 1))
        t = np.arange(semantic.size * HOP, dtype=np.float32) / 16000.0
        return codes, (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


class FakeMedia(MediaBackend):
    def __init__(self):
        self.images: list[list[int]] = []
        self.music: list[list[int]] = []

    async def image_png(self, codes):
        self.images.append(list(codes))
        return b"\x89PNG fake" + bytes(len(codes)), 8, 8

    async def music_wave(self, tokens):
        self.music.append(list(tokens))
        return np.full(len(tokens) * 100, 0.1, dtype=np.float32)

    async def image_codes(self, png):
        if not png.startswith(b"\x89PNG"):
            raise ValueError("not a readable image")
        return [b % 16 for b in png[8:40]]

    async def music_codes(self, wav):
        if not wav.startswith(b"RIFF"):
            raise ValueError("not a readable tune")
        return [b % 16 for b in wav[44:76]]  # the first samples, past a plain WAV header


def make_backends(
    lm: LMBackend, acoustic: AcousticBackend | None = None
) -> tuple[Backends, FakeSpeech, FakeAcoustic, FakeMedia]:
    speech, media = FakeSpeech(), FakeMedia()
    acoustic = acoustic or FakeAcoustic()
    return Backends(speech=speech, lm=lm, acoustic=acoustic, media=media), speech, acoustic, media


async def collect(agen) -> list:
    return [item async for item in agen]
