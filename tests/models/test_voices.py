import json

import numpy as np
import pytest

from assistant.models.config_io import ConfigError
from assistant.models.voices import UnknownVoiceError, VoiceBank


def _bank() -> VoiceBank:
    rng = np.random.default_rng(0)
    return VoiceBank(
        {"a": rng.integers(0, 16, (3, 5)), "b": rng.integers(0, 16, (3, 7))}, default="b", codebook_size=16
    )


def test_json_round_trip_keeps_names_default_and_codes(tmp_path):
    bank = _bank()
    path = bank.to_json(tmp_path / "voices.json")
    loaded = VoiceBank.from_json(path)
    assert loaded.names == ("a", "b") and loaded.default == "b" and loaded.n_q == 3 and len(loaded) == 2
    for name in bank.names:
        assert loaded.prompt(name).dtype == np.int64
        assert np.array_equal(loaded.prompt(name), bank.prompt(name))
    assert loaded.prompt(None).shape == (3, 7)  # None = the default voice
    data = json.loads(path.read_text())
    assert data["format_version"] == 1 and data["n_q"] == 3 and data["default"] == "b"
    assert data["voices"]["a"] == bank.prompt("a").tolist()


def test_prompt_is_a_copy_and_unknown_voice_names_the_known_ones():
    bank = _bank()
    prompt = bank.prompt("a")
    prompt[:] = 0
    assert bank.prompt("a").any()
    with pytest.raises(KeyError) as info:
        bank.prompt("zed")
    assert isinstance(info.value, UnknownVoiceError)
    assert "'zed'" in str(info.value) and "a, b" in str(info.value)
    assert "a" in bank and "zed" not in bank


@pytest.mark.parametrize(
    "prompts, default, match",
    [
        ({}, "a", "at least one"),
        ({"a": np.zeros((2, 3), dtype=int)}, "b", "default voice 'b'"),
        ({"a": np.zeros((2, 3), dtype=int), "b": np.zeros((3, 3), dtype=int)}, "a", "3 levels, expected 2"),
        ({"a": np.full((2, 3), 16)}, "a", r"outside \[0, 16\)"),
        ({"a": np.full((2, 3), -1)}, "a", "outside"),
        ({"a": np.zeros((2, 0), dtype=int)}, "a", "empty prompt"),
        ({"a": np.zeros(4, dtype=int)}, "a", "expected codes"),
        ({"a": np.zeros((2, 3)) + 0.5}, "a", "integers"),
        ({"a": [[1, 2], [3]]}, "a", "unequal length"),
        ({"": np.zeros((2, 3), dtype=int)}, "", "non-empty"),
    ],
)
def test_invalid_banks_are_rejected(prompts, default, match):
    with pytest.raises(ValueError, match=match):
        VoiceBank(prompts, default, codebook_size=16)


def test_from_json_reports_the_file_and_the_problem(tmp_path):
    path = tmp_path / "voices.json"
    data = _bank().to_dict()
    path.write_text(json.dumps({**data, "format_version": 2}))
    with pytest.raises(ConfigError, match="voices.json: .*format_version"):
        VoiceBank.from_json(path)
    path.write_text(json.dumps({**data, "n_q": 4}))
    with pytest.raises(ConfigError, match="voices.json: prompts have 3 levels but n_q is 4"):
        VoiceBank.from_json(path)
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "default"}))
    with pytest.raises(ConfigError, match="missing fields"):
        VoiceBank.from_json(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="voices.json: invalid JSON"):
        VoiceBank.from_json(path)
    with pytest.raises(ConfigError, match="absent.json: file not found"):
        VoiceBank.from_json(tmp_path / "absent.json")
