"""``--engine-only``: N simulated speaking sessions through the engine alone (no Ray, no WebRTC), on either family.

What a GPU machine runs to see how many sessions one replica can voice. Each session hands one typed question to
:class:`assistant.pipeline.engine.AssistantEngine` at its start offset; replies are forced to speech of a fixed length
(``--answer-s`` seconds, AnyGPT's 50 level-1 tokens a second: the grammar allows ``<eosp>`` only then), so every
session speaks for the same time whatever the weights say. Outputs flow as in the server: the batched LM engine
streams ids, the acoustic backend decodes chunks (batched across sessions), audio leaves in 20 ms frames.

Per session, from the answer's :class:`~anystream_bench.timeline.AnswerTimeline` (``t0`` = the turn handed to the
engine; there is no endpointing here): TTFA, answer RTF and underruns, defined as for the other modes. From the LM
engine: time to first token and tokens/s of each request (a speaking session needs >= 50), decode steps and their
mean time per batch size, tokens/s in total; from the acoustic backend its batching figures.

Families: ``embedded`` (the committed weights), ``anygpt`` (a weights root, ``--assets-dir``) or ``anygpt-random``:
the AnyGPT 7B layout (``--layers`` shrinks it) with random weights built in memory, a full-size SpeechTokenizer and
SoundStorm, and the AnyGPT vocabulary from the hub layout's ``added_tokens`` order: no files needed.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, is_dataclass, replace
from pathlib import Path
from typing import Any

from anystream_bench.timeline import AnswerTimeline, Thresholds, spread

SPEECH_TOKENS_PER_S = 50  # AnyGPT's level-1 speech rate
QUESTIONS = ("what is the capital of france", "what is two plus three", "what does a dog say", "say hello")


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


class _NumberedText:
    """A stand-in for LLaMA's SentencePiece (32,000 ids) when no tokenizer file exists: text becomes ids by bytes.
    Only prompt lengths matter to the benchmark, not what the words mean to random weights."""

    vocab_size, bos_id, eos_id, unk_id = 32000, 1, 2, 0

    def encode(self, text: str) -> list[int]:
        return [3 + b for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        return bytes(int(i) - 3 for i in ids if 3 <= int(i) < 259).decode("utf-8", "replace")


def anygpt_random_bundle(device: str, dtype: str, layers: int | None, speech_tokens: int):
    """The AnyGPT family's streaming parts at full size with random weights: LLaMA-7B layout LM, SpeechTokenizer,
    SoundStorm (no image or music parts: the benchmark only speaks)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from assistant.decoding.lm_sampler import GenerationSettings, SamplingSettings
    from assistant.decoding.soundstorm_decoding import AnyGPTFill
    from assistant.models.anygpt.lm import anygpt_added_tokens
    from assistant.models.anygpt.loader import torch_dtype
    from assistant.models.anygpt.speech import SpeechTokenizer
    from assistant.models.bundle import ModelBundle
    from assistant.models.soundstorm import SoundStorm, SoundStormConfig
    from assistant.vocab import UnifiedVocab

    reference = Path(__file__).resolve().parents[1] / "tests" / "reference" / "anygpt_llm.json"
    config_dict = json.loads(reference.read_text())["config"]
    if layers:
        config_dict["num_hidden_layers"] = layers
    config = LlamaConfig(**config_dict)
    added = anygpt_added_tokens(first_id=32000)
    vocab = UnifiedVocab(_NumberedText(), added, vocab_size=config.vocab_size, source="anygpt-random")
    half = torch_dtype(dtype)
    with torch.device(device):
        lm = LlamaForCausalLM(config).to(half).eval()
        codec = SpeechTokenizer().eval()  # fp32, as AnyGPT runs it
        acoustic = SoundStorm(SoundStormConfig.anygpt()).to(half).eval()
    # Forced speech of exactly `speech_tokens` codes: the grammar allows <eosp> only then.
    speech = SamplingSettings(
        do_sample=True, temperature=1.0, max_new_tokens=speech_tokens, min_new_tokens=speech_tokens
    )
    generation = GenerationSettings(
        text=SamplingSettings(max_new_tokens=8), speech=speech, max_total_new_tokens=speech_tokens + 4
    )
    return ModelBundle(vocab, lm, generation, codec, acoustic, None, None, acoustic_fill=AnyGPTFill())


def load_speaking_bundle(args: Any, speech_tokens: int):
    """The family's LM, codec and acoustic decoder, with replies forced to exactly ``speech_tokens`` speech codes."""
    if args.family == "anygpt-random":
        return anygpt_random_bundle(args.device, args.dtype, args.layers, speech_tokens)
    from assistant.models.loading import ModelSpec, load_models

    spec = ModelSpec(
        family=args.family, assets_dir=args.assets_dir, device=args.device, dtype=args.dtype, seed=args.seed
    )
    bundle = load_models(spec, ("lm", "codec", "acoustic"))
    speech = replace(bundle.generation.speech, max_new_tokens=speech_tokens, min_new_tokens=speech_tokens)
    bundle.generation = replace(bundle.generation, speech=speech, max_total_new_tokens=speech_tokens + 4)
    return bundle


# ---------------------------------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------------------------------


async def _one_session(
    engine, index: int, offset: float, question: str, thresholds: Thresholds, timeout: float
) -> dict[str, Any]:
    from assistant.pipeline.engine import UserTurn
    from assistant.pipeline.outputs import AudioFrame, TurnError, TurnFinished

    await asyncio.sleep(offset)
    result: dict[str, Any] = {"client": index, "start_offset_s": offset, "status": "ok", "reason": None}
    session = engine.new_session()
    timeline = AnswerTimeline(t0=time.monotonic())
    try:
        async with asyncio.timeout(timeout):
            async for output in session.respond(UserTurn(text=question)):
                if isinstance(output, AudioFrame):
                    timeline.add(time.monotonic(), output.pcm, 16000)
                elif isinstance(output, TurnError):
                    busy = output.code == "unavailable"  # in-process, only a full LM engine refuses
                    result["status"], result["reason"] = ("rejected" if busy else "failed"), output.message
                elif isinstance(output, TurnFinished):
                    result["finish"] = output.reason.value
    except TimeoutError:
        result["status"], result["reason"] = "failed", f"no end of turn within {timeout} s"
    finally:
        await session.close()
    result.update(timeline.figures(thresholds))
    return result


async def _level(bundle, n: int, args: Any, engine_config) -> dict[str, Any]:
    from anystream_bench.load import start_offsets
    from assistant.pipeline.backends import Backends
    from assistant.pipeline.engine import AssistantEngine, EngineConfig
    from assistant.pipeline.local import LocalAcousticBackend, LocalLMBackend, LocalMediaBackend, LocalSpeechEncoder

    lm = LocalLMBackend(bundle, seed=args.seed, engine_config=engine_config)
    lm.engine.warmup()
    acoustic = LocalAcousticBackend(
        bundle, context_frames=args.context_frames, max_batch=args.acoustic_batch, seed=args.seed
    )
    backends = Backends(speech=LocalSpeechEncoder(bundle), lm=lm, acoustic=acoustic, media=LocalMediaBackend(bundle))
    chunking = EngineConfig(
        force_modality="speech",
        first_chunk_frames=args.first_chunk_frames,
        chunk_frames=args.chunk_frames,
        context_frames=args.context_frames,
    )
    engine = AssistantEngine(backends, bundle.vocab, chunking)
    # every frame the engine yields is answer audio: none is skipped as digital silence (see inprocess.py)
    thresholds = Thresholds(args.loud_rms, -1, args.underrun_gap_ms / 1000)
    offsets = start_offsets(n, args.spread, args.ramp, args.seed)
    started = time.monotonic()
    try:
        clients = await asyncio.gather(
            *(
                _one_session(engine, i, offsets[i], QUESTIONS[i % len(QUESTIONS)], thresholds, args.turn_timeout)
                for i in range(n)
            )
        )
    finally:
        wall = time.monotonic() - started
        stats = lm.stats()
        lm.close()
    counters = lm.engine.stats_counters
    requests = list(counters.recent)
    acoustic_stats = getattr(acoustic, "stats", None)
    acoustic_figures = acoustic_stats() if callable(acoustic_stats) else {}
    rates = [r["tokens_per_s"] for r in requests]
    ok = [c for c in clients if c["status"] == "ok"]
    return {
        "sessions": n,
        "mode": "engine",
        "clients": list(clients),
        "summary": {
            "ttfa_s": spread([c["ttfa_s"] for c in ok]),
            "rtf": spread([c["rtf"] for c in ok]),
            "underruns": sum(c["underruns"] for c in ok),
            "sessions_with_underruns": sum(c["underruns"] > 0 for c in ok),
            "first_token_s": spread([r["ttft_s"] for r in requests]),
            "session_tokens_per_s": spread(rates),
            "all_real_time": bool(rates) and all(r is not None and r >= SPEECH_TOKENS_PER_S for r in rates),
            "lm_tokens": stats["tokens"],
            "lm_tokens_per_s": stats["tokens"] / wall if wall > 0 else None,
            "mean_step_s": stats["mean_step_s"],
            "step_ms_by_batch": {
                b: 1000 * t / counters.batch_sizes[b] for b, t in sorted(counters.step_s_by_batch.items())
            },
            "rejected": sum(c["status"] == "rejected" for c in clients),
            "failed": sum(c["status"] == "failed" for c in clients),
            "wall_s": wall,
            "engine_stats": stats,
            "acoustic_stats": asdict(acoustic_figures) if is_dataclass(acoustic_figures) else dict(acoustic_figures),
        },
    }


def run_engine_only(args: Any) -> dict[str, Any]:
    """Every ``args.sessions`` level through a fresh LM engine and acoustic backend; the JSON-ready result."""
    import torch

    from assistant.lm_engine import LMEngineConfig

    torch.set_num_threads(args.threads)
    speech_tokens = int(round(args.answer_s * SPEECH_TOKENS_PER_S))
    t0 = time.monotonic()
    bundle = load_speaking_bundle(args, speech_tokens)
    load_s = time.monotonic() - t0
    levels = []
    for n in args.sessions:
        config = LMEngineConfig(
            max_slots=n, max_waiting=0, slot_capacity=args.slot_capacity, cuda_graphs=not args.no_graphs
        )
        levels.append(asyncio.run(_level(bundle, n, args, config)))
    return {"mode": "engine-only", "family": args.family, "answer_s": args.answer_s, "load_s": load_s, "levels": levels}
