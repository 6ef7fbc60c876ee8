"""The shared token-choice strategy: per-row settings in one batched call, and counter-based randomness that makes
a row's draws independent of what else is in its batch."""

import math

import pytest
import torch

from assistant.decoding.lm_sampler import GenerationSettings, SamplingSettings
from assistant.decoding.reply_sampling import ReplyState, _top_k_top_p, select_tokens
from assistant.vocab import Modality


@pytest.fixture(scope="module")
def vocab(make_tiny_vocab):
    return make_tiny_vocab(8)


def _state(vocab, seed=0, **text):
    return ReplyState(vocab, GenerationSettings(text=SamplingSettings(**text)), seed=seed)


def _text_logits(vocab, rows, seed=0):
    logits = torch.randn(rows, vocab.size, generator=torch.Generator().manual_seed(seed))
    return logits


def test_greedy_penalty_and_grammar_per_row(vocab):
    a, b = vocab.encode_text("a")[0], vocab.encode_text("b")[0]
    logits = torch.full((2, vocab.size), -5.0)
    logits[:, a], logits[:, b] = 2.0, 1.5
    logits[:, vocab.range_of(Modality.SPEECH).first_id] = 9.0  # a raw code outside a segment: masked
    seen = torch.zeros(2, vocab.size, dtype=torch.bool)
    seen[:, a] = True
    plain = _state(vocab, do_sample=False)
    penalised = _state(vocab, do_sample=False, repetition_penalty=2.0)  # 2.0 / 2 = 1.0 < 1.5
    assert select_tokens(logits, [plain, penalised], seen).tolist() == [a, b]


def test_top_k_and_top_p_per_row():
    z = torch.log(torch.tensor([[0.1, 0.6, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1]]))
    kept = torch.isfinite(_top_k_top_p(z, [2, 0, 0], [1.0, 0.5, 1.0]))
    assert kept.tolist() == [[False, True, True, False], [False, True, False, False], [True] * 4]


@pytest.mark.slow  # thousands of draws: tens of seconds
def test_sampling_follows_the_softmax_distribution(vocab):
    """Gumbel-max with the counter noise draws from softmax(logits / T): frequencies over many steps match."""
    probs = torch.tensor([0.5, 0.3, 0.2])
    ids = vocab.encode_text("abc")
    logits = torch.full((1, vocab.size), -float("inf"))
    logits[0, ids] = torch.log(probs)
    state = _state(vocab, seed=7, do_sample=True, max_new_tokens=10_000)
    seen = torch.zeros(1, vocab.size, dtype=torch.bool)
    counts = torch.zeros(3)
    n = 3000
    for step in range(n):
        state.steps = step  # advance the random stream only (the grammar does not matter here)
        counts[ids.index(int(select_tokens(logits, [state], seen)[0]))] += 1
    tolerance = 4 * math.sqrt(0.25 / n)
    assert torch.allclose(counts / n, probs, atol=tolerance)


def test_a_rows_draw_does_not_depend_on_its_batch(vocab):
    """Same seed and step: the same token alone, in a batch, in another row order, among greedy rows."""
    logits = _text_logits(vocab, 4)
    seen = torch.zeros(4, vocab.size, dtype=torch.bool)
    states = [_state(vocab, seed=s, do_sample=True, temperature=1.5) for s in (11, 12, 13)]
    states.append(_state(vocab, do_sample=False))
    together = select_tokens(logits, states, seen).tolist()
    alone = [int(select_tokens(logits[i : i + 1], [states[i]], seen[i : i + 1])[0]) for i in range(4)]
    order = [2, 0, 3, 1]
    shuffled = select_tokens(logits[order], [states[i] for i in order], seen[order]).tolist()
    assert together == alone
    assert [together[i] for i in order] == shuffled
    # a different seed or step changes the draw somewhere over a few tries; the same one never does
    other = [
        int(select_tokens(logits[:1], [_state(vocab, seed=100 + k, do_sample=True, temperature=1.5)], seen[:1])[0])
        for k in range(8)
    ]
    assert len(set(other)) > 1


def test_state_switches_settings_after_a_start_marker(vocab):
    speech = SamplingSettings(do_sample=False, repetition_penalty=1.05, max_new_tokens=4)
    state = ReplyState(vocab, GenerationSettings(speech=speech), seed=0)
    assert state.modality is Modality.TEXT
    sp = vocab.range_of(Modality.SPEECH)
    state.advance(sp.start_id)
    assert state.modality is Modality.SPEECH and state.sampling == speech
    state.advance(sp.first_id)
    state.advance(sp.end_id)
    assert state.modality is Modality.TEXT and state.steps == 3
