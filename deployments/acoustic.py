"""Ray Serve shim: the acoustic decoder (semantic chunk -> all codec levels + wave).

The replica's :class:`~assistant.pipeline.local.LocalAcousticBackend` batches chunks of concurrent sessions
(``batch_window_s``, ``max_batch``: see :mod:`assistant.pipeline.acoustic_batching`). Voices are registered once:
the replica pre-registers every voice of the model's voice bank at start, a session's ``register_voice`` adds any
other prompt, and ``decode_chunk`` takes the key (an ``UnknownVoiceKeyError`` tells the caller to send the prompt
again, e.g. after this replica was restarted or added by autoscaling). ``stats`` gives metrics their figures (queue
depth, batch sizes, model seconds, audio seconds); ``record_autoscaling_stats`` the load signal of
``deployments.autoscaling.LoadSignalPolicy``: the chunks this replica holds (waiting + being decoded).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve

from assistant.models.interfaces import DEFAULT_CONTEXT_FRAMES
from assistant.models.loading import ModelSpec, load_role, load_vocab_and_voices
from deployments.autoscaling import LOAD_METRIC
from deployments.common import FAST_SHUTDOWN, ReadinessProbe, replica_name


@serve.deployment(**FAST_SHUTDOWN)
class AcousticDecoderDeployment(ReadinessProbe):
    def __init__(
        self,
        model: dict | None = None,
        batch_window_s: float = 0.005,
        max_batch: int = 8,
        context_frames: int = DEFAULT_CONTEXT_FRAMES,
        numpy_network: bool = True,
    ):
        """``context_frames``: frames of the previous chunk each chunk is decoded after (the engine's setting);
        ``numpy_network``: the network's CPU forward in NumPy where the model allows it."""
        spec = ModelSpec.from_dict(model)
        self._acoustic = load_role(spec, "acoustic", context_frames=context_frames, acoustic_numpy=numpy_network)
        self._acoustic.batcher.window_s = batch_window_s
        self._acoustic.batcher.max_batch = max_batch
        _, voices = load_vocab_and_voices(spec)
        if voices is not None:
            for name in voices.names:
                self._acoustic.add_voice(voices.prompt(name))

    async def register_voice(self, prompt: np.ndarray) -> str:
        """int64 [n_q, Tp] -> its key (a content hash: the same on every replica)."""
        return await self._acoustic.register_voice(np.asarray(prompt, dtype=np.int64))

    async def decode_chunk(
        self,
        semantic: np.ndarray,
        context: np.ndarray | None = None,
        voice: str | None = None,
        prompt: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """int64 [t], int64 [n_q, Tc] | None, voice key | None, (int64 [n_q, Tp] only to re-register the key)
        -> (int64 [n_q, t], float32 [t * 320]). Raises ``UnknownVoiceKeyError`` for a key this replica lacks."""
        return await self._acoustic.decode_chunk(semantic, context, voice, prompt)

    def stats(self) -> dict[str, Any]:
        """The batcher's ``AcousticBatchStats`` as a dict (with ``real_time_factor``)."""
        return {**self._acoustic.stats().to_dict(), "replica": replica_name()}

    def record_autoscaling_stats(self) -> dict[str, float]:
        """The load signal of ``deployments.autoscaling.LoadSignalPolicy``: chunks waiting plus chunks in flight."""
        stats = self._acoustic.stats()
        return {LOAD_METRIC: float(stats.queue_depth + stats.in_flight)}

    def __del__(self) -> None:
        close = getattr(getattr(self, "_acoustic", None), "close", None)
        if callable(close):
            close()
