"""Ray Serve shim: the speech encoder (wave -> codec codes), with requests batched by ``@serve.batch``."""

from __future__ import annotations

import numpy as np
from ray import serve

from deployments.common import FAST_SHUTDOWN, ModelSpec, ReadinessProbe, load_local_backend


@serve.deployment(**FAST_SHUTDOWN)
class SpeechTokenizerDeployment(ReadinessProbe):
    def __init__(self, model: dict | None = None, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.005):
        self._encoder = load_local_backend(ModelSpec.from_dict(model), "speech")
        self.encode.set_max_batch_size(max_batch_size)
        self.encode.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """float32 [T] @ 16 kHz each -> int64 [n_q, F] each (callers send one wave; Serve groups them)."""
        # Utterances differ in length; the codec runs them one after another inside one replica call.
        return [np.asarray(await self._encoder.encode(np.asarray(w, dtype=np.float32)), dtype=np.int64) for w in waves]

