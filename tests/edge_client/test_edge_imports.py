"""The edge client must run on machines without torch (and without PortAudio for file use)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a subprocess: > 1.5 s (tests/test_boundaries.py keeps torch out in the fast tier)
def test_edge_client_imports_neither_torch_nor_sounddevice():
    code = (
        "import sys\n"
        "import edge_client, edge_client.audio_io, edge_client.tracks, edge_client.client, edge_client.cli\n"
        "import edge_client.config, edge_client.console, edge_client.conversation, edge_client.playback\n"
        "import edge_client.recording, edge_client.signalling, assistant.rtc_audio\n"
        "import edge_client.__main__\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'sounddevice'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
