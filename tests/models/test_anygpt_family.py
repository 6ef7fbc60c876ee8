"""The AnyGPT family end to end without the real weights: a weights root laid out as on the hub with random
checkpoints (SoundStorm and SEED at full size, the others small), checked by ``anystream check-weights``, loaded
into a bundle, and served one turn by the same engine as the embedded family."""

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import EncodecConfig, EncodecModel, LlamaConfig, LlamaForCausalLM

from assistant.anystream_cli import main as anystream_main
from assistant.decoding.lm_sampler import GenerationSettings, SamplingSettings
from assistant.models.anygpt import AnyGPTLayout, check_weights, failed, load_anygpt
from assistant.models.encodec_music import to_checkpoint_naming
from assistant.models.seed_image import SEED_FILE, SeedTokenizerConfig, checkpoint_shapes
from assistant.models.soundstorm import SoundStorm, SoundStormConfig
from assistant.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.pipeline.local import local_backends
from assistant.pipeline.outputs import AudioFrame, TurnError, TurnFinished

TEXT_VOCAB = 64
SMALL_SPEECHTOKENIZER = SpeechTokenizerConfig(n_filters=4, dimension=32, semantic_dimension=16, lstm_layers=1)
TINY_ENCODEC = {"model_type": "encodec", "sampling_rate": 32000, "audio_channels": 1, "codebook_size": 2048,
                "codebook_dim": 8, "hidden_size": 8, "num_filters": 2, "num_lstm_layers": 1,
                "upsampling_ratios": [8, 5, 4, 4], "target_bandwidths": [2.2], "use_conv_shortcut": False,
                "normalize": False, "chunk_length_s": None}


def _added_tokens() -> dict[str, int]:
    order = ["[Human]", "[MMGPT]", "<eoh>", "<eos>"]
    for prefix, start, end, count in (("\U0001f440", "<soim>", "<eoim>", 8192),
                                      ("\U0001f5e3\ufe0f", "<sosp>", "<eosp>", 1024),
                                      ("\U0001f3b6", "<somu>", "<eomu>", 8192)):
        order += [f"<{prefix}{n}>" for n in range(count)] + [start, end]
    order += ["<-Res->", "<-Ins->"]
    return {token: TEXT_VOCAB + i for i, token in enumerate(order)}


def _write_lm(folder: Path) -> None:
    import sentencepiece as spm

    folder.mkdir(parents=True)
    sentences = [f"{a} {b}" for a in ("hello", "what is", "draw a", "play a") for b in ("red circle", "tune", "two")]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences * 8), model_prefix=str(folder / "tokenizer"),
                                   vocab_size=TEXT_VOCAB, model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                   minloglevel=2)
    (folder / "tokenizer.vocab").unlink()
    added = _added_tokens()
    config = LlamaConfig(vocab_size=TEXT_VOCAB + len(added), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    (folder / "added_tokens.json").write_text(json.dumps(added, ensure_ascii=False), encoding="utf-8")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # the format AnyGPT ships
    # short replies: random weights would otherwise speak for 30 s through a full-size SoundStorm on a CPU
    short = SamplingSettings(do_sample=True, max_new_tokens=6)
    GenerationSettings(text=short, speech=SamplingSettings(do_sample=True, max_new_tokens=12),
                       image=SamplingSettings(do_sample=True, max_new_tokens=32, min_new_tokens=32), music=short,
                       max_total_new_tokens=40).to_json(folder / "anystream_generation.json")


def _write_speech_modules(root: Path) -> None:
    folder = root / "AnyGPT-speech-modules" / "speechtokenizer"
    folder.mkdir(parents=True)
    config = {name: getattr(SMALL_SPEECHTOKENIZER, name) for name in SMALL_SPEECHTOKENIZER.__dataclass_fields__}
    (folder / "config.json").write_text(json.dumps({**config, "strides": list(SMALL_SPEECHTOKENIZER.strides),
                                                    "segment_size": 48000, "learning_rate": 1e-4}))
    torch.manual_seed(1)
    torch.save(SpeechTokenizer(SMALL_SPEECHTOKENIZER).state_dict(), folder / "ckpt.dev")
    soundstorm = root / "AnyGPT-speech-modules" / "soundstorm"
    soundstorm.mkdir(parents=True)
    torch.manual_seed(2)
    model = SoundStorm(SoundStormConfig.anygpt())  # full size: the loader takes AnyGPT's hard-coded architecture
    torch.save(model.state_dict(), soundstorm / "speechtokenizer_soundstorm_mls.pt")


def _write_encodec(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(TINY_ENCODEC))
    torch.manual_seed(3)
    save_file(to_checkpoint_naming(EncodecModel(EncodecConfig(**TINY_ENCODEC)).state_dict()),
              str(folder / "model.safetensors"))


def _write_seed(folder: Path) -> None:
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(4)
    shapes = checkpoint_shapes(SeedTokenizerConfig())[SEED_FILE]
    torch.save({key: torch.randn(shape, generator=generator) * 0.02 for key, shape in shapes.items()},
               folder / "seed_quantizer.pt")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("anygpt")
    _write_lm(root / "AnyGPT-chat")
    _write_speech_modules(root)
    _write_encodec(root / "encodec_32khz")
    _write_seed(root / "seed-tokenizer-2")
    return root


def test_check_weights_reports_every_part_of_a_complete_root(root, capsys):
    reports = {r.name: r for r in check_weights(root)}
    for name in ("AnyGPT-chat", "speechtokenizer", "soundstorm", "encodec_32khz", "seed-tokenizer-2"):
        assert reports[name].status == "ok", reports[name]
    assert "chat" in reports["AnyGPT-chat"].detail and "anygpt key layout" in reports["soundstorm"].detail
    assert reports["eva_vit_g"].status == "missing" and not reports["eva_vit_g"].required
    assert reports["stable-diffusion-2-1-unclip"].status == "missing"
    assert not failed(list(reports.values()))
    assert anystream_main(["check-weights", str(root), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] and {p["name"] for p in document["parts"]} == set(reports)


def test_a_damaged_part_fails_the_check_naming_file_key_and_shapes(root, tmp_path, capsys):
    broken = tmp_path / "broken"
    (broken / "AnyGPT-speech-modules" / "soundstorm").mkdir(parents=True)
    state = torch.load(root / "AnyGPT-speech-modules/soundstorm/speechtokenizer_soundstorm_mls.pt", mmap=True,
                       weights_only=True)
    state = dict(state)
    state["net.heads.0.weight"] = torch.zeros(7, 1024)
    torch.save(state, broken / "AnyGPT-speech-modules/soundstorm/speechtokenizer_soundstorm_mls.pt")
    (broken / "encodec_32khz").mkdir()
    (broken / "encodec_32khz" / "config.json").write_text(json.dumps(TINY_ENCODEC))  # weights missing
    assert anystream_main(["check-weights", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "failed  soundstorm: " in out and "speechtokenizer_soundstorm_mls.pt: key 'net.heads.0.weight' has shape " \
        "(7, 1024), expected (7168, 1024)" in out
    assert "incomplete  encodec_32khz: missing encodec_32khz/model.safetensors" in out
    assert "missing  AnyGPT-chat" in out
    assert anystream_main(["check-weights", str(tmp_path / "absent")]) == 2


def test_the_family_serves_a_turn_through_the_engine(root):
    bundle = load_anygpt(AnyGPTLayout(root), parts=("lm", "codec", "acoustic", "music"), dtype="float32")
    assert bundle.vocab.ins_id is not None and bundle.generation.text.max_new_tokens == 6
    backends = local_backends(bundle, seed=0)
    engine = AssistantEngine(backends, bundle.vocab, EngineConfig(force_modality="speech"))

    async def turn():
        session = engine.new_session()
        events = []
        wave = np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000).astype(np.float32) * 0.3
        async for event in session.respond(UserTurn(audio=wave)):
            events.append(event)
        return events

    events = asyncio.run(turn())
    assert not [e for e in events if isinstance(e, TurnError)], events
    assert isinstance(events[-1], TurnFinished)
    audio = [e for e in events if isinstance(e, AudioFrame)]
    assert audio and any(np.abs(frame.pcm).max() > 0 for frame in audio)
    codes = asyncio.run(backends.speech.encode(np.zeros(16000, dtype=np.float32)))
    assert codes.shape == (8, 50)
    music = asyncio.run(backends.media.music_wave([5, 2048 + 6, 4096 + 7, 6144 + 8] * 10))
    assert music.dtype == np.float32 and 0.15 * 16000 < music.size < 0.25 * 16000


def test_make_voices_encodes_each_sample_into_an_acoustic_prompt(root, tmp_path, capsys):
    from assistant.audio import write_wav
    from assistant.models.voices import VoiceBank

    t = np.arange(4 * 16000) / 16000
    write_wav(tmp_path / "low.wav", (0.3 * np.sin(2 * np.pi * 140 * t)).astype(np.float32))
    write_wav(tmp_path / "high.wav", (0.3 * np.sin(2 * np.pi * 260 * t[:16000])).astype(np.float32))
    out = tmp_path / "voices.json"
    args = ["make-voices", str(root), f"low={tmp_path / 'low.wav'}", f"high={tmp_path / 'high.wav'}", "--out",
            str(out), "--default", "high"]
    assert anystream_main(args) == 0
    bank = VoiceBank.from_json(out)
    assert bank.names == ("low", "high") and bank.default == "high" and bank.n_q == 8
    assert bank.prompt("low").shape == (8, 150) and bank.prompt("high").shape == (8, 50)  # 3 s cap; a 1 s sample
    capsys.readouterr()
    assert anystream_main(["make-voices", str(root), "nameonly", "--out", str(out)]) == 2
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    assert anystream_main(["make-voices", str(root), f"x={tmp_path / 'broken.wav'}", "--out", str(out)]) == 2
    assert "voice 'x'" in capsys.readouterr().err


def test_each_deployment_loads_its_part_of_the_family(root):
    from assistant.pipeline import local
    from deployments.common import ModelSpec, load_local_backend

    spec = ModelSpec(family="anygpt", assets_dir=str(root), dtype="float32")
    assert spec.tokenizer_dir == root / "AnyGPT-chat" and spec.voices_path is None
    kinds = {"speech": local.LocalSpeechEncoder, "lm": local.LocalLMBackend, "acoustic": local.LocalAcousticBackend,
             "media": local.LocalMediaBackend}
    for kind, backend_type in kinds.items():
        assert isinstance(load_local_backend(spec, kind), backend_type)
