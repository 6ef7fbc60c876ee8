"""Ray Serve shim: image and music detokenizers, and the encoders of the pictures and tunes users send."""

from __future__ import annotations

import numpy as np
from ray import serve

from assistant.models.loading import ModelSpec, load_role
from deployments.common import FAST_SHUTDOWN, ReadinessProbe


@serve.deployment(**FAST_SHUTDOWN)
class MediaDecoderDeployment(ReadinessProbe):
    def __init__(self, model: dict | None = None):
        self._media = load_role(ModelSpec.from_dict(model), "media")

    async def image_png(self, codes: list[int]) -> tuple[bytes, int, int]:
        return await self._media.image_png(list(codes))

    async def music_wave(self, tokens: list[int]) -> np.ndarray:
        return await self._media.music_wave(list(tokens))

    async def image_codes(self, png: bytes) -> list[int]:
        return await self._media.image_codes(bytes(png))

    async def music_codes(self, wav: bytes) -> list[int]:
        return await self._media.music_codes(bytes(wav))
