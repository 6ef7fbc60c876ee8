import pytest
from lm_fixtures import make_tiny_lm

from assistant.decoding.lm_sampler import GenerationSettings, SamplingSettings
from assistant.prompts import ChatPromptBuilder, UserMessage


@pytest.fixture(scope="session")
def vocab(make_tiny_vocab):
    return make_tiny_vocab(16)


@pytest.fixture(scope="session")
def model(vocab):
    return make_tiny_lm(vocab.size)


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
