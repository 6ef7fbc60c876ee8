"""Ray Serve shim: the acoustic decoder (semantic chunk -> all codec levels + wave)."""

from __future__ import annotations

import numpy as np
from ray import serve

from deployments.common import FAST_SHUTDOWN, ModelSpec, ReadinessProbe, load_local_backend


@serve.deployment(**FAST_SHUTDOWN)
class AcousticDecoderDeployment(ReadinessProbe):
    def __init__(self, model: dict | None = None):
        self._acoustic = load_local_backend(ModelSpec.from_dict(model), "acoustic")

    async def decode_chunk(
        self, semantic: np.ndarray, context: np.ndarray | None = None, prompt: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """int64 [t], int64 [n_q, Tc] | None, int64 [n_q, Tp] | None -> (int64 [n_q, t], float32 [t * 320])."""
        return await self._acoustic.decode_chunk(semantic, context, prompt)
