"""GPU smoke test of the AnyGPT family at full size with random weights in fp16: memory and speed figures.

Skipped without CUDA. Run on a GPU machine with ``pytest -m gpu -s tests/models/test_anygpt_gpu.py``; it prints
the memory each part takes and how fast the streaming path runs (LM tokens per second, SoundStorm per 0.5 s chunk
with AnyGPT's 10-pass loop, SpeechTokenizer decoding), for the issue's notes.
"""

import json
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

REFERENCE = Path(__file__).resolve().parents[1] / "reference"


def _gib() -> float:
    return torch.cuda.memory_allocated() / 2**30


def _timed(fn, repeat: int = 5) -> float:
    fn()  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


@torch.inference_mode()
def test_full_size_parts_fit_and_stream_in_half_precision():
    from transformers import LlamaConfig, LlamaForCausalLM

    from assistant.decoding.maskgit import ChunkedAcousticDecoder
    from assistant.decoding.soundstorm_decoding import AnyGPTFill
    from assistant.lm_engine.model_runner import SlotModelRunner
    from assistant.models.anygpt.speech import SpeechTokenizer
    from assistant.models.soundstorm import SoundStorm, SoundStormConfig

    figures: dict[str, float] = {}
    device = torch.device("cuda")
    torch.manual_seed(0)

    base = _gib()
    codec = SpeechTokenizer().to(device).eval()  # fp32, as AnyGPT runs it
    figures["speechtokenizer_gib"] = _gib() - base

    base = _gib()
    with torch.device(device):
        soundstorm = SoundStorm(SoundStormConfig.anygpt()).half().eval()
    figures["soundstorm_gib"] = _gib() - base

    base = _gib()
    config = LlamaConfig(**json.loads((REFERENCE / "anygpt_llm.json").read_text())["config"])
    with torch.device(device):
        lm = LlamaForCausalLM(config).half().eval()
    figures["lm_gib"] = _gib() - base

    # LM: prefill a 300-token prompt into slot 0 of the engine's runner, then one token at a time. Eager (the
    # single-request TokenStream path) and captured as a CUDA graph (the batched engine's step at batch 1).
    prompt = torch.randint(0, 32000, (300,), device=device)
    steps = 100
    for graphs in (False, True):
        runner = SlotModelRunner(lm, max_slots=1, capacity=512, cuda_graphs=graphs)
        runner.prefill(0, prompt, 0)
        position = torch.tensor([300], device=device)
        runner.decode(torch.tensor([40198], device=device), position)  # warm-up / capture
        torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(steps):
            runner.decode(torch.tensor([40198 + i % 1024], device=device), position + 1 + i)
        torch.cuda.synchronize()
        figures[f"lm_ms_per_token_{'graph' if graphs else 'eager'}"] = (time.perf_counter() - start) / steps * 1000
        figures["lm_with_cache_gib"] = _gib()
        del runner

    # SoundStorm + SpeechTokenizer: a 25-frame (0.5 s) chunk with a 3 s voice prompt and 25 frames of context
    chunked = ChunkedAcousticDecoder(soundstorm, codec, context_frames=25, fill=AnyGPTFill())
    semantic = torch.randint(0, 1024, (25,))
    context = torch.randint(0, 1024, (8, 25))
    voice = torch.randint(0, 1024, (8, 150))
    seconds = _timed(lambda: chunked.decode_chunk(semantic, context, voice))
    figures["acoustic_chunk_ms"] = seconds * 1000
    figures["acoustic_rtf"] = seconds / 0.5
    codes = torch.randint(0, 1024, (8, 250), device=device)
    figures["speechtokenizer_decode_5s_ms"] = _timed(lambda: codec.decode(codes)) * 1000
    figures["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30

    print("\nAnyGPT family on", torch.cuda.get_device_name(), json.dumps({k: round(v, 3) for k, v in figures.items()}))
    assert figures["peak_gib"] < 40  # LM + speech parts leave room for SEED and unCLIP on an 80 GB GPU
    assert figures["acoustic_rtf"] < 1.0  # a chunk is decoded faster than it plays


@torch.inference_mode()
def test_captured_batched_steps_equal_eager_steps_and_the_engine_streams_on_cuda():
    """The CUDA-graph decode step gives the eager step's logits for every bucket, and the engine on CUDA yields the
    same greedy tokens with and without graphs, alone and batched."""
    from assistant.decoding.lm_sampler import GenerationSettings, SamplingSettings
    from assistant.lm_engine import LMEngine, LMEngineConfig
    from assistant.lm_engine.model_runner import SlotModelRunner
    from assistant.models.embedded.lm import LMConfig, build_lm
    from assistant.prompts import ChatPromptBuilder, UserMessage
    from assistant.vocab import UnifiedVocab

    vocab = UnifiedVocab.embedded()
    config = LMConfig(
        vocab_size=vocab.size,
        hidden_size=256,
        intermediate_size=512,
        num_layers=4,
        num_heads=8,
        num_kv_heads=4,
        max_positions=512,
    )
    model = build_lm(config, seed=0).to("cuda")  # fp32: greedy choices must not hinge on half-precision rounding
    gen = torch.Generator().manual_seed(0)

    graphed = SlotModelRunner(model, max_slots=6, capacity=256, cuda_graphs=True, buckets=(1, 2, 4))
    eager = SlotModelRunner(model, max_slots=6, capacity=256, cuda_graphs=False)
    lengths = [5, 40, 17, 90, 3, 60]
    for slot, n in enumerate(lengths):
        ids = torch.randint(0, vocab.size, (n,), generator=gen).cuda()
        graphed.prefill(slot, ids, 0)
        eager.prefill(slot, ids, 0)
    for rows in (1, 2, 3, 6):  # buckets 1, 2, 4 and max_slots
        tokens = torch.randint(0, vocab.size, (rows,), generator=gen).cuda()
        positions = torch.tensor(lengths[:rows]).cuda()
        torch.testing.assert_close(
            graphed.decode(tokens, positions), eager.decode(tokens, positions), atol=1e-3, rtol=1e-3
        )

    settings = GenerationSettings(text=SamplingSettings(do_sample=False, max_new_tokens=48), max_total_new_tokens=48)
    builder = ChatPromptBuilder(vocab)
    prompts = [builder.build(None, UserMessage(text=t)) for t in ("hi", "what is two plus two", "say hello")]
    results = {}
    for graphs in (False, True):
        engine = LMEngine(model, vocab, settings, LMEngineConfig(max_slots=4, cuda_graphs=graphs))
        engine.warmup()
        alone = [list(engine.submit(p, seed=1).tokens(timeout=120)) for p in prompts]
        requests = [engine.submit(p, seed=1) for p in prompts]
        together = [list(r.tokens(timeout=120)) for r in requests]
        engine.close()
        assert together == alone
        results[graphs] = alone
    assert results[True] == results[False]
