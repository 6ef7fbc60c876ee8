"""The batched LM engine: a session's tokens do not depend on who shares its steps; joining, leaving, cancelling,
admission and backpressure between steps."""

import asyncio
import threading

import pytest

from assistant.decoding.lm_stream import TokenStream
from assistant.lm_engine import BusyError, LMEngine, LMEngineConfig
from assistant.lm_engine.scheduler import PrefillBlock, ScheduledRequest, Scheduler
from assistant.vocab import Modality

TIMEOUT = 60


@pytest.fixture
def make_engine(model, vocab, settings):
    engines = []

    def make(**config):
        engine = LMEngine(model, vocab, settings, LMEngineConfig(**config))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def _run(request):
    return list(request.tokens(timeout=TIMEOUT))


@pytest.mark.slow  # > 1.5 s
def test_batched_equals_alone_equals_the_single_stream(make_engine, model, vocab, settings, prompts):
    seeds = [5, 6, 7, 8, 9]
    alone_engine = make_engine(max_slots=4)
    alone = [_run(alone_engine.submit(p, seed=s)) for p, s in zip(prompts, seeds, strict=True)]
    assert len({tuple(t) for t in alone}) == len(alone)  # different prompts and seeds: different replies

    batched_engine = make_engine(max_slots=4, max_waiting=4)  # five requests, four slots: one waits for a slot
    requests = [batched_engine.submit(p, seed=s) for p, s in zip(prompts, seeds, strict=True)]
    batched = [_run(r) for r in requests]
    assert batched == alone
    assert max(batched_engine.stats_counters.batch_sizes) > 1  # they really shared steps

    single = [
        list(TokenStream(model, vocab, settings, seed=s).generate(p)) for p, s in zip(prompts, seeds, strict=True)
    ]
    assert single == alone


def test_forced_modality_and_length_limit(make_engine, vocab, prompts):
    from assistant.prompts import ChatPromptBuilder, UserMessage

    engine = make_engine(max_slots=2)
    forced = ChatPromptBuilder(vocab).build(None, UserMessage(text="say hi"), force_modality=Modality.SPEECH)
    tokens = _run(engine.submit(forced, force_modality=Modality.SPEECH, seed=1))
    speech = vocab.range_of(Modality.SPEECH)
    assert speech.contains(tokens[0])  # it starts inside the forced segment
    limited = engine.submit(prompts[0], seed=1, max_new_tokens=3)
    assert len(_run(limited)) <= 3 and limited.finish_reason in ("length", "stop")
    with pytest.raises(ValueError, match="start marker"):
        engine.submit(prompts[0], force_modality=Modality.SPEECH)
    with pytest.raises(ValueError, match="no room"):
        engine.submit([vocab.bos_id] * engine.capacity)
    with pytest.raises(ValueError):
        engine.submit([vocab.size + 3])


class RecordingRunner:
    """Wraps the engine's runner to log its calls (and optionally run code between steps)."""

    def __init__(self, engine, between_steps=None):
        self.runner = engine.runner
        self.calls = []
        self.between_steps = between_steps
        real_prefill, real_decode = self.runner.prefill, self.runner.decode

        def prefill(slot, ids, start):
            self.calls.append(("prefill", slot, int(ids.shape[0])))
            return real_prefill(slot, ids, start)

        def decode(tokens, positions, span=None):
            self.calls.append(("decode", int(tokens.shape[0])))
            if self.between_steps is not None:
                self.between_steps(len([c for c in self.calls if c[0] == "decode"]))
            return real_decode(tokens, positions, span)

        self.runner.prefill, self.runner.decode = prefill, decode


def test_join_mid_generation_with_chunked_prefill(make_engine, vocab, prompts):
    """B joins while A generates: B's long prompt is prefilled in budget-sized blocks with A's decode steps in
    between, and both replies equal their solo runs."""
    solo = make_engine(max_slots=2)
    long_prompt = prompts[2]  # about 150 ids: many blocks of 8
    a_alone = _run(solo.submit(prompts[0], seed=1, max_new_tokens=60))
    b_alone = _run(solo.submit(long_prompt, seed=2))

    engine = make_engine(max_slots=2, prefill_budget=8)
    joined = threading.Event()
    b = {}

    def join_at_step(n):
        if n == 3 and not joined.is_set():
            b["request"] = engine.submit(long_prompt, seed=2)
            joined.set()

    recorder = RecordingRunner(engine, between_steps=join_at_step)
    a = engine.submit(prompts[0], seed=1, max_new_tokens=60)
    a_tokens = _run(a)
    assert joined.wait(TIMEOUT)
    assert _run(b["request"]) == b_alone
    assert a_tokens == a_alone
    b_prefills = [i for i, c in enumerate(recorder.calls) if c[0] == "prefill" and c[1] == 1]
    assert len(b_prefills) == -(-len(long_prompt) // 8)  # ceil: blocks of at most the budget
    assert all(recorder.calls[i][2] <= 8 for i in b_prefills)
    between = recorder.calls[b_prefills[0] : b_prefills[-1]]
    assert sum(c[0] == "decode" for c in between) >= len(b_prefills) - 1  # A kept stepping meanwhile


def test_cancel_frees_the_slot_by_the_next_step(make_engine, prompts):
    engine = make_engine(max_slots=1, max_waiting=0)
    a = engine.submit(prompts[0], seed=1, max_new_tokens=60)
    stream = a.tokens(timeout=TIMEOUT)
    next(stream)
    with pytest.raises(BusyError):
        engine.submit(prompts[1], seed=2)  # the only slot is taken, no waiting place
    steps_at_cancel = engine.stats()["steps"]
    a.cancel()
    rest = list(stream)  # ends: whatever was generated before the cancel was seen, then nothing
    assert a.finish_reason == "cancelled"
    assert engine.stats()["steps"] - steps_at_cancel <= 1
    assert engine.stats()["active_slots"] == 0
    b = engine.submit(prompts[1], seed=2)  # the slot is free again
    assert _run(b)
    assert len(rest) <= 1 + engine.config.max_backlog
    stats = engine.stats()
    assert stats["rejected"] == 1 and stats["cancelled"] == 1 and stats["completed"] == 1


def test_admission_counts_waiting_places(make_engine, prompts):
    engine = make_engine(max_slots=1, max_waiting=1)
    first = engine.submit(prompts[0], seed=1, max_new_tokens=50)
    second = engine.submit(prompts[1], seed=2, max_new_tokens=5)
    with pytest.raises(BusyError, match="slots"):
        engine.submit(prompts[2], seed=3)
    assert _run(first) and _run(second)
    assert engine.stats()["waiting"] == 0


def test_a_slow_reader_pauses_only_its_own_request(make_engine, prompts):
    engine = make_engine(max_slots=2, max_backlog=3)
    slow = engine.submit(prompts[0], seed=1, max_new_tokens=50)
    fast = engine.submit(prompts[1], seed=2, max_new_tokens=50)
    fast_tokens = _run(fast)  # many steps run while nobody reads `slow`
    assert len(fast_tokens) > 3
    assert slow.generated == 3 and slow.paused
    slow_tokens = _run(slow)  # reading resumes it
    assert len(slow_tokens) > 3 or slow.finish_reason == "stop"


def test_async_chunks_and_closing_the_reader(make_engine, prompts):
    engine = make_engine(max_slots=2)

    async def main():
        request = engine.submit(prompts[0], seed=1, max_new_tokens=50)
        got = []
        async for chunk in request.chunks():
            assert chunk
            got.extend(chunk)
        other = engine.submit(prompts[1], seed=2, max_new_tokens=50)
        async for _ in other.chunks():
            other.cancel()
            break
        return got, other

    got, other = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert got == _run(engine.submit(prompts[0], seed=1, max_new_tokens=50))
    list(other.tokens(timeout=TIMEOUT))  # ends once the engine has dropped it
    assert other.finish_reason == "cancelled"


def test_close_ends_waiting_readers(make_engine, prompts):
    engine = make_engine(max_slots=1, max_backlog=1)
    request = engine.submit(prompts[0], seed=1, max_new_tokens=50)
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        list(request.tokens(timeout=TIMEOUT))
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(prompts[0])


def test_scheduler_blocks_respect_the_budget_and_slots_go_lowest_first():
    scheduler = Scheduler(max_slots=3, max_waiting=0, prefill_budget=10)
    a, b, c = (ScheduledRequest(prompt=[1] * n) for n in (4, 15, 3))
    for r in (a, b, c):
        scheduler.add(r)
    with pytest.raises(BusyError):
        scheduler.add(ScheduledRequest(prompt=[1]))
    scheduler.admit()
    assert [r.slot for r in (a, b, c)] == [0, 1, 2]
    blocks = scheduler.next_prefill_blocks()
    assert [(blk.request, blk.start, blk.stop) for blk in blocks] == [(a, 0, 4), (b, 0, 6)]
    for blk in blocks:
        scheduler.prefilled(blk)
    assert a.next_position == 4 and scheduler.decode_rows() == [a]
    scheduler.remove(a)
    assert a.slot is None
    d = ScheduledRequest(prompt=[1, 2])
    scheduler.add(d)
    scheduler.admit()
    assert d.slot == 0  # the lowest free slot
    assert isinstance(scheduler.next_prefill_blocks()[0], PrefillBlock)


def test_a_full_backlog_resumes_when_read_even_if_it_filled_within_one_step(make_engine, prompts):
    """The reader drains a backlog that filled up during the engine's last step (before the engine marked it
    paused): the engine must be woken, not left waiting for a reader that already read."""
    engine = make_engine(max_slots=1, max_backlog=1)
    request = engine.submit(prompts[0], seed=1, max_new_tokens=20)
    tokens = list(request.tokens(timeout=TIMEOUT))  # one token per wake-up: hangs (times out) if a wake-up is lost
    assert len(tokens) == request.generated and request.finish_reason in ("stop", "length")


def test_engines_left_running_are_closed_at_exit(make_engine, prompts):
    """A loop thread still parked when the interpreter exits can abort it (status 134, seen with an unclosed backend):
    the exit hook closes every running engine and joins its thread."""
    from assistant.lm_engine import engine as engine_module

    engine = make_engine(max_slots=1)
    assert _run(engine.submit(prompts[0], seed=1, max_new_tokens=5))
    assert engine._thread.is_alive() and engine in engine_module._RUNNING
    engine_module._close_running_engines()
    assert not engine._thread.is_alive() and engine not in engine_module._RUNNING
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(prompts[0])


def test_numpy_and_torch_decode_steps_give_the_same_tokens(make_engine, prompts):
    """Same seeds, same tokens, whichever CPU step computes the logits (sampled settings, batched rows)."""
    seeds = [5, 6, 7, 8, 9]
    fast = make_engine(max_slots=4, max_waiting=4, numpy_decode=True)
    plain = make_engine(max_slots=4, max_waiting=4, numpy_decode=False)
    assert fast.runner.uses_numpy_decode and not plain.runner.uses_numpy_decode
    fast_requests = [fast.submit(p, seed=s) for p, s in zip(prompts, seeds, strict=True)]
    plain_requests = [plain.submit(p, seed=s) for p, s in zip(prompts, seeds, strict=True)]
    assert [_run(r) for r in fast_requests] == [_run(r) for r in plain_requests]


def test_the_scheduler_reuses_the_longest_held_prefix_in_the_lowest_free_slot():
    scheduler = Scheduler(max_slots=3, max_waiting=0, prefill_budget=100, reuse_min_tokens=4)
    a, b = ScheduledRequest(prompt=list(range(10))), ScheduledRequest(prompt=[50 + i for i in range(10)])
    for r in (a, b):
        scheduler.add(r)
    scheduler.admit()
    for blk in scheduler.next_prefill_blocks():
        scheduler.prefilled(blk)
    scheduler.remove(b, held=b.prompt + [60, 61])  # slot 1 holds b's prompt and two reply tokens
    scheduler.remove(a, held=a.prompt[:3])  # too short to keep
    follow_up = ScheduledRequest(prompt=b.prompt + [60, 61, 99, 98])
    scheduler.add(follow_up)
    scheduler.admit()
    # the lowest free slot, with slot 1's 12 tokens to copy into it; 2 left to prefill
    assert (follow_up.slot, follow_up.reuse_from, follow_up.reused, follow_up.prefilled) == (0, 1, 12, 12)
    assert [(blk.start, blk.stop) for blk in scheduler.next_prefill_blocks()] == [(12, 14)]

    same = ScheduledRequest(prompt=b.prompt + [60, 61])  # all of it held: one token is still prefilled for logits
    scheduler.add(same)
    scheduler.admit()
    assert (same.slot, same.reuse_from, same.reused) == (1, None, 11)  # slot 1 itself: nothing to copy

    other = ScheduledRequest(prompt=[7] * 20)  # nothing in common
    scheduler.add(other)
    scheduler.admit()
    assert (other.slot, other.reuse_from, other.reused, other.prefilled) == (2, None, 0, 0)

    # A slot handed to a request loses what it held; reuse off keeps nothing.
    scheduler.remove(other, held=[])
    assert Scheduler(max_slots=1, max_waiting=0, prefill_budget=10)._longest_held_prefix(list(range(9))) == (None, 0)


def test_a_follow_up_turn_reuses_the_conversation_and_gives_the_same_tokens(make_engine, prompts):
    """Turn 2's prompt starts with turn 1's prompt and reply: their KV is copied from the slot turn 1 left (not
    prefilled again), and turn 2 generates what an engine without reuse generates."""
    reusing = make_engine(max_slots=3, max_waiting=2, prefix_reuse_min_tokens=8)
    plain = make_engine(max_slots=3, max_waiting=2, prefix_reuse_min_tokens=0)
    replies = {}
    for name, engine in (("reusing", reusing), ("plain", plain)):
        # a long unrelated request holds slot 0 while turn 1 runs in slot 1, then both end
        other = engine.submit(prompts[4], seed=3, max_new_tokens=30)
        first = engine.submit(prompts[0], seed=4, max_new_tokens=15)
        turn1 = _run(first)
        _run(other)
        assert first.slot is None and len(turn1) > 1
        follow_up = prompts[0] + turn1 + prompts[2][-6:]
        before = engine.stats_counters.prefill_tokens
        second = engine.submit(follow_up, seed=5, max_new_tokens=20)
        replies[name] = (turn1, _run(second), engine.stats_counters.prefill_tokens - before, second.reuse_from)
    assert replies["reusing"][:2] == replies["plain"][:2]
    assert replies["reusing"][3] == 1  # copied from the slot turn 1 left into the lowest free one (0)
    assert replies["plain"][3] is None
    held = len(prompts[0]) + len(replies["reusing"][0]) - 1  # turn 1's last token was chosen, never fed back
    assert reusing.stats_counters.reused_tokens == held
    assert replies["reusing"][2] == len(prompts[0]) + len(replies["reusing"][0]) + 6 - held
    assert replies["plain"][2] == len(prompts[0]) + len(replies["plain"][0]) + 6
    assert plain.stats_counters.reused_tokens == 0


def test_a_prefill_only_request_leaves_its_kv_for_the_turn_that_starts_the_same_way(make_engine, prompts):
    """``max_new_tokens=0`` prefills and ends without a token; the turn asked next with a longer prompt that shares
    its start prefills only the rest, and generates what an engine that never prefilled generates."""
    reusing = make_engine(max_slots=2, max_waiting=2, prefix_reuse_min_tokens=8)
    plain = make_engine(max_slots=2, max_waiting=2, prefix_reuse_min_tokens=8)
    early = prompts[2][:-3]  # the question so far
    prefill = reusing.submit(early, max_new_tokens=0)
    assert _run(prefill) == [] and prefill.finish_reason == "prefilled" and prefill.slot is None
    assert reusing.stats_counters.prefill_tokens == len(early) and reusing.stats_counters.tokens == 0
    turn = reusing.submit(prompts[2], seed=6, max_new_tokens=12)
    reply = _run(turn)
    assert reusing.stats_counters.reused_tokens == len(early)
    assert reusing.stats_counters.prefill_tokens == len(prompts[2])  # the rest only
    assert reply == _run(plain.submit(prompts[2], seed=6, max_new_tokens=12)) and len(reply) > 1
    with pytest.raises(ValueError):
        reusing.submit(early, max_new_tokens=-1)
