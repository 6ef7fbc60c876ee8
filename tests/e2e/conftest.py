"""What the end-to-end tests ask the committed embedded models, chosen by rule before looking at any answer
(``tests/eval_questions.py``: ``make eval-mini``'s own set over the held-out voices).

- ``heldout_dialogues``: the first two dialogues of every family (18 dialogues, 21 turns), for the test that judges
  what the models answer against thresholds from the model card (``test_heldout_answers.py``).
- ``spoken_question``: the set's first spoken question, read by its held-out voice at its speed, for the tests of the
  whole path (the chat CLI, WebRTC). The models still get things wrong (the model card: the transcript is exact for
  90% of spoken turns, the text reply for 66% of turns), so those tests judge what the models reliably do: a
  well-formed transcript and reply in the domain's words, and speech of a plausible length.
"""

from __future__ import annotations

import eval_questions
import pytest


@pytest.fixture(scope="session")
def eval_mini_set():
    return eval_questions.eval_mini_dialogues()


@pytest.fixture(scope="session")
def heldout_dialogues(eval_mini_set):
    from training import domain

    return eval_mini_set[: 2 * len(domain.FAMILIES)]


@pytest.fixture(scope="session")
def spoken_question(tmp_path_factory, eval_mini_set):
    """(path of a 16 kHz WAV, its words): the first spoken question of the eval-mini set, with silence around it."""
    path = tmp_path_factory.mktemp("question") / "question.wav"
    return path, eval_questions.write_spoken_question(path, eval_mini_set)


@pytest.fixture(scope="session")
def typed_requests(eval_mini_set) -> dict[str, str]:
    """family -> the words of the set's first typed request of that family (``draw`` and ``play`` for the tests that
    ask for a picture or a tune)."""
    return eval_questions.typed_requests(eval_mini_set)
