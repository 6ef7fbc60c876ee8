import pytest

from assistant.decoding.lm_sampler import GenerationSettings, SamplingSettings
from assistant.models.embedded.lm import LMConfig, build_lm
from assistant.prompts import ChatPromptBuilder, UserMessage
from assistant.vocab import UnifiedVocab, write_embedded_vocab_files


@pytest.fixture(scope="session")
def vocab(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    return UnifiedVocab.from_dir(write_embedded_vocab_files(d, image_codes=16, speech_codes=16, music_codes=16))


@pytest.fixture(scope="session")
def model(vocab):
    config = LMConfig(
        vocab_size=vocab.size,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_positions=256,
    )
    return build_lm(config, seed=0)


@pytest.fixture(scope="session")
def settings():
    """Sampling everywhere, with each modality's own settings, so per-row settings and randomness are exercised."""
    return GenerationSettings(
        text=SamplingSettings(temperature=1.3, top_k=50, max_new_tokens=40),
        speech=SamplingSettings(temperature=0.9, top_p=0.9, repetition_penalty=1.2, max_new_tokens=30),
        image=SamplingSettings(max_new_tokens=8, min_new_tokens=8),
        music=SamplingSettings(top_k=5, max_new_tokens=20),
        max_total_new_tokens=60,
    )


@pytest.fixture(scope="session")
def prompts(vocab):
    builder = ChatPromptBuilder(vocab)
    texts = ["hi", "what is two plus two", "draw a red circle please", "say hello", "play a tune"]
    return [builder.build(None, UserMessage(text=t)) for t in texts]
