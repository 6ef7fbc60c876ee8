"""The in-process `assistant chat` on a spoken question: same engine as the server, no Ray, no WebRTC."""

import subprocess
import sys

import numpy as np
import soundfile


def test_assistant_chat_answers_a_spoken_question(spoken_question, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "assistant", "chat", "--input", str(spoken_question), "--out", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    answer, rate = soundfile.read(out / "answer.wav", dtype="float32")
    assert rate == 16000
    assert answer.size > rate // 5  # at least 200 ms of speech
    assert float(np.sqrt(np.mean(answer**2))) > 1e-3


def test_assistant_chat_rejects_a_broken_wav(tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt garbage")
    result = subprocess.run(
        [sys.executable, "-m", "assistant", "chat", "--input", str(broken), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "cannot read audio file" in (result.stderr + result.stdout)
