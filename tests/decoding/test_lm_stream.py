import threading
from types import SimpleNamespace

import pytest
import torch
from lm_fixtures import make_tiny_lm

import assistant.decoding.lm_stream as lm_stream
from assistant.decoding.lm_sampler import GenerationSettings, SamplingSettings
from assistant.decoding.lm_stream import TokenStream
from assistant.prompts import ChatPromptBuilder, UserMessage
from assistant.vocab import Modality, TokenKind


@pytest.fixture(scope="module")
def vocab(make_tiny_vocab):
    return make_tiny_vocab(16)


@pytest.fixture(scope="module")
def model(vocab):
    return make_tiny_lm(vocab.size)


def prompt(vocab, force=None):
    return ChatPromptBuilder(vocab).build(None, UserMessage(text="hi"), force_modality=force)


GREEDY = SamplingSettings(do_sample=False, max_new_tokens=50)


class StubModel(torch.nn.Module):
    """Prefers <sosp> after the prompt; inside speech prefers banned tokens, then code 5; after <eosp>, <eos>."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = None
        self.calls = 0

    def forward(self, input_ids, cache=None, use_cache=True, logits_to_keep=0):
        self.calls += 1
        v = self.vocab
        sp = v.range_of(Modality.SPEECH)
        last = int(input_ids[0, -1])
        logits = torch.zeros(1, 1, v.size)
        if last == sp.start_id or sp.contains(last):
            logits[0, 0, v.encode_text("a")[0]] = 20.0  # text inside a segment: must be masked
            logits[0, 0, v.human_id] = 20.0
            logits[0, 0, v.range_of(Modality.IMAGE).first_id] = 20.0  # another modality's code
            logits[0, 0, sp.first_id + 5] = 10.0
        elif last == sp.end_id:
            logits[0, 0, v.eos_id] = 10.0
        else:
            logits[0, 0, sp.start_id] = 10.0
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("slot_runner", [True, False], ids=["slot-runner", "transformers-cache"])
def test_cached_steps_match_full_forward(vocab, model, slot_runner):
    settings = GenerationSettings(text=GREEDY)
    stream = TokenStream(model, vocab, settings, seed=0)
    assert stream._slot_runner  # a LLaMA: the engine's runner is the default
    stream._slot_runner = slot_runner
    recorded, lengths = [], []
    original = stream._forward

    def spy(ids):
        out = original(ids)
        recorded.append(out.clone())
        lengths.append(stream.cached_tokens)
        return out

    stream._forward = spy
    p = prompt(vocab)
    gen = stream.generate(p, max_new_tokens=12)
    tokens = []
    for tok in gen:
        assert stream.has_cache
        tokens.append(tok)
    assert len(tokens) >= 4
    assert lengths == [len(p) + k for k in range(len(recorded))]  # the cache keeps all context
    with torch.no_grad():
        full = model(input_ids=torch.tensor([p + tokens])).logits[0]  # [T, V] uncached
    for k, logits in enumerate(recorded):
        torch.testing.assert_close(logits, full[len(p) - 1 + k], atol=1e-4, rtol=1e-4)
    assert not stream.has_cache


def test_modality_switch_and_grammar_confinement(vocab, monkeypatch):
    text = SamplingSettings(do_sample=False, max_new_tokens=50)
    speech = SamplingSettings(do_sample=False, repetition_penalty=1.05, max_new_tokens=4)
    settings = GenerationSettings(text=text, speech=speech)
    used = []
    real = lm_stream.select_tokens
    monkeypatch.setattr(
        lm_stream,
        "select_tokens",
        lambda logits, states, seen: used.append(states[0].sampling) or real(logits, states, seen),
    )
    stream = TokenStream(StubModel(vocab), vocab, settings, seed=0)
    tokens = list(stream.generate(prompt(vocab)))
    sp = vocab.range_of(Modality.SPEECH)
    code5 = sp.first_id + 5
    assert tokens == [sp.start_id, code5, code5, code5, code5, sp.end_id, vocab.eos_id]
    assert used == [text, speech, speech, speech, speech, speech, text]
    assert all(vocab.classify(t).kind is not TokenKind.INVALID for t in tokens)
    assert not stream.has_cache


def test_force_modality_starts_in_segment(vocab, monkeypatch):
    speech = SamplingSettings(do_sample=False, max_new_tokens=2)
    settings = GenerationSettings(text=GREEDY, speech=speech)
    stream = TokenStream(StubModel(vocab), vocab, settings, seed=0)
    p = prompt(vocab, force=Modality.SPEECH)
    tokens = list(stream.generate(p, force_modality=Modality.SPEECH))
    sp = vocab.range_of(Modality.SPEECH)
    assert tokens == [sp.first_id + 5, sp.first_id + 5, sp.end_id, vocab.eos_id]
    with pytest.raises(ValueError):
        stream.generate(prompt(vocab), force_modality=Modality.SPEECH)


def test_cancel_mid_turn_frees_cache(vocab):
    settings = GenerationSettings(speech=SamplingSettings(do_sample=False, max_new_tokens=1000))
    stub = StubModel(vocab)
    stream = TokenStream(stub, vocab, settings, seed=0)
    cancel = threading.Event()
    tokens = []
    for tok in stream.generate(prompt(vocab), cancel=cancel):
        tokens.append(tok)
        assert stream.has_cache
        if len(tokens) == 3:
            cancel.set()
    assert len(tokens) == 3
    assert not stream.has_cache
    assert stub.calls == 3  # no forward pass after cancellation


def test_close_frees_cache(vocab, model):
    stream = TokenStream(model, vocab, GenerationSettings(text=GREEDY), seed=0)
    gen = stream.generate(prompt(vocab), max_new_tokens=20)
    next(gen)
    assert stream.has_cache
    gen.close()
    assert not stream.has_cache
    assert stream._cache is None
    # the object can run again afterwards
    assert len(list(stream.generate(prompt(vocab), max_new_tokens=3))) <= 3


def test_max_new_tokens_and_seed_determinism(vocab, model):
    settings = GenerationSettings(text=SamplingSettings(temperature=1.0, max_new_tokens=100))
    p = prompt(vocab)
    a = list(TokenStream(model, vocab, settings, seed=123).generate(p, max_new_tokens=15))
    b = list(TokenStream(model, vocab, settings, seed=123).generate(p, max_new_tokens=15))
    assert a == b and 1 <= len(a) <= 15
    assert not torch.is_inference_mode_enabled()  # the mode does not leak to the consumer


def test_invalid_prompt_rejected(vocab, model):
    stream = TokenStream(model, vocab, GenerationSettings(), seed=0)
    with pytest.raises(ValueError):
        stream.generate([vocab.size + 1])
    with pytest.raises(ValueError):
        stream.generate([])
