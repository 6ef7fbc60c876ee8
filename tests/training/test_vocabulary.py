import json
import shutil

import pytest

from assistant.models.embedded import EMBEDDED_DIR
from assistant.prompts import SPEECH_INSTRUCTION_SUFFIX, SYSTEM_PROMPT
from assistant.vocab import UnifiedVocab
from training import domain
from training.vocabulary import write_embedded_tokenizer


def test_committed_tokenizer_and_lm_size_are_what_the_domain_gives(tmp_path):
    shutil.copy(EMBEDDED_DIR / "lm.json", tmp_path / "lm.json")
    vocab = write_embedded_tokenizer(tmp_path)
    for name in ("added_tokens.json", "text_tokenizer.json"):
        assert (EMBEDDED_DIR / "tokenizer" / name).read_bytes() == (tmp_path / "tokenizer" / name).read_bytes()
    assert json.loads((EMBEDDED_DIR / "lm.json").read_text())["vocab_size"] == vocab.size


@pytest.mark.slow  # every sentence of the domain: > 1.5 s
def test_every_domain_word_is_one_id_and_the_template_strings_are_one_each():
    vocab = UnifiedVocab.embedded()
    first_piece = vocab.text_tokenizer.piece_offset
    for sentence in domain.all_spoken_sentences():
        ids = vocab.encode_text(sentence)
        assert len(ids) == len(sentence.split(" ")), sentence
        assert vocab.decode_text(ids) == sentence
        long_words = [w for w in sentence.split(" ") if len(w) > 1]
        assert sum(i >= first_piece for i in ids) >= len(long_words), sentence
        assert all(i >= first_piece for i in vocab.encode_text(" " + sentence)), sentence
    assert len(vocab.encode_text(SYSTEM_PROMPT)) == 1
    assert len(vocab.encode_text(SPEECH_INSTRUCTION_SUFFIX)) == 1
