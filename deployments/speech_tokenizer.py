"""Ray Serve shim: the speech encoder (wave -> level-1 codec codes), concurrent utterances batched by ``@serve.batch``.

Only level 1 (int64 [F]) crosses the boundary: it is all the engine reads. A batch of utterances goes to
``LocalSpeechEncoder.encode_batch`` in one call. With the embedded codec (``MelRVQCodec.encode_batch``) that is one
padded analysis: zero padding leaves every utterance's codes unchanged there (frame-local STFT whose constant centre
padding already feeds zeros past the end; quantisation and level-1 mean normalisation run per utterance on its own
frames), which ``tests/models/test_speech_encode_batch.py`` checks. The AnyGPT family's SpeechTokenizer cannot be
padded without changing codes (reflect-padded convolutions and a BiLSTM see the padding), so there the batch's
utterances run one after another inside the call (the wrapper then only groups requests).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve

from assistant.models.loading import ModelSpec, load_role
from deployments.common import FAST_SHUTDOWN, ReadinessProbe


@serve.deployment(**FAST_SHUTDOWN)
class SpeechTokenizerDeployment(ReadinessProbe):
    def __init__(self, model: dict | None = None, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.005):
        self._encoder = load_role(ModelSpec.from_dict(model), "speech")
        batched: Any = self.encode  # serve.batch's wrapper has these setters; its annotations do not say so
        batched.set_max_batch_size(max_batch_size)
        batched.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """float32 [T] @ 16 kHz each -> int64 [F] level-1 codes each (callers send one wave; Serve groups them)."""
        codes = await self._encoder.encode_batch([np.asarray(w, dtype=np.float32) for w in waves])
        return [np.asarray(c, dtype=np.int64) for c in codes]
