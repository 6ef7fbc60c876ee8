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
    from assistant.models.lm_kv import LeanLlamaDecoder
    from assistant.models.soundstorm import SoundStorm, SoundStormConfig
    from assistant.models.speechtokenizer import SpeechTokenizer

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

    # LM: prefill a 300-token prompt, then one token at a time through the lean KV loop the server uses
    prompt = torch.randint(0, 32000, (300,), device=device)
    decoder = LeanLlamaDecoder(lm, capacity=300 + 200)
    decoder.prefill(prompt)
    steps = 100
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        decoder.step(40198 + i % 1024)
    torch.cuda.synchronize()
    figures["lm_ms_per_token"] = (time.perf_counter() - start) / steps * 1000
    figures["lm_with_cache_gib"] = _gib()

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
