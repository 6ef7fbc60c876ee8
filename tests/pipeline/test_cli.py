import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

from assistant.audio import write_wav
from assistant.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "assistant", "chat", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_chat_on_a_generated_wav(tmp_path, capsys):
    # in-process (the same code path as `python -m assistant`; saves a second torch/transformers import)
    t = np.arange(12000) / 16000
    question = tmp_path / "q.wav"
    write_wav(question, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))
    assert main(["chat", "--input", str(question), "--out", str(tmp_path / "out"), "--seed", "3"]) == 0
    stdout = capsys.readouterr().out
    answer, rate = soundfile.read(tmp_path / "out" / "answer.wav", dtype="float32")
    assert rate == 16000 and answer.size >= 16000 // 5
    assert float(np.sqrt(np.mean(answer**2))) > 1e-3
    assert (tmp_path / "out" / "reply.txt").read_text(encoding="utf-8").startswith(("transcript:", "reply:"))
    assert "[turn finished" in stdout


def test_broken_wav_exits_nonzero(tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt garbage")
    result = run_cli("--input", broken, "--out", tmp_path / "o")
    assert result.returncode != 0
    assert "cannot read audio file" in result.stderr
    missing = run_cli("--input", tmp_path / "nope.wav", "--out", tmp_path / "o")
    assert missing.returncode != 0 and "cannot read audio file" in missing.stderr


def test_bad_picture_or_no_question_exits_2(tmp_path, capsys):
    fake = tmp_path / "not_a_picture.png"
    fake.write_bytes(b"hello, not a picture")
    assert main(["chat", "--image", str(fake), "--out", str(tmp_path / "o")]) == 2
    assert "not a PNG or JPEG" in capsys.readouterr().err
    assert main(["chat", "--out", str(tmp_path / "o")]) == 2
    assert "give a question" in capsys.readouterr().err
    assert main(["chat", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read picture" in capsys.readouterr().err
