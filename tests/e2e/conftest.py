import shutil
import subprocess
from pathlib import Path

import pytest

from assistant.audio import read_wav, write_wav

# Chosen among the questions the committed embedded weights answer right when espeak-ng's en-us voice (not one of
# the training voices) asks them (transcript, text and speech all right); `make eval-mini` reports how often it does
# over the whole domain (docs/model-card.md).
QUESTION = "what is the capital of france"


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


ANSWER = "the capital of france is paris"


@pytest.fixture(scope="session")
def question_and_answer() -> tuple[str, str]:
    """The words of ``spoken_question`` and the domain's answer to them."""
    return QUESTION, ANSWER


@pytest.fixture(scope="session")
def sentence_judge():
    """pocketsphinx forced to choose among every sentence of the embedded domain (questions and answers)."""
    from training import domain
    from training.judges.speech import SentenceJudge

    return SentenceJudge(domain.all_spoken_sentences())


@pytest.fixture(scope="session")
def answer_judge():
    """pocketsphinx forced to choose among every answer of the domain's facts and small-talk tables (58 sentences):
    which answer was spoken, when the reply is known to be one of them."""
    from training import domain
    from training.judges.speech import SentenceJudge

    return SentenceJudge([answer for table in (domain.FACTS_TABLE, domain.SMALL_TALK_TABLE) for _, answer in table])
