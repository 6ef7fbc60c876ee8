"""Suite-wide settings and fixtures.

Torch's intra-op threads fight each other on a small, shared CPU (tests, Ray replicas and the test runner all at
once): two threads made some model tests ten times slower than one. Tests use tiny models, so one thread is plenty.

Fixtures (the function itself is ``vocab_fixtures.make_tiny_vocab``, importable from any test or helper module):

- ``make_tiny_vocab(codes=8, *, image_codes=, speech_codes=, music_codes=, with_ins_res=, pieces=, extra_ids=)``: a
  ``UnifiedVocab`` over ``write_embedded_vocab_files`` (byte text tokenizer plus ``codes`` ids per modality), built
  once per distinct arguments per test process. Shared between tests: read it, never change it.
- ``tiny_vocab``: ``make_tiny_vocab()`` (8 codes per modality). Another size:
  ``@pytest.mark.parametrize("tiny_vocab", [64], indirect=True)`` (an int: every modality), or a dict of
  ``make_tiny_vocab``'s keywords.

What the end-to-end and browser tests ask the committed embedded models, chosen by rule before looking at any answer
(``tests/eval_questions.py``: ``make eval-mini``'s own set over the held-out voices; built only when a test asks):

- ``eval_mini_set``: the dialogues;
- ``heldout_dialogues``: the first two dialogues of every family (18 dialogues, 21 turns), for the test that judges
  what the models answer against thresholds from the model card (``e2e/test_heldout_answers.py``);
- ``spoken_question``: (path of a 16 kHz WAV, its words): the set's first spoken question, read by its held-out voice
  at its speed, with silence around it, for the tests of the whole path (chat CLI, WebRTC, the browser page). The
  models still get things wrong (the model card), so those tests judge what the models reliably do: a well-formed
  transcript and reply in the domain's words, and speech of a plausible length;
- ``typed_requests``: family -> the words of the set's first typed request of that family (``draw``, ``play``);
- ``picture_question``: (words, ImageSpec): the set's first typed question about a user's picture.
"""

from __future__ import annotations

import importlib.util

import eval_questions
import pytest
import vocab_fixtures

if importlib.util.find_spec("torch") is not None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def make_tiny_vocab():
    return vocab_fixtures.make_tiny_vocab


@pytest.fixture
def tiny_vocab(request):
    param = getattr(request, "param", 8)
    return vocab_fixtures.make_tiny_vocab(**param) if isinstance(param, dict) else vocab_fixtures.make_tiny_vocab(param)


@pytest.fixture(scope="session")
def eval_mini_set():
    return eval_questions.eval_mini_dialogues()


@pytest.fixture(scope="session")
def heldout_dialogues(eval_mini_set):
    from training import domain

    return eval_mini_set[: 2 * len(domain.FAMILIES)]


@pytest.fixture(scope="session")
def spoken_question(tmp_path_factory, eval_mini_set):
    path = tmp_path_factory.mktemp("question") / "question.wav"
    return path, eval_questions.write_spoken_question(path, eval_mini_set)


@pytest.fixture(scope="session")
def typed_requests(eval_mini_set) -> dict[str, str]:
    return eval_questions.typed_requests(eval_mini_set)


@pytest.fixture(scope="session")
def picture_question(eval_mini_set):
    return eval_questions.picture_question(eval_mini_set)
