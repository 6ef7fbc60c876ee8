"""Prints time to first audio, real-time factor and frame pacing of one spoken turn through the in-process engine.

    .venv/bin/python benchmarks/engine_latency.py [--input question.wav] [--turns 3]
    .venv/bin/python benchmarks/engine_latency.py --family anygpt --assets /models/anygpt --device cuda

Without --input it speaks a question with espeak-ng. Figures, not assertions: targets live here, not in unit tests.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from assistant.audio import OUTPUT_FRAME_MS, SAMPLE_RATE, read_wav
from assistant.models.loading import DTYPES, MODEL_FAMILIES, ModelSpec, load_backends, load_vocab_and_voices
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.pipeline.outputs import AudioFrame, TurnFinished


def spoken_question() -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed; pass --input")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.wav"
        subprocess.run(["espeak-ng", "-w", str(path), "what is two plus three"], check=True)
        return read_wav(path)


async def one_turn(session, audio: np.ndarray) -> dict:
    start = time.perf_counter()
    first_audio = None
    frames = 0
    reason = None
    async for out in session.respond(UserTurn(audio=audio)):
        if isinstance(out, AudioFrame):
            frames += 1
            if first_audio is None:
                first_audio = time.perf_counter() - start
        elif isinstance(out, TurnFinished):
            reason = out.reason.value
    wall = time.perf_counter() - start
    audio_s = frames * OUTPUT_FRAME_MS / 1000
    return {
        "first_audio_s": first_audio,
        "wall_s": wall,
        "audio_s": audio_s,
        "rtf": wall / audio_s if audio_s else None,
        "reason": reason,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--family", choices=MODEL_FAMILIES, default="embedded")
    parser.add_argument("--assets", help="embedded assets folder (default: the package's own) or the AnyGPT root")
    parser.add_argument("--lm-dir", default="AnyGPT-chat")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: float16 on CUDA, float32 elsewhere")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    spec = ModelSpec(
        family=args.family, assets_dir=args.assets, seed=args.seed, lm_dir=args.lm_dir, dtype=dtype, device=args.device
    )
    audio = read_wav(args.input) if args.input else spoken_question()
    t0 = time.perf_counter()
    backends = load_backends(spec)
    vocab, voices = load_vocab_and_voices(spec)
    print(f"{spec.family} models loaded in {time.perf_counter() - t0:.2f} s (torch threads: {torch.get_num_threads()})")
    engine = AssistantEngine(backends, vocab, EngineConfig(), voices=voices)
    session = engine.new_session()
    print(f"question: {audio.size / SAMPLE_RATE:.2f} s of speech")
    print(f"{'turn':>4} {'first audio (s)':>16} {'answer (s)':>11} {'wall (s)':>9} {'RTF':>6}  finish")
    for turn in range(1, args.turns + 1):
        r = await one_turn(session, audio)
        rtf = f"{r['rtf']:.2f}" if r["rtf"] else "-"
        first = f"{r['first_audio_s']:.3f}" if r["first_audio_s"] is not None else "-"
        print(f"{turn:>4} {first:>16} {r['audio_s']:>11.2f} {r['wall_s']:>9.2f} {rtf:>6}  {r['reason']}")
    await session.close()
    close_lm = getattr(backends.lm, "close", None)  # the batched LM engine's thread
    if close_lm is not None:
        close_lm()


if __name__ == "__main__":
    asyncio.run(main())
