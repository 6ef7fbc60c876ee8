import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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


@pytest.mark.slow  # a subprocess with the embedded models: > 1.5 s
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


@pytest.mark.slow  # a subprocess: > 1.5 s
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


def test_chat_writes_every_kind_of_output_from_the_turn_controllers_messages(tmp_path, monkeypatch, capsys):
    """The CLI's files and printed lines, with fake backends: no model is loaded."""
    from pipeline_fakes import FakeLM, Script, make_backends, make_vocab

    import assistant.cli as cli
    from assistant.vocab import Modality

    vocab = make_vocab()
    s = Script(vocab)
    script = (
        [vocab.ins_id]
        + s.text("draw")
        + [vocab.res_id]
        + s.text(" here")
        + s.seg(Modality.SPEECH, range(10))
        + s.seg(Modality.IMAGE, [1, 2, 3])
        + s.seg(Modality.MUSIC, [4, 5, 6, 7])
        + [vocab.eos_id]
    )
    backends, *_ = make_backends(FakeLM(script, chunk=3))
    monkeypatch.setattr(cli, "load_vocab_and_voices", lambda spec: (vocab, None))
    monkeypatch.setattr(cli, "load_backends", lambda spec: backends)
    out = tmp_path / "out"
    assert main(["chat", "--text", "draw and play", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "[transcript] draw" in stdout and "[reply]  here" in stdout
    assert f"[image] {out / 'image_0.png'} (8x8)" in stdout
    assert f"[music] {out / 'music_0.wav'} (0.03 s)" in stdout  # 400 samples
    assert "[turn finished: complete]" in stdout and f"[wrote] {out / 'answer.wav'} (0.24 s)" in stdout
    assert (out / "image_0.png").read_bytes() == b"\x89PNG fake" + bytes(3)
    music, rate = soundfile.read(out / "music_0.wav", dtype="float32")
    assert rate == 16000 and music.size == 2 * 320  # the piece's two 20 ms frames, as played
    assert abs(float(music[100]) - 0.1) < 1e-3
    answer, _ = soundfile.read(out / "answer.wav", dtype="float32")
    assert answer.size == 12 * 320  # ten frames of speech, then the music's two
    assert (out / "reply.txt").read_text(encoding="utf-8") == "transcript: draw\nreply: here\n"


def test_chat_exits_1_when_the_turn_fails(tmp_path, monkeypatch, capsys):
    from pipeline_fakes import FakeLM, Script, make_backends, make_vocab

    import assistant.cli as cli

    vocab = make_vocab()
    backends, *_ = make_backends(FakeLM(Script(vocab).text("ok") + [vocab.eos_id], fail_after=0))
    monkeypatch.setattr(cli, "load_vocab_and_voices", lambda spec: (vocab, None))
    monkeypatch.setattr(cli, "load_backends", lambda spec: backends)
    assert main(["chat", "--text", "hi", "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "error: the reply failed; try again" in captured.err
    assert "[turn finished: error]" in captured.out
    assert (tmp_path / "out" / "reply.txt").read_text(encoding="utf-8") == "reply: \n"
