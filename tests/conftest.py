"""Suite-wide settings and fixtures.

Torch's intra-op threads fight each other on a small, shared CPU (tests, Ray replicas and the test runner all at
once): two threads made some model tests ten times slower than one. Tests use tiny models, so one thread is plenty.

Fixtures:

- ``make_tiny_vocab(codes=8, *, image_codes=, speech_codes=, music_codes=, with_ins_res=, pieces=)``: a
  ``UnifiedVocab`` over ``write_embedded_vocab_files`` (byte text tokenizer plus ``codes`` ids per modality), built
  once per distinct arguments per test session. Shared between tests: read it, never change it.
- ``tiny_vocab``: ``make_tiny_vocab()`` (8 codes per modality). Another size:
  ``@pytest.mark.parametrize("tiny_vocab", [64], indirect=True)`` (an int: every modality), or a dict of
  ``make_tiny_vocab``'s keywords.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import pytest

if importlib.util.find_spec("torch") is not None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def make_tiny_vocab(tmp_path_factory):
    from assistant.vocab import UnifiedVocab, write_embedded_vocab_files

    built = {}

    def make(
        codes: int = 8,
        *,
        image_codes: int | None = None,
        speech_codes: int | None = None,
        music_codes: int | None = None,
        with_ins_res: bool = True,
        pieces: Sequence[str] = (),
    ) -> UnifiedVocab:
        sizes = tuple(codes if n is None else n for n in (image_codes, speech_codes, music_codes))
        key = (*sizes, with_ins_res, tuple(pieces))
        if key not in built:
            directory = write_embedded_vocab_files(
                tmp_path_factory.mktemp("tiny_vocab"), *sizes, with_ins_res=with_ins_res, pieces=tuple(pieces)
            )
            built[key] = UnifiedVocab.from_dir(directory)
        return built[key]

    return make


@pytest.fixture
def tiny_vocab(request, make_tiny_vocab):
    param = getattr(request, "param", 8)
    return make_tiny_vocab(**param) if isinstance(param, dict) else make_tiny_vocab(param)
