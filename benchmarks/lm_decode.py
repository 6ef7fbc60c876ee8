"""Prints the LM's decoding speed (tokens/s) with the lean KV loop and with transformers' own cached forward.

    .venv/bin/python benchmarks/lm_decode.py [--threads 2] [--prompt 300] [--tokens 200]

Uses the embedded LM config (trained weights when they load, else seeded random ones: speed does not depend on
the values). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import time

import torch

from assistant.decoding.lm_sampler import GenerationSettings, SamplingSettings
from assistant.decoding.lm_stream import TokenStream
from assistant.models.bundle import EMBEDDED_DIR
from assistant.models.lm import LMConfig, build_lm
from assistant.vocab import UnifiedVocab


def tokens_per_second(stream: TokenStream, prompt: list[int], tokens: int) -> float:
    start = time.perf_counter()
    produced = sum(1 for _ in stream.generate(prompt, max_new_tokens=tokens))
    return produced / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=300, help="prompt length in tokens")
    parser.add_argument("--tokens", type=int, default=200, help="tokens to generate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vocab = UnifiedVocab.embedded()
    config = LMConfig.from_json(EMBEDDED_DIR / "lm.json")
    model = build_lm(config, seed=0)
    # Text ids only and no stop: every run generates exactly --tokens tokens.
    greedy = SamplingSettings(do_sample=False, max_new_tokens=args.tokens)
    settings = GenerationSettings(text=greedy)
    prompt = [vocab.bos_id] + [vocab.encode_text("a")[0]] * (args.prompt - 1)
    for lean in (True, False):
        stream = TokenStream(model, vocab, settings, seed=0)
        stream._lean = lean
        tokens_per_second(stream, prompt, 10)  # warm-up
        rate = tokens_per_second(stream, prompt, args.tokens)
        name = "lean KV loop" if lean else "transformers forward"
        print(f"{name:22s} {rate:7.1f} tokens/s ({1000 / rate:5.2f} ms/token), {config.num_layers} layers, "
              f"hidden {config.hidden_size}, vocab {config.vocab_size}, {args.threads} threads")


if __name__ == "__main__":
    main()
