import shutil
import subprocess
from pathlib import Path

import pytest

from assistant.audio import read_wav, write_wav

QUESTION = "what is two plus three"


@pytest.fixture(scope="session")
def spoken_question(tmp_path_factory) -> Path:
    """A spoken question made by espeak-ng, at 16 kHz, with silence around it."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed; `make test` installs it")
    folder = tmp_path_factory.mktemp("question")
    raw = folder / "raw.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), QUESTION], check=True)
    wave = read_wav(raw)
    path = folder / "question.wav"
    write_wav(path, wave)
    return path
