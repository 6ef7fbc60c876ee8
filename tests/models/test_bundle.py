import pytest

from assistant.models.bundle import MODEL_NAMES, load_embedded


def test_full_bundle_agrees_with_its_vocabulary():
    bundle = load_embedded()
    assert set(bundle.modules()) == set(MODEL_NAMES)
    bundle.validate()


def test_parts_load_only_what_a_replica_serves():
    bundle = load_embedded(parts=("acoustic", "codec"))
    assert set(bundle.modules()) == {"acoustic", "codec"}
    assert bundle.lm is None and bundle.image is None and bundle.music is None
    assert bundle.vocab.size == bundle.lm_config.vocab_size


def test_unknown_part_is_rejected():
    with pytest.raises(ValueError, match="unknown model parts"):
        load_embedded(parts=("codec", "vocoder"))


def test_seed_makes_the_untrained_default_deterministic():
    a, b = load_embedded(parts=("codec",), seed=3), load_embedded(parts=("codec",), seed=3)
    for (name, x), (_, y) in zip(a.codec.state_dict().items(), b.codec.state_dict().items(), strict=True):
        assert (x == y).all(), name
