"""What every deployment shares: fast graceful shutdown and loading the in-process model backends.

Model code lives in ``assistant/``; a deployment only loads an :mod:`assistant.pipeline.local` backend and
forwards calls to it. ``ModelSpec`` travels to replicas as a plain dict (it pickles without pydantic).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Serve's defaults (2 s wait loop, 20 s timeout) make every shutdown take seconds; replicas here hold no
# work worth waiting for beyond half a second.
FAST_SHUTDOWN: dict[str, Any] = {"graceful_shutdown_wait_loop_s": 0.1, "graceful_shutdown_timeout_s": 0.5}

MODEL_FAMILIES = ("embedded",)


class ReadinessProbe:
    """Mixed into every model deployment: a call that succeeds once a replica has loaded its models. The gateway's
    /health waits on it, so "ok" means a turn will not stall on a deployment that is still starting."""

    async def ready(self) -> bool:
        return True


@dataclass(frozen=True)
class ModelSpec:
    family: str = "embedded"
    assets_dir: str | None = None  # None: the package's own assets for ``family``
    seed: int = 0

    def __post_init__(self) -> None:
        if self.family not in MODEL_FAMILIES:
            raise ValueError(f"model family must be one of {MODEL_FAMILIES}, got {self.family!r}")

    @classmethod
    def from_dict(cls, obj: dict[str, Any] | ModelSpec | None) -> ModelSpec:
        if isinstance(obj, ModelSpec):
            return obj
        return cls(**(obj or {}))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def tokenizer_dir(self) -> Path:
        import assistant

        root = Path(self.assets_dir) if self.assets_dir else Path(assistant.__file__).parent / "assets" / self.family
        return root / "tokenizer"


# Which models each backend needs: a replica loads only those (memory and start-up time per replica).
BACKEND_PARTS: dict[str, tuple[str, ...]] = {
    "speech": ("codec",),
    "lm": ("lm",),
    "acoustic": ("acoustic", "codec"),
    "media": ("image", "music"),
}


def load_local_backend(spec: ModelSpec, kind: str):
    """One in-process backend (``assistant.pipeline.local``) of ``kind`` over just the models it needs."""
    from assistant.models.bundle import load_embedded
    from assistant.pipeline import local

    bundle = load_embedded(spec.assets_dir, seed=spec.seed, parts=BACKEND_PARTS[kind])
    if kind == "speech":
        return local.LocalSpeechEncoder(bundle)
    if kind == "lm":
        return local.LocalLMBackend(bundle, seed=spec.seed)
    if kind == "acoustic":
        return local.LocalAcousticBackend(bundle)
    return local.LocalMediaBackend(bundle)
