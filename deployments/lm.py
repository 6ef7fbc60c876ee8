"""Ray Serve shim: the language model, streaming generated ids in merged chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from ray import serve

from deployments.common import FAST_SHUTDOWN, ModelSpec, ReadinessProbe, load_local_backend
from deployments.streams import batch_chunks


@serve.deployment(**FAST_SHUTDOWN)
class LMDeployment(ReadinessProbe):
    def __init__(self, model: dict | None = None, chunk_interval_s: float = 0.03):
        if chunk_interval_s < 0:
            raise ValueError("chunk_interval_s must be >= 0")
        self._lm = load_local_backend(ModelSpec.from_dict(model), "lm")
        self._interval_s = chunk_interval_s

    async def stream(self, prompt_ids: list[int], force_modality: str | None = None) -> AsyncIterator[list[int]]:
        """Call with ``handle.options(stream=True)``. Cancelling the call closes the local stream (frees the LM)."""
        source = self._lm.stream(list(prompt_ids), force_modality)
        async with aclosing(batch_chunks(source, self._interval_s)) as chunks:
            async for chunk in chunks:
                yield chunk
