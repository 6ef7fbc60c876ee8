"""The embedded family's text vocabulary: bytes plus one piece per word of the domain.

The pieces are every word the dialogues can use (bare and with a leading space) and the two fixed strings of the
chat template that every sequence repeats (the MMGPT system prompt and the voice-command suffix). With them a
sentence is one id per word instead of one per letter, so sequences are shorter and the LM learns words rather
than spellings. ``write_embedded_tokenizer`` regenerates the committed ``tokenizer/`` folder and keeps
``lm.json``'s ``vocab_size`` in step with it.
"""

from __future__ import annotations

from pathlib import Path

from assistant.models.config_io import read_json_object, write_json_object
from assistant.prompts import SPEECH_INSTRUCTION_SUFFIX, SYSTEM_PROMPT
from assistant.vocab import UnifiedVocab, write_embedded_vocab_files
from training import domain

TEMPLATE_PIECES = (SYSTEM_PROMPT, SPEECH_INSTRUCTION_SUFFIX, ": ")


def domain_pieces() -> list[str]:
    words = domain.vocabulary()
    bare = [w for w in words if len(w) > 1]  # a one-letter word is already one byte id
    return [*TEMPLATE_PIECES, *bare, *(" " + w for w in words)]


def write_embedded_tokenizer(assets_dir: Path) -> UnifiedVocab:
    """Write ``assets_dir/tokenizer`` from the domain and set ``lm.json``'s ``vocab_size`` to the vocabulary's size."""
    tokenizer_dir = write_embedded_vocab_files(assets_dir / "tokenizer", pieces=domain_pieces())
    vocab = UnifiedVocab.from_dir(tokenizer_dir)
    lm_path = assets_dir / "lm.json"
    lm = read_json_object(lm_path)
    if lm.get("vocab_size") != vocab.size:
        lm["vocab_size"] = vocab.size
        write_json_object(lm_path, lm)
    return vocab
