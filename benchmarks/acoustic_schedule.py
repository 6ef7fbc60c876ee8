"""Prints what fewer unmasking passes buy and cost in the embedded acoustic decoder: intelligibility and time per call.

    .venv/bin/python benchmarks/acoustic_schedule.py [--sentences 100] [--steps 3,2,1]

The sentences are the spoken replies of ``make eval-mini``'s dialogues, read by the assistant's voice with espeak-ng;
the codec's level-1 codes of each (what a perfect LM would generate) go through ``ChunkedAcousticDecoder`` in the
engine's chunk sizes (10, 20, 25, ... frames, each chunk with the one before as context) in the default voice, once
per MaskGIT schedule (``UnmaskSchedule.level2_steps``; levels 3..n_q always take one greedy pass each). The judge of
``make eval-mini`` (pocketsphinx, forced choice among the set's sentences) scores each decoded reply; the espeak
original and the codec's round trip of all eight levels are the ceilings. Time: median wall time of a segment's first
call (no context) and of the later ones, one thread. Figures, not assertions; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from assistant.decoding.maskgit import ChunkedAcousticDecoder, MaskGitFill, UnmaskSchedule
from assistant.models.loading import ModelSpec, load_models
from assistant.pipeline.chunking import SpeechChunker
from assistant.pipeline.engine import EngineConfig
from training import domain, voices
from training.evaluate import EvalPlan
from training.judges.speech import SentenceJudge


def reply_sentences(count: int) -> tuple[list[str], SentenceJudge]:
    plan = EvalPlan()
    dialogues = domain.generate_dialogues(
        plan.per_family * len(domain.FAMILIES), seed=plan.seed, voices=voices.HELDOUT_VOICES, families=domain.FAMILIES
    )
    replies = sorted({reply.text for dialogue in dialogues for _, reply in dialogue.turns})
    picked = np.random.default_rng(0).choice(len(replies), size=min(count, len(replies)), replace=False)
    return [replies[i] for i in sorted(picked)], SentenceJudge(domain.spoken_sentences(dialogues))


def chunks_of(semantic: list[int], engine: EngineConfig) -> list[np.ndarray]:
    chunker = SpeechChunker(engine.first_chunk_frames, engine.chunk_frames)
    chunks = [chunk for chunk in (chunker.push(code) for code in semantic) if chunk is not None]
    rest = chunker.flush()
    return chunks + ([rest] if rest is not None else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=100)
    parser.add_argument("--steps", default="3,2,1", help="level-2 MaskGIT steps to compare, comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = ModelSpec(family="embedded")
    bundle = load_models(spec, ("acoustic", "codec"))
    assert bundle.acoustic is not None and bundle.codec is not None and bundle.voices is not None
    prompt = torch.from_numpy(bundle.voices.prompt())  # [n_q, Tp], the default voice
    sentences, judge = reply_sentences(args.sentences)
    engine = EngineConfig()
    replies = []
    for text in sentences:
        wave = voices.synthesize(text, voices.ASSISTANT_VOICE)
        codes = bundle.codec.encode(torch.from_numpy(wave).float())  # [n_q, T]
        replies.append((text, wave, codes))
    print(
        f"{len(replies)} replies, {sum(c.shape[-1] for *_, c in replies) / 50:.1f} s of speech; chunks of "
        f"{engine.first_chunk_frames} frames doubling to {engine.chunk_frames}"
    )
    print(f"{'decoded by':<28} {'judged right':>12} {'first call (ms)':>16} {'later calls (ms)':>17}")
    original = sum(judge.is_correct(wave, text) for text, wave, _ in replies)
    print(f"{'espeak (the original)':<28} {original:>8}/{len(replies):<3}")
    round_trip = sum(judge.is_correct(bundle.codec.decode(codes).numpy(), text) for text, _, codes in replies)
    print(f"{'codec, all levels given':<28} {round_trip:>8}/{len(replies):<3}")
    for steps in (int(s) for s in args.steps.split(",")):
        schedule = UnmaskSchedule(level2_steps=steps)
        decoder = ChunkedAcousticDecoder(bundle.acoustic, bundle.codec, fill=MaskGitFill(schedule))
        right, first_calls, later_calls = 0, [], []
        for index, (text, _, codes) in enumerate(replies):
            generator = torch.Generator().manual_seed(index)
            context, waves = None, []
            for position, chunk in enumerate(chunks_of(codes[0].tolist(), engine)):
                started = time.perf_counter()
                context, wave = decoder.decode_chunk(torch.from_numpy(chunk), context, prompt, generator)
                (later_calls if position else first_calls).append(time.perf_counter() - started)
                waves.append(wave.numpy())
            right += judge.is_correct(np.concatenate(waves), text)
        label = f"{steps} level-2 steps ({schedule.forward_passes(decoder.n_q)} passes)"
        print(
            f"{label:<28} {right:>8}/{len(replies):<3} {1000 * np.median(first_calls):>16.1f} "
            f"{1000 * np.median(later_calls):>17.1f}"
        )


if __name__ == "__main__":
    main()
