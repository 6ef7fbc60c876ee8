"""The four model services the engine talks to, as async ABCs with numpy in and out.

Numpy (not torch) crosses these boundaries so the same engine runs over in-process backends
(:mod:`assistant.pipeline.local`) or remote ones (Ray deployments) unchanged.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import numpy as np


class SpeechEncoderBackend(ABC):
    @abstractmethod
    async def encode(self, wave: np.ndarray) -> np.ndarray:
        """float32 [T] @ 16 kHz -> int64 [F]: the level-1 codec codes (the semantic stream the LM reads), the only
        level the engine uses, so the other levels are neither computed where avoidable nor sent."""


BACKEND_ROLES = ("speech", "lm", "acoustic", "media")  # the fields of ``Backends``


class BackendUnavailableError(RuntimeError):
    """A backend could not answer: a call timed out, its replica died or is unreachable, or it refused the work for
    load (every LM slot taken). ``role`` names the service (one of ``BACKEND_ROLES``). The engine tells the caller
    that service is unavailable (error code "unavailable"): a later turn may work. The text is for the log only."""

    def __init__(self, role: str, detail: str):
        super().__init__(f"{role} backend unavailable: {detail}")
        self.role = role
        self.detail = detail

    def __reduce__(self) -> tuple[type[BackendUnavailableError], tuple[str, str]]:
        # raised inside a Ray replica it travels pickled; the default would call __init__ with the message alone
        return type(self), (self.role, self.detail)


@dataclass(frozen=True)
class LMLimits:
    """How much one generation of an LM may hold.

    context_tokens: positions one generation may use, prompt and reply together (a KV slot, ``max_model_len``).
    max_reply_tokens: the most new tokens one reply may take (the generation settings' total limit).
    """

    context_tokens: int
    max_reply_tokens: int

    def __post_init__(self) -> None:
        if self.context_tokens < 2:
            raise ValueError(f"context_tokens must be >= 2, got {self.context_tokens}")
        if self.max_reply_tokens < 1:
            raise ValueError(f"max_reply_tokens must be >= 1, got {self.max_reply_tokens}")


class LMBackend(ABC):
    @abstractmethod
    def stream(self, prompt_ids: list[int], force_modality: str | None) -> AsyncGenerator[list[int]]:
        """Generated ids in chunks (the first as soon as it exists).

        Closing the returned generator (``aclose``) aborts generation and frees its state.
        """

    async def prefill(self, prompt_ids: list[int]) -> None:
        """Best effort: puts ``prompt_ids`` into the LM's KV state now, so that a later ``stream`` whose prompt starts
        with them prefills only the rest (a question prefilled while the user is still speaking). Returns once done;
        generates nothing. Not abstract: an LM without prefix reuse does nothing (the default), and one with no room
        now may skip it; a later ``stream`` is correct either way."""
        return None

    async def limits(self) -> LMLimits | None:
        """The context and reply sizes of this LM; the engine keeps every prompt small enough that the reply fits.
        None: unknown (the engine then bounds prompts by ``EngineConfig.max_history_tokens`` alone). Not abstract so
        that existing backends keep working; every real backend answers, and a wrapper forwards its inner one's."""
        return None


def voice_key(prompt: np.ndarray) -> str:
    """The key of an acoustic prompt (int64 [n_q, Tp]): a hash of its shape and codes, so every process (every
    acoustic replica) derives the same key for the same prompt."""
    codes = np.ascontiguousarray(prompt, dtype="<i8")
    if codes.ndim != 2:
        raise ValueError(f"a voice prompt is [n_q, frames], got shape {codes.shape}")
    digest = hashlib.sha256(f"{codes.shape[0]}x{codes.shape[1]}:".encode() + codes.tobytes()).hexdigest()
    return f"voice-{digest[:32]}"


class UnknownVoiceKeyError(KeyError):
    """``decode_chunk`` got a voice key this acoustic backend (replica) does not hold, e.g. a replica that was
    restarted or added by autoscaling: send the prompt again (``decode_chunk(..., prompt=...)`` or
    ``register_voice``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown voice key"


class AcousticBackend(ABC):
    """Semantic chunks -> all codec levels + audio, in a voice registered once per session.

    A session registers its voice prompt once (``register_voice``) and then sends only the key with every chunk.
    Keys are content hashes (``voice_key``): registering is idempotent, every replica derives the same key, and a
    replica that lacks a key (restarted, autoscaled) raises ``UnknownVoiceKeyError``; the caller then sends the
    prompt along with the chunk once (``prompt=``), which registers it where the chunk is decoded.
    """

    @abstractmethod
    async def register_voice(self, prompt: np.ndarray) -> str:
        """int64 [n_q, Tp] acoustic prompt -> its key (``voice_key(prompt)``); idempotent."""

    @abstractmethod
    async def decode_chunk(
        self, semantic: np.ndarray, context: np.ndarray | None, voice: str | None, prompt: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """semantic int64 [t], context int64 [n_q, Tc] | None (the previous chunk's codes), voice key | None (no
        prompt) -> (codes int64 [n_q, t], wave float32 [t * 320]).

        The returned codes are what the caller keeps as the next chunk's context. ``prompt`` (int64 [n_q, Tp]) is
        sent only to re-register ``voice`` with a replica that raised ``UnknownVoiceKeyError``; it must be the prompt
        whose key ``voice`` is."""


class MediaBackend(ABC):
    @abstractmethod
    async def image_png(self, codes: list[int]) -> tuple[bytes, int, int]:
        """Image codes -> (png bytes, width, height)."""

    @abstractmethod
    async def music_wave(self, tokens: list[int]) -> np.ndarray:
        """Flattened music tokens -> float32 [T] @ 16 kHz."""

    @abstractmethod
    async def image_codes(self, png: bytes) -> list[int]:
        """An image file (PNG or JPEG bytes) sent by a user -> its image codes. Raises ``ValueError`` for bytes that
        are not a readable image."""

    @abstractmethod
    async def music_codes(self, wav: bytes) -> list[int]:
        """A tune sent by a user (a WAV file's bytes: any rate, mono or stereo) -> its music tokens, as the LM reads
        them (the music codec's ``encode`` of the tune resampled to the codec's rate). Raises ``ValueError`` for bytes
        that are not a readable tune."""


@dataclass(frozen=True)
class Backends:
    speech: SpeechEncoderBackend
    lm: LMBackend
    acoustic: AcousticBackend
    media: MediaBackend
