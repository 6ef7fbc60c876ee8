"""Prints the LM's decoding speed: one request through ``TokenStream``, then N concurrent requests through the batched
engine (total and per-request tokens/s, mean decode step per batch size).

    .venv/bin/python benchmarks/lm_decode.py [--threads 2] [--prompt 300] [--tokens 200] [--sessions 1,2,4,8]
                                             [--device cuda] [--dtype float16] [--torch-decode]

``--torch-decode`` runs the engine's CPU decode steps in PyTorch instead of NumPy (``LMEngineConfig.numpy_decode``).
Uses the embedded LM (loaded as every caller loads it, ``assistant.models.loading.load_models``). Figures, not
assertions.
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

from assistant.decoding.lm_sampler import GenerationSettings, SamplingSettings
from assistant.decoding.lm_stream import TokenStream
from assistant.lm_engine import LMEngine, LMEngineConfig
from assistant.models.loading import ModelSpec, load_models


def single_stream(model, vocab, settings, prompt: list[int], tokens: int) -> float:
    stream = TokenStream(model, vocab, settings, seed=0)
    sum(1 for _ in stream.generate(prompt, max_new_tokens=10))  # warm-up
    start = time.perf_counter()
    produced = sum(1 for _ in stream.generate(prompt, max_new_tokens=tokens))
    return produced / (time.perf_counter() - start)


def batched(model, vocab, settings, prompt: list[int], tokens: int, sessions: int, numpy_decode: bool) -> dict:
    engine = LMEngine(
        model,
        vocab,
        settings,
        LMEngineConfig(
            max_slots=sessions, max_waiting=0, slot_capacity=len(prompt) + tokens + 1, numpy_decode=numpy_decode
        ),
    )
    engine.warmup()
    list(engine.submit(prompt, seed=0, max_new_tokens=5).tokens())  # warm-up
    counts = [0] * sessions
    start = time.perf_counter()
    requests = [engine.submit(prompt, seed=i, max_new_tokens=tokens) for i in range(sessions)]

    def read(i: int) -> None:
        counts[i] = sum(1 for _ in requests[i].tokens())

    readers = [threading.Thread(target=read, args=(i,)) for i in range(sessions)]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    elapsed = time.perf_counter() - start
    s = engine.stats_counters
    full = s.batch_sizes.get(sessions, 0)
    step_ms = 1000 * s.step_s_by_batch.get(sessions, 0.0) / full if full else float("nan")
    engine.close()
    rates = [r["tokens_per_s"] for r in list(s.recent)[-sessions:] if r["tokens_per_s"]]
    return {"total": sum(counts) / elapsed, "per_request": min(rates) if rates else float("nan"), "step_ms": step_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=300, help="prompt length in tokens")
    parser.add_argument("--tokens", type=int, default=200, help="tokens each request generates")
    parser.add_argument("--sessions", default="1,2,4,8", help="concurrent requests, comma-separated")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--torch-decode", action="store_true", help="CPU decode steps in PyTorch, not NumPy")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_models(ModelSpec(), ("lm",))
    vocab, config = bundle.vocab, bundle.lm.config
    model = bundle.lm.to(args.device, getattr(torch, args.dtype))
    # Text ids only and no stop: every request generates exactly --tokens tokens.
    greedy = SamplingSettings(do_sample=False, max_new_tokens=args.tokens)
    settings = GenerationSettings(text=greedy)
    prompt = [vocab.bos_id] + [vocab.encode_text("a")[0]] * (args.prompt - 1)
    where = (
        f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}, "
        f"{args.device} {args.dtype}, {args.threads} threads, {'torch' if args.torch_decode else 'NumPy'} CPU steps"
    )
    rate = single_stream(model, vocab, settings, prompt, args.tokens)
    print(f"TokenStream, 1 request      {rate:7.1f} tokens/s ({1000 / rate:5.2f} ms/token), {where}")
    for n in (int(x) for x in args.sessions.split(",")):
        figures = batched(model, vocab, settings, prompt, args.tokens, n, not args.torch_decode)
        print(
            f"LMEngine, {n:3d} requests    {figures['total']:7.1f} tokens/s in total, "
            f"{figures['per_request']:6.1f} per request (slowest), decode step {figures['step_ms']:6.2f} ms"
        )


if __name__ == "__main__":
    main()
