"""What the end-to-end tests ask the committed embedded models, chosen by rule before looking at any answer.

The questions come from ``make eval-mini``'s own set: ``domain.generate_dialogues`` with ``EvalPlan``'s seed and size
over the held-out voices (no model trained on them), the set that ``docs/model-card.md``'s figures are measured on.
Its dialogues take the families in turn, so its first ``len(FAMILIES) * k`` dialogues are the first k of each family.

- ``heldout_dialogues``: the first two dialogues of every family (18 dialogues, 21 turns), for the test that judges
  what the models answer against thresholds from the model card (``test_heldout_answers.py``).
- ``spoken_question``: the set's first spoken question, read by its held-out voice at its speed, for the tests of the
  whole path (the chat CLI, WebRTC). The models still get things wrong (the model card: the transcript is exact for
  90% of spoken turns, the text reply for 66% of turns), so those tests judge what the models reliably do: a
  well-formed transcript and reply in the domain's words, and speech of a plausible length.
"""

from __future__ import annotations

import numpy as np
import pytest

from assistant.audio import SAMPLE_RATE, write_wav

SILENCE_S = 0.3  # around the spoken question, as a microphone would have it


def eval_mini_dialogues():
    from training import domain, voices
    from training.evaluate import EvalPlan

    plan = EvalPlan()
    return domain.generate_dialogues(
        plan.per_family * len(domain.FAMILIES), seed=plan.seed, voices=voices.HELDOUT_VOICES, families=domain.FAMILIES
    )


@pytest.fixture(scope="session")
def eval_mini_set():
    return eval_mini_dialogues()


@pytest.fixture(scope="session")
def heldout_dialogues(eval_mini_set):
    from training import domain

    return eval_mini_set[: 2 * len(domain.FAMILIES)]


@pytest.fixture(scope="session")
def spoken_question(tmp_path_factory, eval_mini_set):
    """(path of a 16 kHz WAV, its words): the first spoken question of the eval-mini set, with silence around it."""
    from training import voices

    user = next(user for dialogue in eval_mini_set for user, _ in dialogue.turns if user.spoken and user.image is None)
    wave = voices.synthesize(user.words, user.voice, user.speed)
    pad = np.zeros(int(SILENCE_S * SAMPLE_RATE), np.float32)
    path = tmp_path_factory.mktemp("question") / "question.wav"
    write_wav(path, np.concatenate([pad, wave, pad]))
    return path, user.words


@pytest.fixture(scope="session")
def typed_requests(eval_mini_set) -> dict[str, str]:
    """family -> the words of the set's first typed request of that family (``draw`` and ``play`` for the tests that
    ask for a picture or a tune)."""
    found: dict[str, str] = {}
    for dialogue in eval_mini_set:
        user, _ = dialogue.turns[0]
        if not user.spoken and user.image is None:
            found.setdefault(dialogue.family, user.words)
    return found
