"""Where a neural training stage runs: ``--device`` parsing and mixed precision.

The CPU is the default everywhere (``make train-mini`` runs on a 2-core laptop). On CUDA the forward passes run under
bfloat16 autocast (no loss scaler needed, unlike float16) and the weights stay float32, so a checkpoint trained on a
GPU loads and runs on the CPU unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def training_device(name: str = "cpu") -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> a device; a clear error when CUDA is asked for and absent."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from exc
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"training runs on cpu or cuda, not {device.type!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but this torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA devices exist")
    return device


@contextlib.contextmanager
def mixed_precision(device: torch.device) -> Iterator[None]:
    """bfloat16 autocast on CUDA; nothing on the CPU (CPU autocast is slower than float32 on small models)."""
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield
