"""Import boundaries: assistant/ never imports ray; the wire types, the serving logic that needs no model, and the whole
edge client never import torch (nor ray, nor sounddevice: the edge client runs on machines without PortAudio too).

Each check imports in a fresh interpreter and reads its ``sys.modules``. The edge client's modules are found on disk
(every one of them, now and later); the torch-free modules of assistant/ and deployments/ are an explicit list, found
by importing each module of those packages alone (torch-free today: everything but the models' and modules' code
under ``assistant/models/{anygpt,embedded}`` and ``assistant/modules``, ``assistant/decoding``, ``assistant/lm_engine``,
``assistant.pipeline.local`` / ``acoustic_batching`` / ``vllm_lm``, and the Ray deployments). A module that starts
importing torch fails here; a new torch-free module belongs in the list.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TORCH_FREE = (
    "assistant",
    "assistant.access",
    "assistant.anystream_cli",
    "assistant.audio",
    "assistant.background",
    "assistant.cli",
    "assistant.decoding",
    "assistant.dispatch",
    "assistant.endpointing",
    "assistant.fragments",
    "assistant.image_io",
    "assistant.metrics",
    "assistant.models",
    "assistant.models.anygpt",
    "assistant.models.bundle",
    "assistant.models.config_io",
    "assistant.models.embedded",
    "assistant.models.interfaces",
    "assistant.models.loading",
    "assistant.models.voices",
    "assistant.modules",
    "assistant.pipeline",
    "assistant.pipeline.backends",
    "assistant.pipeline.chunking",
    "assistant.pipeline.demux",
    "assistant.pipeline.engine",
    "assistant.pipeline.outputs",
    "assistant.pipeline.turns",
    "assistant.prompts",
    "assistant.protocol",
    "assistant.rtc_audio",
    "assistant.vocab",
    "assistant.webrtc",
    "assistant.webrtc.ice",
    "assistant.webrtc.limits",
    "assistant.webrtc.manager",
    "assistant.webrtc.sctp_guard",
    "assistant.webrtc.session",
    "assistant.webrtc.tracks",
    # deployments/ without Ray or a model: checking a config must not import ray (Ray reads the node's address once,
    # at import; see tests/deployments/test_cluster_resources.py)
    "deployments",
    "deployments.app",
    "deployments.autoscaling",
    "deployments.common",
    "deployments.health",
    "deployments.streams",
    "deployments.timeouts",
)


def modules_under(package: str) -> list[str]:
    """Every importable module of ``package`` (a folder of the repository); ``__main__`` only where importing it does
    not run the program (``if __name__ == "__main__"``)."""
    names = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "assets" in parts:
            continue
        if parts[-1] == "__main__" and 'if __name__ == "__main__"' not in path.read_text(encoding="utf-8"):
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def loaded_after(modules: list[str] | tuple[str, ...]) -> set[str]:
    """The top-level packages in ``sys.modules`` of a fresh interpreter after importing ``modules``."""
    code = (
        "import importlib, json, sys\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def offenders(modules, forbidden: set[str]) -> dict[str, list[str]]:
    """Which of ``modules``, each imported alone, loads a ``forbidden`` package (called once a joint import did)."""
    found = {}
    for module in modules:
        loaded = sorted(forbidden & loaded_after([module]))
        if loaded:
            found[module] = loaded
    return found


def test_edge_client_modules_are_all_found():
    found = modules_under("edge_client")
    assert {"edge_client", "edge_client.__main__", "edge_client.cli", "edge_client.client"} <= set(found)
    assert "assistant.__main__" not in modules_under("assistant")  # importing it would run the chat


def test_torch_free_modules_and_the_whole_edge_client_import_neither_torch_nor_ray_nor_sounddevice():
    modules = [*TORCH_FREE, *modules_under("edge_client")]
    forbidden = {"torch", "ray", "sounddevice"}
    if forbidden & loaded_after(modules):
        pytest.fail(f"modules that import torch, ray or sounddevice: {offenders(modules, forbidden)}")


@pytest.mark.slow  # imports torch and transformers: several seconds
def test_no_module_of_assistant_imports_ray():
    modules = modules_under("assistant")
    assert "ray" not in loaded_after(modules), offenders(modules, {"ray"})


def test_assistant_source_never_imports_ray():
    # also imports inside functions, which the import test does not reach
    lines = []
    for path in (ROOT / "assistant").rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ray", "from ray")):
                lines.append(f"{path.relative_to(ROOT)}: {stripped}")
    assert lines == []


def test_edge_client_source_never_imports_torch_or_ray():
    files = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "edge_client").rglob("*.py")
        if any(
            line.strip().startswith(("import torch", "from torch", "import ray", "from ray"))
            for line in p.read_text(encoding="utf-8").splitlines()
        )
    ]
    assert files == []
