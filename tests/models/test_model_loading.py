"""``assistant.models.loading``: one spec, one loader for either family, per role (Ray replicas) or all four roles in
one process (``assistant chat``, benchmarks), with the vocabulary and voices the engine reads."""

import asyncio
from pathlib import Path

import numpy as np
import pytest

from assistant.models import loading
from assistant.models.bundle import MODEL_NAMES
from assistant.models.config_io import ConfigError
from assistant.models.embedded import EMBEDDED_DIR
from assistant.models.loading import ROLE_PARTS, ModelSpec, load_backends, load_models, load_role, load_vocab_and_voices
from assistant.pipeline import local
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.pipeline.outputs import AudioFrame, TurnError, TurnFinished
from assistant.protocol import FinishReason


def _close(backends) -> None:
    close = getattr(backends.lm, "close", None)
    if close is not None:
        close()


@pytest.fixture
def embedded_calls(monkeypatch) -> list[tuple[str, ...]]:
    """The ``parts`` of every ``load_models`` call made while the test runs."""
    calls: list[tuple[str, ...]] = []
    real = loading.load_models

    def recording(spec, parts=MODEL_NAMES):
        calls.append(tuple(parts))
        return real(spec, parts)

    monkeypatch.setattr(loading, "load_models", recording)
    return calls


def test_the_spec_validates_and_travels_as_a_dict():
    spec = ModelSpec(family="anygpt", assets_dir="/models/anygpt", dtype="float16", device="cuda", seed=3)
    assert ModelSpec.from_dict(spec.to_dict()) == spec and ModelSpec.from_dict(spec) is spec
    assert ModelSpec.from_dict(None) == ModelSpec()
    with pytest.raises(ConfigError, match="model spec: unknown ModelSpec key 'famly'"):
        ModelSpec.from_dict({"famly": "anygpt"})
    assert spec.tokenizer_dir == Path("/models/anygpt/AnyGPT-chat") and spec.voices_path is None
    assert ModelSpec(family="anygpt", assets_dir="/w", voices_file="/v.json").voices_path == Path("/v.json")
    embedded = ModelSpec()
    assert embedded.tokenizer_dir == EMBEDDED_DIR / "tokenizer"
    assert embedded.voices_path == EMBEDDED_DIR / "voices.json"
    for bad, match in (
        ({"family": "anygpt-7b"}, "family"),
        ({"family": "anygpt"}, "assets_dir"),
        ({"lm_engine": "vllm"}, "transformers engine only"),
        ({"dtype": "float64"}, "dtype"),
        ({"lm_engine": "tgi"}, "lm_engine"),
    ):
        with pytest.raises(ValueError, match=match):
            ModelSpec(**bad)


def test_each_role_loads_only_its_parts(embedded_calls):
    kinds = {
        "speech": local.LocalSpeechEncoder,
        "lm": local.LocalLMBackend,
        "acoustic": local.LocalAcousticBackend,
        "media": local.LocalMediaBackend,
    }
    for role, backend_type in kinds.items():
        backend = load_role(ModelSpec(), role)
        assert isinstance(backend, backend_type)
        if role == "lm":
            backend.close()
    assert embedded_calls == [ROLE_PARTS[role] for role in kinds]
    with pytest.raises(ValueError, match="role must be one of"):
        load_role(ModelSpec(), "vocoder")


def test_the_lm_engine_settings_reach_the_lm_backend():
    from assistant.lm_engine import LMEngineConfig

    backend = load_role(ModelSpec(), "lm", lm_batching=LMEngineConfig(max_slots=3, max_waiting=1))
    try:
        assert (backend.engine.config.max_slots, backend.engine.config.max_waiting) == (3, 1)
    finally:
        backend.close()


def test_all_four_backends_come_from_one_load_sharing_the_codec(embedded_calls):
    backends = load_backends(ModelSpec(seed=5))
    try:
        assert len(embedded_calls) == 1 and set(embedded_calls[0]) == set(MODEL_NAMES)
        assert backends.speech.codec is backends.acoustic.decoder.codec  # loaded once, shared
        assert isinstance(backends.lm, local.LocalLMBackend) and backends.lm.seed == 5
        assert isinstance(backends.media, local.LocalMediaBackend)
    finally:
        _close(backends)


def test_the_vllm_lm_is_left_out_of_the_bundle(monkeypatch):
    parts_loaded: list[tuple[str, ...]] = []
    sentinel = object()

    real = loading.load_models

    def fake_bundle(spec, parts):  # the embedded models stand in for the AnyGPT ones: only `parts` matters here
        parts_loaded.append(tuple(parts))
        return real(ModelSpec(), parts)

    monkeypatch.setattr(loading, "load_models", fake_bundle)
    monkeypatch.setattr(loading, "_vllm_backend", lambda spec: sentinel)
    spec = ModelSpec(family="anygpt", assets_dir="/nowhere", lm_engine="vllm")
    backends = load_backends(spec)
    assert backends.lm is sentinel and "lm" not in parts_loaded[0]
    assert set(parts_loaded[0]) == {"codec", "acoustic", "image", "music"}
    assert load_role(spec, "lm") is sentinel and len(parts_loaded) == 1  # no bundle at all for a vLLM LM


def test_vocab_and_voices_are_those_the_bundle_holds(tmp_path):
    bundle = load_models(ModelSpec(), ("codec",))
    vocab, voices = load_vocab_and_voices(ModelSpec())
    same = ("size", "text_size", "eos_id", "ins_id")
    assert [getattr(vocab, a) for a in same] == [getattr(bundle.vocab, a) for a in same]
    assert (voices is None) == (bundle.voices is None)
    if voices is not None:
        assert voices.names == bundle.voices.names and voices.default == bundle.voices.default

    # an embedded assets folder without voices.json: no voice bank
    bare = tmp_path / "bare"
    (bare / "tokenizer").mkdir(parents=True)
    for f in (EMBEDDED_DIR / "tokenizer").iterdir():
        (bare / "tokenizer" / f.name).write_bytes(f.read_bytes())
    assert load_vocab_and_voices(ModelSpec(assets_dir=str(bare)))[1] is None


@pytest.mark.slow  # anygpt_root: full-size SoundStorm and SEED checkpoints
def test_a_named_anygpt_voice_bank_must_exist(anygpt_root, tmp_path):
    from assistant.models.voices import VoiceBank

    spec = ModelSpec(family="anygpt", assets_dir=str(anygpt_root))
    vocab, voices = load_vocab_and_voices(spec)
    assert voices is None and vocab.ins_id is not None
    with pytest.raises(ConfigError, match="absent.json: file not found"):
        load_vocab_and_voices(
            ModelSpec(family="anygpt", assets_dir=str(anygpt_root), voices_file=str(tmp_path / "absent.json"))
        )
    bank = VoiceBank({"low": np.zeros((8, 5), np.int64)}, default="low", codebook_size=1024)
    path = bank.to_json(tmp_path / "voices.json")
    _, loaded = load_vocab_and_voices(ModelSpec(family="anygpt", assets_dir=str(anygpt_root), voices_file=str(path)))
    assert loaded.names == ("low",)


@pytest.mark.slow  # anygpt_root: full-size SoundStorm and SEED checkpoints, a whole turn
def test_load_backends_serves_a_typed_turn_of_the_anygpt_family(anygpt_root):
    """What ``assistant chat --family anygpt`` does: every part of the family in this process, one engine turn."""
    spec = ModelSpec(family="anygpt", assets_dir=str(anygpt_root), dtype="float32")
    backends = load_backends(spec)
    vocab, voices = load_vocab_and_voices(spec)
    assert backends.speech.codec is backends.acoustic.decoder.codec
    engine = AssistantEngine(backends, vocab, EngineConfig(force_modality="speech"), voices=voices)

    async def turn():
        session = engine.new_session()
        try:
            return [event async for event in session.respond(UserTurn(text="hello"))]
        finally:
            await session.close()

    try:
        events = asyncio.run(turn())
        assert not [e for e in events if isinstance(e, TurnError)], events
        assert isinstance(events[-1], TurnFinished) and events[-1].reason is not FinishReason.ERROR
        audio = [e for e in events if isinstance(e, AudioFrame)]
        assert audio and any(np.abs(frame.pcm).max() > 0 for frame in audio)
        codes = asyncio.run(backends.speech.encode(np.zeros(16000, dtype=np.float32)))
        assert codes.shape[-1] == 50  # 1 s at 50 frames a second
    finally:
        _close(backends)
