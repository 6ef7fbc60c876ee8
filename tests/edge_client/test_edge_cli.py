"""Command-line behaviour that needs no server."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge_client.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def test_parser_defaults_and_options():
    args = build_parser().parse_args(["--server", "http://x", "--input", "q.wav", "--output", "out",
                                      "--loopback-only", "--timeout", "5", "--vad-aggressiveness", "3"])
    assert (args.input, args.output, args.loopback_only, args.timeout, args.vad_aggressiveness) == (
        "q.wav", "out", True, 5.0, 3)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--server", "http://x", "--vad-aggressiveness", "7"])


def test_missing_input_file_is_a_clear_error(tmp_path, capsys):
    code = main(["--server", "http://127.0.0.1:9", "--input", str(tmp_path / "nope.wav"), "--output", str(tmp_path)])
    assert code == 2
    assert "cannot read audio file" in capsys.readouterr().err


def test_module_entry_point_reports_unreachable_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "edge_client", "--server", f"http://127.0.0.1:{port}", "--text", "hi",
         "--output", str(tmp_path), "--loopback-only"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "cannot reach the server" in result.stderr
    assert (tmp_path / "session.json").exists()
