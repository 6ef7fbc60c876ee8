"""What the end-to-end tests ask the committed embedded models, chosen by rule before looking at any answer.

The questions come from ``make eval-mini``'s own set: ``domain.generate_dialogues`` with ``EvalPlan``'s seed and size
over the held-out voices (no model trained on them), the set that ``docs/model-card.md``'s figures are measured on.
Its dialogues take the families in turn, so its first ``len(FAMILIES) * k`` dialogues are the first k of each family.

- :func:`eval_mini_dialogues`: that set.
- :func:`write_spoken_question`: the set's first spoken question (no picture), read by its held-out voice at its
  speed, written as a 16 kHz WAV with ``SILENCE_S`` of silence around it; returns its words.
- :func:`typed_requests`: family -> the words of the set's first typed request of that family (``draw`` and ``play``
  for the tests that ask for a picture or a tune).
- :func:`picture_question`: the set's first typed question about a user's picture: (its words, the picture's spec,
  which ``training.images.render`` draws).

Fixtures over these live in the conftest of each folder that uses them (``tests/e2e``, ``tests/web``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from assistant.audio import SAMPLE_RATE, write_wav

SILENCE_S = 0.3  # around the spoken question, as a microphone would have it


def eval_mini_dialogues():
    from training import domain, voices
    from training.evaluate import EvalPlan

    plan = EvalPlan()
    return domain.generate_dialogues(
        plan.per_family * len(domain.FAMILIES), seed=plan.seed, voices=voices.HELDOUT_VOICES, families=domain.FAMILIES
    )


def write_spoken_question(path: Path, dialogues) -> str:
    """Writes the first spoken question of ``dialogues`` to ``path``; returns its words."""
    from training import voices

    user = next(user for dialogue in dialogues for user, _ in dialogue.turns if user.spoken and user.image is None)
    wave = voices.synthesize(user.words, user.voice, user.speed)
    pad = np.zeros(int(SILENCE_S * SAMPLE_RATE), np.float32)
    write_wav(path, np.concatenate([pad, wave, pad]))
    return user.words


def typed_requests(dialogues) -> dict[str, str]:
    found: dict[str, str] = {}
    for dialogue in dialogues:
        user, _ = dialogue.turns[0]
        if not user.spoken and user.image is None:
            found.setdefault(dialogue.family, user.words)
    return found


def picture_question(dialogues):
    user = next(
        user for dialogue in dialogues for user, _ in dialogue.turns if user.image is not None and not user.spoken
    )
    return user.words, user.image
