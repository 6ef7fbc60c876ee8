"""Prints the embedded acoustic decoder's time per chunk when chunks of several sessions are decoded together.

    .venv/bin/python benchmarks/acoustic_batch.py [--threads 2] [--batch-sizes 1 2 4 8] [--repeats 5]
        [--frames 25] [--context 25]

Each session decodes a ``--frames`` chunk (25 = 0.5 s) with ``--context`` frames of context in its own voice of the
embedded voice bank, as a continuing answer does in the engine; a batch of B such chunks goes through
``ChunkedAcousticDecoder.decode_chunks`` (one MaskGIT fill call + one codec decode for the B chunks). Printed per
batch size: milliseconds per batch and per chunk, split into the fill (acoustic model) and the codec (Griffin-Lim),
and how many times faster than real time one chunk is produced. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import time

import torch

from assistant.decoding.maskgit import ChunkedAcousticDecoder, ChunkRequest, UnmaskSchedule
from assistant.models.loading import ModelSpec, load_models
from assistant.models.voices import VoiceBank


def requests(decoder: ChunkedAcousticDecoder, bank: VoiceBank, batch: int, frames: int, context: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(batch):
        prompt = torch.from_numpy(bank.prompt(bank.names[i % len(bank.names)]))
        semantic = torch.randint(0, decoder.codebook_size, (frames,), generator=gen)
        ctx = torch.randint(0, decoder.codebook_size, (decoder.n_q, context), generator=gen) if context else None
        out.append(ChunkRequest(semantic, ctx, prompt, torch.Generator().manual_seed(seed * 100 + i)))
    return out


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, default=25, help="chunk length in 20 ms frames")
    parser.add_argument("--context", type=int, default=25, help="context frames (0 = a first chunk)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_models(ModelSpec(seed=0), ("acoustic", "codec"))
    bank = bundle.voices
    decoder = ChunkedAcousticDecoder(bundle.acoustic, bundle.codec, UnmaskSchedule(), context_frames=args.context)
    chunk_s = args.frames * decoder.hop / decoder.sample_rate
    print(
        f"embedded acoustic decoder: {args.frames}-frame chunks ({chunk_s:.2f} s), {args.context} context frames, "
        f"{bank.prompt().shape[1]}-frame voice prompts, {args.threads} threads, median of {args.repeats}"
    )
    print(f"{'batch':>5} {'ms/batch':>9} {'ms/chunk':>9} {'fill':>7} {'codec':>7} {'x real time':>12}")
    for batch in args.batch_sizes:
        reqs = requests(decoder, bank, batch, args.frames, args.context, seed=batch)
        total = timed(lambda: decoder.decode_chunks(reqs), args.repeats)  # noqa: B023 - called in this iteration
        semantic = torch.stack([r.semantic for r in reqs])
        prompt = torch.stack([r.prompt for r in reqs])
        context = torch.stack([r.context for r in reqs]) if args.context else None
        generators = [r.generator for r in reqs]
        with torch.inference_mode():
            fill = timed(
                lambda: decoder.fill.batch(decoder.model, semantic, prompt, context, generators),  # noqa: B023
                args.repeats,
            )
            codes = decoder.fill.batch(decoder.model, semantic, prompt, context, generators)
            full = codes if context is None else torch.cat([context, codes], dim=2)
            codec = timed(lambda: decoder.codec.decode_batch(full), args.repeats)  # noqa: B023
        per_chunk = total / batch
        print(
            f"{batch:5d} {total * 1000:9.1f} {per_chunk * 1000:9.1f} {fill / batch * 1000:7.1f} "
            f"{codec / batch * 1000:7.1f} {chunk_s / per_chunk:12.1f}"
        )


if __name__ == "__main__":
    main()
