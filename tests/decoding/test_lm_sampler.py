import dataclasses

import pytest
import torch

from assistant.decoding.lm_sampler import (
    GenerationSettings,
    GrammarViolation,
    ReplyGrammar,
    SamplingSettings,
)
from assistant.vocab import Modality, TokenKind


@pytest.fixture
def vocab(make_tiny_vocab):
    return make_tiny_vocab(8)


def test_anygpt_defaults_and_json(tmp_path):
    s = GenerationSettings.anygpt_defaults()
    assert s.text.max_new_tokens == 500 and s.text.temperature == 1.0 and s.text.top_p == 1.0
    assert s.image.max_new_tokens == 200
    assert s.speech.repetition_penalty == 1.05 and s.speech.max_new_tokens == 1500
    assert s.music.top_k == 200 and s.music.repetition_penalty == 1.15 and s.music.max_new_tokens == 2000
    assert s.for_modality(Modality.MUSIC) is s.music
    s.to_json(tmp_path / "g.json")
    assert GenerationSettings.from_json(tmp_path / "g.json") == s
    with pytest.raises(ValueError):
        SamplingSettings(temperature=0)
    with pytest.raises(ValueError):
        GenerationSettings.from_dict({"format_version": 1, "text": {"bogus": 1}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.text.temperature = 2.0


def allowed(grammar, vocab):
    mask = grammar.allowed_mask()
    return {i for i in range(vocab.size) if mask[i]}


def test_grammar_outside_inside_and_after_eos(vocab):
    settings = GenerationSettings(speech=SamplingSettings(max_new_tokens=3))
    g = ReplyGrammar(vocab, settings)
    sp = vocab.range_of(Modality.SPEECH)
    outside = allowed(g, vocab)
    assert sp.start_id in outside and vocab.ins_id in outside and vocab.res_id in outside
    assert vocab.eos_id in outside and vocab.text_eos_id in outside
    assert not any(vocab.classify(i).kind in (TokenKind.CODE, TokenKind.END) for i in outside)
    assert vocab.human_id not in outside and vocab.eoh_id not in outside and vocab.bos_id not in outside
    with pytest.raises(GrammarViolation):
        g.advance(sp.first_id)
    g.advance(sp.start_id)
    inside = allowed(g, vocab)
    assert inside == set(range(sp.first_id, sp.first_id + sp.n_codes)) | {sp.end_id}
    with pytest.raises(GrammarViolation):
        g.advance(vocab.encode_text("a")[0])
    for code in (1, 2, 3):
        g.advance(sp.first_id + code)
    assert allowed(g, vocab) == {sp.end_id}  # segment budget reached: end forced
    g.advance(sp.end_id)
    assert g.current_modality is Modality.TEXT
    g.advance(vocab.eos_id)
    assert allowed(g, vocab) == {vocab.text_eos_id}
    g.advance(vocab.text_eos_id)
    assert g.finished and allowed(g, vocab) == set()


def test_grammar_min_codes_hold_back_the_end_marker(vocab):
    settings = GenerationSettings(image=SamplingSettings(min_new_tokens=3, max_new_tokens=3))
    g = ReplyGrammar(vocab, settings)
    im = vocab.range_of(Modality.IMAGE)
    codes = set(range(im.first_id, im.first_id + im.n_codes))
    g.advance(im.start_id)
    for code in (0, 1):
        assert allowed(g, vocab) == codes  # too few codes: no end marker yet
        with pytest.raises(GrammarViolation):
            g.advance(im.end_id)
        g.advance(im.first_id + code)
    g.advance(im.first_id + 2)
    assert allowed(g, vocab) == {im.end_id}  # exactly three codes, then the end
    with pytest.raises(ValueError, match="min_new_tokens"):
        SamplingSettings(min_new_tokens=5, max_new_tokens=4)


def test_grammar_text_budget_forces_eos(vocab):
    g = ReplyGrammar(vocab, GenerationSettings(text=SamplingSettings(max_new_tokens=2)))
    for i in vocab.encode_text("ab"):
        g.advance(i)
    assert allowed(g, vocab) == {vocab.eos_id}


def test_a_transcript_at_its_bound_must_hand_over_to_the_reply(vocab):
    settings = GenerationSettings(max_transcript_tokens=3)
    assert GenerationSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="max_transcript_tokens"):
        GenerationSettings(max_transcript_tokens=0)
    g = ReplyGrammar(vocab, settings)
    a, b = vocab.encode_text("a")[0], vocab.encode_text("b")[0]
    for token in (a, b):  # text before <-Ins-> is not a transcript
        g.advance(token)
    g.advance(vocab.ins_id)
    for token in (a, b, a):
        assert vocab.res_id in allowed(g, vocab) and a in allowed(g, vocab)
        g.advance(token)
    assert allowed(g, vocab) == {vocab.res_id}  # a looping transcript cannot go on
    with pytest.raises(GrammarViolation):
        g.advance(b)
    g.advance(vocab.res_id)
    for _ in range(5):  # the reply itself is bounded only by the text budget
        assert a in allowed(g, vocab)
        g.advance(a)
    unbounded = ReplyGrammar(vocab, GenerationSettings())
    unbounded.advance(vocab.ins_id)
    for _ in range(20):
        unbounded.advance(a)
    assert b in allowed(unbounded, vocab)


def test_grammar_apply_masks_logits(vocab):
    g = ReplyGrammar(vocab, GenerationSettings())
    g.begin_segment(Modality.IMAGE)
    out = g.apply(torch.zeros(vocab.size))
    rng = vocab.range_of(Modality.IMAGE)
    finite = torch.isfinite(out).nonzero().flatten().tolist()
    assert finite == list(range(rng.first_id, rng.first_id + rng.n_codes)) + [rng.end_id] or set(finite) == (
        set(range(rng.first_id, rng.first_id + rng.n_codes)) | {rng.end_id}
    )
