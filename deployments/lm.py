"""Ray Serve shim: the language model. Every stream is one request of the replica's batched LM engine; generated ids
leave in merged chunks (the first at once)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from ray import serve

from assistant.lm_engine import LMEngineConfig
from assistant.models.loading import ModelSpec, load_role
from assistant.pipeline.backends import LMLimits
from deployments.autoscaling import LOAD_METRIC
from deployments.common import FAST_SHUTDOWN, ReadinessProbe, replica_name
from deployments.streams import batch_chunks


@serve.deployment(**FAST_SHUTDOWN)
class LMDeployment(ReadinessProbe):
    def __init__(self, model: dict | None = None, chunk_interval_s: float = 0.03, engine: dict | None = None):
        """``engine``: :class:`~assistant.lm_engine.LMEngineConfig` fields (slots, waiting places, slot capacity...)."""
        if chunk_interval_s < 0:
            raise ValueError("chunk_interval_s must be >= 0")
        config = LMEngineConfig(**(engine or {}))
        self._lm = load_role(ModelSpec.from_dict(model), "lm", lm_batching=config)
        self._interval_s = chunk_interval_s
        warmup = getattr(getattr(self._lm, "engine", None), "warmup", None)
        if warmup is not None:
            warmup()  # CUDA graphs captured before the first session, not during it

    async def stream(self, prompt_ids: list[int], force_modality: str | None = None) -> AsyncIterator[list[int]]:
        """Call with ``handle.options(stream=True)``. Cancelling the call cancels the request (its slot is free by
        the engine's next step). Raises ``BackendUnavailableError`` when every slot and waiting place of this replica
        is taken."""
        source = self._lm.stream(list(prompt_ids), force_modality)
        async with aclosing(batch_chunks(source, self._interval_s)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def prefill(self, prompt_ids: list[int]) -> None:
        """``LMBackend.prefill``: the prompt's KV, kept for the turn that will start the same way."""
        await self._lm.prefill(list(prompt_ids))

    async def limits(self) -> LMLimits | None:
        """The model's context and reply sizes (``LMBackend.limits``): the gateway's engine keeps prompts within
        them. Every replica of a deployment runs the same model and settings, so any replica's answer holds."""
        return await self._lm.limits()

    def stats(self) -> dict:
        """The engine's occupancy and speed figures (``assistant.lm_engine.LMEngine.stats``); {} for engines
        without them (vLLM)."""
        stats = getattr(self._lm, "stats", None)
        return {**stats(), "replica": replica_name()} if callable(stats) else {}

    def record_autoscaling_stats(self) -> dict[str, float]:
        """The load signal of ``deployments.autoscaling.LoadSignalPolicy``: slots taken plus requests waiting."""
        stats = self.stats()
        return {LOAD_METRIC: float(stats.get("active_slots", 0) + stats.get("waiting", 0))}

    def __del__(self) -> None:
        close = getattr(getattr(self, "_lm", None), "close", None)
        if callable(close):
            close()
