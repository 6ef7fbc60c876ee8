"""The tiny vocabulary the tests share, as a plain function (``tests/conftest.py`` re-exports it as the
``make_tiny_vocab`` and ``tiny_vocab`` fixtures).

``make_tiny_vocab(codes=8, *, image_codes=, speech_codes=, music_codes=, with_ins_res=, pieces=, extra_ids=)``: a
``UnifiedVocab`` read back from ``write_embedded_vocab_files`` (byte text tokenizer plus ``codes`` ids per modality,
or the per-modality counts given), ``extra_ids`` ids past the added tokens counted in ``size`` but assigned to
nothing. Built once per distinct arguments per test process and shared: read it, never change it. Importable from
module level too (hypothesis tests cannot take function-scoped fixtures).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

from assistant.vocab import UnifiedVocab, write_embedded_vocab_files

_built: dict[tuple, UnifiedVocab] = {}


def make_tiny_vocab(
    codes: int = 8,
    *,
    image_codes: int | None = None,
    speech_codes: int | None = None,
    music_codes: int | None = None,
    with_ins_res: bool = True,
    pieces: Sequence[str] = (),
    extra_ids: int = 0,
) -> UnifiedVocab:
    sizes = tuple(codes if n is None else n for n in (image_codes, speech_codes, music_codes))
    key = (*sizes, with_ins_res, tuple(pieces), extra_ids)
    if key not in _built:
        with tempfile.TemporaryDirectory(prefix="tiny_vocab") as directory:  # read whole: the files can go
            written = write_embedded_vocab_files(directory, *sizes, with_ins_res=with_ins_res, pieces=tuple(pieces))
            vocab = UnifiedVocab.from_dir(written)
            if extra_ids:
                vocab = UnifiedVocab.from_dir(written, vocab_size=vocab.size + extra_ids)
        _built[key] = vocab
    return _built[key]
