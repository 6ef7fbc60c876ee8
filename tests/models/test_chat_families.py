"""``assistant chat`` loads either family through ``assistant.models.loading`` (``--family``, ``--assets``,
``--lm-dir``, ``--dtype``, ``--device``), and says why when the models cannot load."""

import pytest

from assistant.cli import main


@pytest.mark.slow  # anygpt_root: full-size SoundStorm and SEED checkpoints
def test_chat_answers_with_the_anygpt_family(anygpt_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "chat",
                "--family",
                "anygpt",
                "--assets",
                str(anygpt_root),
                "--dtype",
                "float32",
                "--text",
                "hello",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    stdout = capsys.readouterr().out
    assert "[turn finished: complete]" in stdout
    reply = (out / "reply.txt").read_text(encoding="utf-8")
    assert reply.startswith("reply: ") and reply.strip() != "reply:"  # random weights, but words of its vocabulary
    assert (out / "answer.wav").is_file()


def test_chat_refuses_what_cannot_load(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["chat", "--family", "anygpt", "--text", "hello", "--out", out]) == 2
    assert "assets_dir" in capsys.readouterr().err
    assert (
        main(["chat", "--family", "anygpt", "--assets", str(tmp_path / "absent"), "--text", "hello", "--out", out]) == 2
    )
    assert "cannot load the anygpt models" in capsys.readouterr().err
    assert main(["chat", "--device", "cuda", "--text", "hello", "--out", out]) == 2
    assert "--device: for --family anygpt only" in capsys.readouterr().err
    assert main(["chat", "--dtype", "float16", "--voices-file", "v.json", "--text", "hello", "--out", out]) == 2
    assert "--dtype, --voices-file: for --family anygpt only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any turn
