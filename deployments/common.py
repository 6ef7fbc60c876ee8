"""What every deployment shares: fast graceful shutdown and the readiness probe.

Model code and model loading live in ``assistant/`` (:mod:`assistant.models.loading`); a deployment loads its
role's in-process backend with ``load_role`` and forwards calls to it. ``ModelSpec`` travels to replicas as a plain
dict (it pickles without pydantic). ``ModelSpec``, ``BACKEND_PARTS`` and ``load_local_backend`` are re-exported here
for older imports.
"""

from __future__ import annotations

from typing import Any

from assistant.models.loading import DTYPES, LM_ENGINES, MODEL_FAMILIES, ROLE_PARTS, ModelSpec, load_role

# Serve's defaults (2 s wait loop, 20 s timeout) make every shutdown take seconds; replicas here hold no
# work worth waiting for beyond half a second.
FAST_SHUTDOWN: dict[str, Any] = {"graceful_shutdown_wait_loop_s": 0.1, "graceful_shutdown_timeout_s": 0.5}

BACKEND_PARTS = ROLE_PARTS
load_local_backend = load_role

__all__ = ["BACKEND_PARTS", "DTYPES", "FAST_SHUTDOWN", "LM_ENGINES", "MODEL_FAMILIES", "ModelSpec", "ReadinessProbe",
           "load_local_backend", "load_role"]


class ReadinessProbe:
    """Mixed into every model deployment: a call that succeeds once a replica has loaded its models. The gateway's
    /health waits on it, so "ok" means a turn will not stall on a deployment that is still starting."""

    async def ready(self) -> bool:
        return True
