"""The in-process `assistant chat` with the committed embedded models: same engine as the server, no Ray, no WebRTC.

The answers are judged the way `make eval-mini` judges them: speech by pocketsphinx, pictures and tunes from
pixels and samples.
"""

import subprocess
import sys

import numpy as np
import soundfile
from PIL import Image

from training.judges.image import judge_image
from training.judges.music import judge_music


def chat(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "assistant", "chat", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (out / "reply.txt").read_text(encoding="utf-8").splitlines()
    return result, {"dir": out, **dict(line.split(": ", 1) for line in lines)}


def test_assistant_chat_answers_a_spoken_question(spoken_question, question_and_answer, tmp_path, sentence_judge):
    question, answer_words = question_and_answer
    _, reply = chat(tmp_path, "--input", str(spoken_question))
    assert reply["transcript"] == question
    assert reply["reply"] == answer_words
    answer, rate = soundfile.read(reply["dir"] / "answer.wav", dtype="float32")
    assert rate == 16000
    assert sentence_judge.transcribe(answer) == answer_words


def test_assistant_chat_draws_what_is_asked(tmp_path):
    _, reply = chat(tmp_path, "--text", "draw a red circle")
    assert reply["reply"] == "here is a red circle"
    pixels = np.asarray(Image.open(reply["dir"] / "image_0.png").convert("RGB"))
    assert judge_image(pixels) == ("red", "circle")


def test_assistant_chat_plays_what_is_asked(tmp_path):
    _, reply = chat(tmp_path, "--text", "play a fast major tune")
    assert reply["reply"] == "here is a fast major tune"
    tune, rate = soundfile.read(reply["dir"] / "music_0.wav", dtype="float32")
    tempo, mode = judge_music(tune, rate)
    assert abs(tempo - 150) <= 15 and mode == "major", (tempo, mode)


def test_assistant_chat_rejects_a_broken_wav(tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt garbage")
    result = subprocess.run(
        [sys.executable, "-m", "assistant", "chat", "--input", str(broken), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "cannot read audio file" in (result.stderr + result.stdout)
