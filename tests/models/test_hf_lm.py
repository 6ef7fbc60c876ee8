"""The AnyGPT LLM loader: the 7B layout from the manifest (meta device), and tiny random folders in every weight
format AnyGPT users may have, loaded strictly; bad folders fail naming the file and the key."""

import json
from pathlib import Path

import pytest
import torch
from anygpt_fixtures import train_sentencepiece
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from assistant.decoding.lm_stream import TokenStream
from assistant.models.anygpt.lm import (
    anygpt_added_tokens,
    check_hf_lm,
    expected_shapes,
    generation_settings,
    load_hf_lm,
)
from assistant.models.config_io import ConfigError
from assistant.prompts import ChatPromptBuilder, Conversation, UserMessage
from assistant.vocab import Modality, TokenKind

REFERENCE = Path(__file__).resolve().parents[1] / "reference"
TEXT_VOCAB = 96
CODES = {
    "\U0001f440": ("<soim>", "<eoim>", 24),
    "\U0001f5e3\ufe0f": ("<sosp>", "<eosp>", 16),
    "\U0001f3b6": ("<somu>", "<eomu>", 32),
    "\U0001f442": ("<soau>", "<eoau>", 8),
}


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory) -> Path:
    words = ["what is two plus three", "draw a red circle", "play a tune", "hello how are you", "the sky is blue"]
    sentences = [f"{a} and {b}" for a in words for b in words] * 4
    return train_sentencepiece(tmp_path_factory.mktemp("spm"), sentences, TEXT_VOCAB)


def tiny_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def write_folder(
    directory: Path,
    spm_model: Path,
    weights: str = "safetensors",
    *,
    chat: bool = True,
    legacy_rotary: bool = False,
    seed: int = 0,
) -> tuple[Path, LlamaForCausalLM]:
    directory.mkdir(parents=True, exist_ok=True)
    added = anygpt_added_tokens(TEXT_VOCAB, CODES, chat=chat)
    config = tiny_config(TEXT_VOCAB + len(added))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    (directory / "config.json").write_text(json.dumps({**config.to_dict(), "model_type": "llama"}), encoding="utf-8")
    (directory / "added_tokens.json").write_text(json.dumps(added, ensure_ascii=False), encoding="utf-8")
    (directory / "tokenizer.model").write_bytes(spm_model.read_bytes())
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if legacy_rotary:
        state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    if weights == "safetensors":
        save_file(state, str(directory / "model.safetensors"))
    elif weights == "bin":
        torch.save(state, directory / "pytorch_model.bin")
    elif weights == "sharded":
        keys = sorted(state)
        halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        weight_map = {}
        for name, part in halves.items():
            save_file({k: state[k] for k in part}, str(directory / name))
            weight_map.update(dict.fromkeys(part, name))
        (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return directory, model


def test_the_7b_layout_equals_the_manifest():
    manifest = json.loads((REFERENCE / "anygpt_llm.json").read_text(encoding="utf-8"))
    shapes = expected_shapes(LlamaConfig(**manifest["config"]))
    assert shapes == {k: tuple(v["shape"]) for k, v in manifest["tensors"].items()}
    total = sum(torch.Size(s).numel() for s in shapes.values())
    assert total == manifest["total_params"] == 6_738_415_616 + 2 * (53_516 - 32_000) * 4096


def test_the_full_anygpt_token_table_gives_the_documented_ids(tmp_path, sentencepiece_model):
    from assistant.vocab import UnifiedVocab

    full = {
        "\U0001f440": ("<soim>", "<eoim>", 8192),
        "\U0001f5e3\ufe0f": ("<sosp>", "<eosp>", 1024),
        "\U0001f3b6": ("<somu>", "<eomu>", 8192),
        "\U0001f442": ("<soau>", "<eoau>", 4096),
    }
    added = anygpt_added_tokens(32000, full)
    (tmp_path / "added_tokens.json").write_text(json.dumps(added, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "tokenizer.model").write_bytes(sentencepiece_model.read_bytes())
    # the tiny SentencePiece model stands in for LLaMA's; only the added-token ids matter here
    vocab = UnifiedVocab(UnifiedVocab.from_dir(tmp_path).text_tokenizer, added)
    assert (vocab.human_id, vocab.mmgpt_id, vocab.eoh_id, vocab.eos_id) == (32000, 32001, 32002, 32003)
    assert vocab.range_of(Modality.IMAGE).first_id == 32004 and vocab.range_of(Modality.IMAGE).end_id == 40197
    speech = vocab.range_of(Modality.SPEECH)
    assert (speech.first_id, speech.n_codes, speech.start_id, speech.end_id) == (40198, 1024, 41222, 41223)
    music = vocab.range_of(Modality.MUSIC)
    assert (music.first_id, music.n_codes, music.start_id, music.end_id) == (41224, 8192, 49416, 49417)
    assert (vocab.res_id, vocab.ins_id, vocab.size) == (53516, 53517, 53518)
    assert vocab.stop_ids == {32003, 2}
    assert vocab.classify(49418).kind is TokenKind.MARKER  # the dead audio codes are not a modality we decode


@pytest.mark.parametrize("weights", ["safetensors", "bin", "sharded"])
def test_a_folder_in_each_weight_format_loads_strictly_and_computes_the_same_logits(
    tmp_path, sentencepiece_model, weights
):
    folder, source = write_folder(tmp_path / weights, sentencepiece_model, weights, legacy_rotary=weights == "bin")
    model, vocab = load_hf_lm(folder, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, vocab.human_id, vocab.range_of(Modality.SPEECH).first_id + 3, vocab.eoh_id]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, source(ids).logits, atol=1e-5)
    assert vocab.size == model.config.vocab_size == model.get_input_embeddings().num_embeddings
    assert vocab.stop_ids == {vocab.eos_id, 2}
    assert vocab.ins_id is not None and vocab.res_id is not None


def test_half_precision_load_and_streaming_generation_over_the_chat_template(tmp_path, sentencepiece_model):
    folder, _ = write_folder(tmp_path / "chat", sentencepiece_model)
    model, vocab = load_hf_lm(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32 and not model.model.rotary_emb.inv_freq.is_meta
    settings = generation_settings(folder)
    assert settings.speech.repetition_penalty == 1.05 and settings.music.top_k == 200  # AnyGPT's configs
    prompt = ChatPromptBuilder(vocab).build(Conversation(), UserMessage(speech_codes=[1, 2, 3]))
    assert prompt[0] == 1 and vocab.human_id in prompt and prompt[-1] != vocab.eos_id
    stream = TokenStream(model, vocab, settings, seed=0)
    produced = []
    for token in stream.generate(prompt):
        produced.append(token)
        if len(produced) == 12:
            break
    assert produced and all(vocab.classify(t).kind is not TokenKind.INVALID for t in produced)


def test_an_override_file_replaces_the_generation_settings(tmp_path, sentencepiece_model):
    from assistant.decoding.lm_sampler import GenerationSettings, SamplingSettings

    folder, _ = write_folder(tmp_path / "chat", sentencepiece_model)
    GenerationSettings(text=SamplingSettings(do_sample=False, max_new_tokens=7)).to_json(
        folder / "anystream_generation.json"
    )
    assert generation_settings(folder).text.max_new_tokens == 7


def _break(folder: Path, how: str) -> str:
    """Damage a good folder; returns the message the loader must give."""
    if how == "no config":
        (folder / "config.json").unlink()
        return r"config.json: file not found"
    if how == "not llama":
        data = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**data, "model_type": "mistral"}))
        return r"config.json: key 'model_type' is 'mistral'"
    if how == "no weights":
        (folder / "model.safetensors").unlink()
        return r"no weights"
    state = {}
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    if how == "missing key":
        del state["model.norm.weight"]
        message = r"missing key 'model.norm.weight'"
    elif how == "unknown key":
        state["model.layers.0.mlp.extra.weight"] = torch.zeros(2)
        message = r"model.safetensors: unexpected key 'model.layers.0.mlp.extra.weight'"
    else:
        state["lm_head.weight"] = torch.zeros(3, 32)
        message = r"model.safetensors: key 'lm_head.weight' has shape \(3, 32\), expected \(\d+, 32\)"
    save_file(state, str(folder / "model.safetensors"))
    return message


@pytest.mark.parametrize("how", ["no config", "not llama", "no weights", "missing key", "unknown key", "wrong shape"])
def test_a_damaged_folder_fails_naming_the_file_and_the_key(tmp_path, sentencepiece_model, how):
    folder, _ = write_folder(tmp_path / "chat", sentencepiece_model)
    message = _break(folder, how)
    with pytest.raises(ConfigError, match=message):
        check_hf_lm(folder)
    with pytest.raises(ConfigError, match=message):
        load_hf_lm(folder, dtype=torch.float32)


def test_shard_and_vocabulary_problems_are_named(tmp_path, sentencepiece_model):
    folder, _ = write_folder(tmp_path / "sharded", sentencepiece_model, "sharded")
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConfigError, match="index.json: names shard model-00002-of-00002.safetensors"):
        check_hf_lm(folder)

    folder, _ = write_folder(tmp_path / "vocab", sentencepiece_model)
    added = json.loads((folder / "added_tokens.json").read_text(encoding="utf-8"))
    added["<extra>"] = max(added.values()) + 1  # one id more than the embedding has rows
    (folder / "added_tokens.json").write_text(json.dumps(added, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ConfigError, match="added_tokens.json: .*vocab_size"):
        check_hf_lm(folder)
    (folder / "tokenizer.model").unlink()
    with pytest.raises(ConfigError, match="tokenizer.model: vocabulary file not found"):
        check_hf_lm(folder)
