"""Command-line behaviour that needs no server."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from assistant.protocol import MAX_IMAGE_BYTES
from edge_client.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def test_parser_defaults_and_options():
    args = build_parser().parse_args(
        [
            "--server",
            "http://x",
            "--input",
            "q.wav",
            "--output",
            "out",
            "--loopback-only",
            "--timeout",
            "5",
            "--vad-aggressiveness",
            "3",
        ]
    )
    assert (args.input, args.output, args.loopback_only, args.timeout, args.vad_aggressiveness) == (
        "q.wav",
        "out",
        True,
        5.0,
        3,
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--server", "http://x", "--vad-aggressiveness", "7"])


def test_missing_input_file_is_a_clear_error(tmp_path, capsys):
    code = main(["--server", "http://127.0.0.1:9", "--input", str(tmp_path / "nope.wav"), "--output", str(tmp_path)])
    assert code == 2
    assert "cannot read audio file" in capsys.readouterr().err


@pytest.mark.slow  # a subprocess: > 1.5 s
def test_module_entry_point_reports_unreachable_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_client",
            "--server",
            f"http://127.0.0.1:{port}",
            "--text",
            "hi",
            "--output",
            str(tmp_path),
            "--loopback-only",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "cannot reach the server" in result.stderr
    assert (tmp_path / "session.json").exists()


def test_image_and_voice_options(tmp_path):
    args = build_parser().parse_args(
        ["--server", "http://x", "--image", "cat.png", "--text", "what is this?", "--voice", "warm_alto-2"]
    )
    assert (args.image, args.text, args.voice) == ("cat.png", "what is this?", "warm_alto-2")
    defaults = build_parser().parse_args(["--server", "http://x"])
    assert defaults.image is None and defaults.voice is None
    for bad in ("Alto", "a b", "x" * 40, ""):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--server", "http://x", "--voice", bad])


@pytest.mark.parametrize(
    "content, fragment",
    [
        (None, "cannot read picture"),
        (b"GIF89a" + b"\x00" * 16, "neither PNG nor JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * MAX_IMAGE_BYTES, "exceeds the limit"),
    ],
)
def test_unusable_picture_is_a_clear_error_before_connecting(tmp_path, capsys, content, fragment):
    path = tmp_path / "picture.png"
    if content is not None:
        path.write_bytes(content)
    code = main(
        ["--server", "http://127.0.0.1:9", "--image", str(path), "--text", "what is it?", "--output", str(tmp_path)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert fragment in err and str(path) in err
    assert not (tmp_path / "session.json").exists()  # nothing was attempted
