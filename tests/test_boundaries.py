"""Import boundaries: assistant/ never imports ray; the wire types and the edge client never import torch."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in out.stdout.split()}


@pytest.mark.parametrize(
    "module",
    ["assistant.protocol", "assistant.audio", "assistant.endpointing", "assistant.webrtc.ice", "edge_client.cli"],
)
def test_torch_free_modules(module):
    if not (ROOT / (module.replace(".", "/") + ".py")).exists():
        pytest.fail(f"{module} is missing")
    assert "torch" not in imported_after(module)


def test_assistant_source_never_imports_ray():
    offenders = []
    for path in (ROOT / "assistant").rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ray", "from ray")):
                offenders.append(f"{path.relative_to(ROOT)}: {stripped}")
    assert offenders == []


def test_edge_client_source_never_imports_torch():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "edge_client").rglob("*.py")
        if any(
            line.strip().startswith(("import torch", "from torch"))
            for line in p.read_text(encoding="utf-8").splitlines()
        )
    ]
    assert offenders == []


def test_assistant_engine_imports_without_ray():
    code = "import sys, assistant.pipeline.engine, assistant.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
