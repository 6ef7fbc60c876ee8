"""The engine's backend ABCs implemented over Ray Serve DeploymentHandles (numpy crosses unchanged)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
from ray.serve.handle import DeploymentHandle

from assistant.pipeline.backends import AcousticBackend, Backends, LMBackend, MediaBackend, SpeechEncoderBackend
from assistant.pipeline.backends import UnknownVoiceKeyError


class RaySpeechEncoder(SpeechEncoderBackend):
    def __init__(self, handle: DeploymentHandle):
        self._handle = handle

    async def encode(self, wave: np.ndarray) -> np.ndarray:
        """float32 [T] -> int64 [F] (level 1 only crosses the boundary)."""
        return await self._handle.encode.remote(np.asarray(wave, dtype=np.float32))


class RayLMBackend(LMBackend):
    def __init__(self, handle: DeploymentHandle):
        self._handle = handle.options(stream=True)

    async def stream(self, prompt_ids: list[int], force_modality: str | None) -> AsyncIterator[list[int]]:
        remote = self._handle.stream.remote(list(prompt_ids), force_modality)
        try:
            async for chunk in remote:
                yield list(chunk)
        finally:
            # Closing this iterator (interrupt, finished turn, error) cancels the generator in the LM replica,
            # whose cleanup stops generation there.
            remote.cancel()


class RayAcousticBackend(AcousticBackend):
    """Only the chunk, its context and the voice key cross per call; the prompt crosses once per session
    (``register_voice``) and again only when a replica does not know the key."""

    def __init__(self, handle: DeploymentHandle):
        self._handle = handle

    async def register_voice(self, prompt: np.ndarray) -> str:
        return await self._handle.register_voice.remote(np.asarray(prompt, dtype=np.int64))

    async def decode_chunk(
        self, semantic: np.ndarray, context: np.ndarray | None, voice: str | None, prompt: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        try:
            codes, wave = await self._handle.decode_chunk.remote(semantic, context, voice, prompt)
        except Exception as exc:
            # Ray re-raises a replica's exception as a RayTaskError that is also an instance of the cause's class;
            # the cause itself is checked too, so the engine always sees UnknownVoiceKeyError.
            if isinstance(exc, UnknownVoiceKeyError) or isinstance(getattr(exc, "cause", None), UnknownVoiceKeyError):
                raise UnknownVoiceKeyError(f"unknown voice key {voice!r}") from exc
            raise
        return codes, wave


class RayMediaBackend(MediaBackend):
    def __init__(self, handle: DeploymentHandle):
        self._handle = handle

    async def image_png(self, codes: list[int]) -> tuple[bytes, int, int]:
        png, width, height = await self._handle.image_png.remote(list(codes))
        return png, width, height

    async def music_wave(self, tokens: list[int]) -> np.ndarray:
        return await self._handle.music_wave.remote(list(tokens))

    async def image_codes(self, png: bytes) -> list[int]:
        return list(await self._handle.image_codes.remote(bytes(png)))


def ray_backends(speech: DeploymentHandle, lm: DeploymentHandle, acoustic: DeploymentHandle,
                 media: DeploymentHandle) -> Backends:
    return Backends(speech=RaySpeechEncoder(speech), lm=RayLMBackend(lm), acoustic=RayAcousticBackend(acoustic),
                    media=RayMediaBackend(media))
