"""A weights root laid out as the AnyGPT hub repositories are, with random checkpoints (SoundStorm and SEED at full
size, the others small): what ``load_anygpt`` / ``assistant.models.loading`` read, without the real weights.

Shared by the AnyGPT family tests through the ``anygpt_root`` fixture (``tests/models/conftest.py``), built once
per test session.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import EncodecConfig, EncodecModel, LlamaConfig, LlamaForCausalLM

from assistant.decoding.lm_sampler import GenerationSettings, SamplingSettings
from assistant.models.anygpt.image import SEED_FILE, SeedTokenizerConfig, checkpoint_shapes
from assistant.models.anygpt.lm import anygpt_added_tokens
from assistant.models.anygpt.music import to_checkpoint_naming
from assistant.models.anygpt.speech import SpeechTokenizer, SpeechTokenizerConfig
from assistant.models.soundstorm import SoundStorm, SoundStormConfig

TEXT_VOCAB = 64
SMALL_SPEECHTOKENIZER = SpeechTokenizerConfig(n_filters=4, dimension=32, semantic_dimension=16, lstm_layers=1)
TINY_ENCODEC = {
    "model_type": "encodec",
    "sampling_rate": 32000,
    "audio_channels": 1,
    "codebook_size": 2048,
    "codebook_dim": 8,
    "hidden_size": 8,
    "num_filters": 2,
    "num_lstm_layers": 1,
    "upsampling_ratios": [8, 5, 4, 4],
    "target_bandwidths": [2.2],
    "use_conv_shortcut": False,
    "normalize": False,
    "chunk_length_s": None,
}


def train_sentencepiece(folder: Path, sentences: list[str], vocab_size: int) -> Path:
    """A BPE ``tokenizer.model`` (and ``tokenizer.vocab``) in ``folder`` with LLaMA's special ids (unk 0, bos 1,
    eos 2, no pad); returns the model's path."""
    import sentencepiece as spm  # the [anygpt] extra, installed by `make`

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
    )
    return folder / "tokenizer.model"


def write_lm(folder: Path) -> None:
    folder.mkdir(parents=True)
    sentences = [f"{a} {b}" for a in ("hello", "what is", "draw a", "play a") for b in ("red circle", "tune", "two")]
    train_sentencepiece(folder, sentences * 8, TEXT_VOCAB)
    (folder / "tokenizer.vocab").unlink()
    added = anygpt_added_tokens(TEXT_VOCAB)
    config = LlamaConfig(
        vocab_size=TEXT_VOCAB + len(added),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    (folder / "added_tokens.json").write_text(json.dumps(added, ensure_ascii=False), encoding="utf-8")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # the format AnyGPT ships
    # short replies: random weights would otherwise speak for 30 s through a full-size SoundStorm on a CPU
    short = SamplingSettings(do_sample=True, max_new_tokens=6)
    GenerationSettings(
        text=short,
        speech=SamplingSettings(do_sample=True, max_new_tokens=12),
        image=SamplingSettings(do_sample=True, max_new_tokens=32, min_new_tokens=32),
        music=short,
        max_total_new_tokens=40,
    ).to_json(folder / "anystream_generation.json")


def write_speech_modules(root: Path) -> None:
    folder = root / "AnyGPT-speech-modules" / "speechtokenizer"
    folder.mkdir(parents=True)
    config = {name: getattr(SMALL_SPEECHTOKENIZER, name) for name in SMALL_SPEECHTOKENIZER.__dataclass_fields__}
    (folder / "config.json").write_text(
        json.dumps(
            {**config, "strides": list(SMALL_SPEECHTOKENIZER.strides), "segment_size": 48000, "learning_rate": 1e-4}
        )
    )
    torch.manual_seed(1)
    torch.save(SpeechTokenizer(SMALL_SPEECHTOKENIZER).state_dict(), folder / "ckpt.dev")
    soundstorm = root / "AnyGPT-speech-modules" / "soundstorm"
    soundstorm.mkdir(parents=True)
    torch.manual_seed(2)
    model = SoundStorm(SoundStormConfig.anygpt())  # full size: the loader takes AnyGPT's hard-coded architecture
    torch.save(model.state_dict(), soundstorm / "speechtokenizer_soundstorm_mls.pt")


def write_encodec(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(TINY_ENCODEC))
    torch.manual_seed(3)
    save_file(
        to_checkpoint_naming(EncodecModel(EncodecConfig(**TINY_ENCODEC)).state_dict()),
        str(folder / "model.safetensors"),
    )


def write_seed(folder: Path) -> None:
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(4)
    shapes = checkpoint_shapes(SeedTokenizerConfig())[SEED_FILE]
    torch.save(
        {key: torch.randn(shape, generator=generator) * 0.02 for key, shape in shapes.items()},
        folder / "seed_quantizer.pt",
    )


def write_anygpt_root(root: Path) -> Path:
    """Every required part of the family under ``root`` (no EVA ViT-g, no Stable Diffusion: both optional)."""
    write_lm(root / "AnyGPT-chat")
    write_speech_modules(root)
    write_encodec(root / "encodec_32khz")
    write_seed(root / "seed-tokenizer-2")
    return root
