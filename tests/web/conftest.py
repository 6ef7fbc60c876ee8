"""The browser page's tests ask the same questions as the end-to-end tests (``tests/eval_questions.py``)."""

from __future__ import annotations

import eval_questions
import pytest


@pytest.fixture(scope="session")
def eval_mini_set():
    return eval_questions.eval_mini_dialogues()


@pytest.fixture(scope="session")
def spoken_question(tmp_path_factory, eval_mini_set):
    """(path of a 16 kHz WAV, its words): the first spoken question of the eval-mini set, with silence around it."""
    path = tmp_path_factory.mktemp("question") / "question.wav"
    return path, eval_questions.write_spoken_question(path, eval_mini_set)


@pytest.fixture(scope="session")
def typed_requests(eval_mini_set) -> dict[str, str]:
    """family -> the words of the set's first typed request of that family (``draw``: a picture)."""
    return eval_questions.typed_requests(eval_mini_set)


@pytest.fixture(scope="session")
def picture_question(eval_mini_set):
    """(words, ImageSpec): the set's first typed question about a user's picture."""
    return eval_questions.picture_question(eval_mini_set)
