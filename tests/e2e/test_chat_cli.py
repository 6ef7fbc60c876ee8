"""The in-process `assistant chat` with the committed embedded models: same engine as the server, no Ray, no WebRTC.

The questions are taken by rule from `make eval-mini`'s set (conftest.py), not for what the weights get right. These
tests check the whole path through the CLI and what the models reliably do: a transcript and a reply in the domain's
words, speech of a plausible length, a picture or a tune when one is asked for. How often the answers are right is
judged in test_heldout_answers.py, against the model card's figures.
"""

import subprocess
import sys

import numpy as np
import pytest
import soundfile
from e2e_checks import assert_domain_sentence, assert_speech_length
from PIL import Image

pytestmark = pytest.mark.slow  # each test loads the full embedded models in a subprocess


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


def test_assistant_chat_answers_a_spoken_question(spoken_question, tmp_path):
    question, _ = spoken_question
    _, reply = chat(tmp_path, "--input", str(question))
    assert_domain_sentence(reply["transcript"], "transcript")
    assert_domain_sentence(reply["reply"], "reply")
    answer, rate = soundfile.read(reply["dir"] / "answer.wav", dtype="float32")
    assert rate == 16000
    assert_speech_length(answer.size / rate, reply["reply"])


def test_assistant_chat_draws_when_asked(typed_requests, tmp_path):
    _, reply = chat(tmp_path, "--text", typed_requests["draw"])
    assert_domain_sentence(reply["reply"], "reply")
    with Image.open(reply["dir"] / "image_0.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0  # a picture, not a blank


def test_assistant_chat_plays_when_asked(typed_requests, tmp_path):
    _, reply = chat(tmp_path, "--text", typed_requests["play"])
    assert_domain_sentence(reply["reply"], "reply")
    tune, rate = soundfile.read(reply["dir"] / "music_0.wav", dtype="float32")
    assert tune.size >= rate and np.abs(tune).max() > 0.01  # at least a second of music, and audible


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
