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
"""

from __future__ import annotations

import importlib.util

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
