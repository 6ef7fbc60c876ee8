"""The embedded bundle through the one loader: every part, or just those a replica serves; each model is an
implementation of its role's interface."""

import pytest

from assistant.models.bundle import MODEL_NAMES
from assistant.models.interfaces import AcousticModel, CausalLM, ImageCodec, MusicCodec, SpeechCodec
from assistant.models.loading import ModelSpec, load_models


def test_full_bundle_agrees_with_its_vocabulary_and_its_interfaces():
    bundle = load_models(ModelSpec())
    assert bundle.parts == MODEL_NAMES and bundle.weights_loaded == MODEL_NAMES  # the committed weights
    bundle.validate()
    for name, interface in (
        ("lm", CausalLM),
        ("codec", SpeechCodec),
        ("acoustic", AcousticModel),
        ("image", ImageCodec),
        ("music", MusicCodec),
    ):
        assert isinstance(getattr(bundle, name), interface), name
    assert bundle.lm.config.vocab_size == bundle.vocab.size


def test_parts_load_only_what_a_replica_serves():
    bundle = load_models(ModelSpec(), ("acoustic", "codec"))
    assert bundle.parts == ("codec", "acoustic")
    assert bundle.lm is None and bundle.image is None and bundle.music is None


def test_unknown_part_is_rejected():
    with pytest.raises(ValueError, match="unknown model parts"):
        load_models(ModelSpec(), ("codec", "vocoder"))


def test_seed_makes_the_untrained_default_deterministic(tmp_path):
    from assistant.models.embedded import EMBEDDED_DIR

    # an assets folder without weights: the seeded initialisation is what loads
    (tmp_path / "tokenizer").mkdir()
    for f in (EMBEDDED_DIR / "tokenizer").iterdir():
        (tmp_path / "tokenizer" / f.name).write_bytes(f.read_bytes())
    for name in ("codec.json", "generation.json"):
        (tmp_path / name).write_bytes((EMBEDDED_DIR / name).read_bytes())
    a, b, c = (load_models(ModelSpec(assets_dir=str(tmp_path), seed=s), ("codec",)) for s in (3, 3, 4))
    assert a.weights_loaded == () and a.voices is None
    assert (a.codec.codebooks == b.codec.codebooks).all() and not (a.codec.codebooks == c.codec.codebooks).all()
