"""AnyGPT's music codec on transformers' EncodecModel: the facebook/encodec_32khz layout from the manifest, a random
checkpoint of that layout (hub naming, both file formats) loaded strictly and run end to end, AnyGPT's flattening,
re-alignment of a skipped token, and bad folders failing with the file and the key named.

Error cases use a tiny Encodec (few filters, small codebook vectors) that still has the 32 kHz codec's rate,
codebook size and codebook count, so that they do not write a 236 MB file each.
"""

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anygpt_fixtures import TINY_ENCODEC
from safetensors.torch import save_file
from transformers import EncodecConfig, EncodecModel

from assistant.models.anygpt.music import (
    EncodecMusic,
    EncodecMusicConfig,
    load_encodec_music,
    module_key,
    to_checkpoint_naming,
    to_module_naming,
)
from assistant.models.config_io import ConfigError
from assistant.models.embedded.music import MusicCodecConfig, MusicDetokenizer
from assistant.models.interfaces import MusicCodec
from assistant.modules.music_tokens import realign_tokens
from assistant.pipeline.local import LocalMediaBackend

MANIFEST = Path(__file__).resolve().parents[1] / "reference" / "encodec_32khz.json"
K = 2048  # codes per codebook
TINY_CONFIG = TINY_ENCODEC  # the hub config's rate, hop, codebooks and shortcut; everything else small
assert TINY_CONFIG["codebook_size"] == K


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def _tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1234 * t) * (t > 0.5)).astype(np.float32)


def _write_folder(folder: Path, config: dict, state: dict[str, torch.Tensor], fmt: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if fmt == "safetensors":
        save_file(
            {k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"}
        )
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


def _random_state(manifest: dict) -> dict[str, torch.Tensor]:
    """A random checkpoint built only from the manifest's keys, shapes and dtypes (hub naming)."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, spec in manifest["tensors"].items():
        dtype = getattr(torch, spec["dtype"])
        shape = spec["shape"]
        if key.endswith(".weight_g"):
            value = 0.5 + 0.5 * torch.rand(shape, generator=gen)  # per-channel filter norms
        elif key.endswith("codebook.embed") or key.endswith("codebook.embed_avg"):
            value = torch.randn(shape, generator=gen)
        elif key.endswith("codebook.inited") or key.endswith("codebook.cluster_size"):
            value = torch.ones(shape)
        else:
            value = 0.05 * torch.randn(shape, generator=gen)
        state[key] = value.to(dtype)
    return state


@pytest.fixture(scope="module")
def random_state(manifest) -> dict[str, torch.Tensor]:
    return _random_state(manifest)


@pytest.fixture(scope="module")
def full_folders(manifest, random_state, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encodec_32khz")
    return {fmt: _write_folder(root / fmt, manifest["config"], random_state, fmt) for fmt in ("safetensors", "bin")}


@pytest.fixture(scope="module")
def music(full_folders) -> EncodecMusic:
    return load_encodec_music(full_folders["safetensors"])


@pytest.fixture(scope="module")
def tone_tokens(music) -> list[int]:
    return music.encode(_tone(1.0, 32000), sample_rate=32000)


# ----- layout ---------------------------------------------------------------------------------------------------
def test_module_in_checkpoint_naming_is_the_manifest_layout(manifest):
    model = EncodecModel(EncodecConfig(**manifest["config"]))
    module_state = model.state_dict()
    state = to_checkpoint_naming(module_state)
    got = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]
    want = [(k, spec["shape"], spec["dtype"]) for k, spec in manifest["tensors"].items()]
    assert got == want  # keys, order, shapes and dtypes
    assert len(got) == manifest["num_tensors"]
    params = sum(v.numel() for k, v in state.items() if manifest["tensors"][k]["kind"] == "param")
    assert params == manifest["total_params"]
    assert any(k.endswith(".parametrizations.weight.original0") for k in module_state)  # this transformers' naming
    assert list(to_module_naming(state)) == list(module_state)


def test_key_renaming_is_suffix_only():
    assert module_key("decoder.layers.3.conv.weight_v") == "decoder.layers.3.conv.parametrizations.weight.original1"
    assert module_key("encoder.layers.13.lstm.weight_hh_l0") == "encoder.layers.13.lstm.weight_hh_l0"
    with pytest.raises(ConfigError, match="duplicates"):
        to_module_naming({"a.weight_g": torch.zeros(1), "a.parametrizations.weight.original0": torch.zeros(1)}, "f")


# ----- a random checkpoint of the real layout, end to end ---------------------------------------------------------
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.slow  # full-size EnCodec 32 kHz (the manifest's layout)
def test_random_checkpoint_loads_exactly(full_folders, random_state, music, fmt):
    loaded = music if fmt == "safetensors" else load_encodec_music(full_folders[fmt])
    state = to_checkpoint_naming(loaded.model.state_dict())
    assert list(state) == list(random_state)
    for key, value in random_state.items():  # every tensor comes from the file: nothing newly initialised
        assert torch.equal(state[key], value), key
    assert not loaded.model.training
    assert loaded.config.vocab_size == 8192 and loaded.config.sample_rate == 16000


@pytest.mark.slow  # full-size EnCodec 32 kHz
def test_encode_one_second_gives_200_tokens_by_level(tone_tokens):
    assert len(tone_tokens) == 200  # 50 frames x 4 codebooks
    levels = np.asarray(tone_tokens).reshape(50, 4) // K  # frame-major: [T, L]
    assert (levels == np.arange(4)).all()  # level l tokens lie in [2048 l, 2048 (l + 1))
    assert len(set(tone_tokens)) > 4  # codes follow the audio (a second partial starts at 0.5 s)


@pytest.mark.slow  # full-size EnCodec 32 kHz
def test_encode_resamples_any_rate_to_the_same_frames(music):
    assert len(music.encode(_tone(1.0, 16000))) == 200  # default rate: the pipeline's 16 kHz
    assert len(music.encode(_tone(0.5, 44100), sample_rate=44100)) == 100
    assert music.encode(np.zeros(0, dtype=np.float32)) == []
    with pytest.raises(ValueError, match="mono"):
        music.encode(np.zeros((2, 100), dtype=np.float32))


@pytest.mark.slow  # full-size EnCodec 32 kHz
def test_decode_gives_one_second_at_the_pipeline_rate(music, tone_tokens):
    wave = music.decode(tone_tokens)
    assert wave.dtype == np.float32 and wave.shape == (16000,)  # 50 frames x 640 samples at 32 kHz -> 16 kHz
    assert np.isfinite(wave).all() and np.abs(wave).max() <= 1.0 and np.abs(wave).max() > 0
    native = music.decode_codes(realign_tokens(tone_tokens, 4, K)[0])
    assert native.shape == (32000,) and np.isfinite(native).all()
    assert music.decode([]).shape == (0,)
    with pytest.raises(ValueError, match="outside"):
        music.decode([8192])


@pytest.mark.slow  # full-size EnCodec 32 kHz
def test_flattening_round_trips_and_matches_anygpt_reshape(music, tone_tokens):
    codes = music.encode_codes(_tone(1.0, 32000), sample_rate=32000)  # [4, 50]
    assert codes.shape == (4, 50)
    realigned, repairs = realign_tokens(tone_tokens, 4, K)
    assert repairs == 0 and torch.equal(realigned, codes)
    n = len(tone_tokens) // 4  # AnyGPT's decode: value % 2048, whole frames, reshape (n, 4), transpose
    anygpt = (np.asarray(tone_tokens) % K)[: n * 4].reshape(n, 4).T
    assert np.array_equal(anygpt, codes.numpy())


@pytest.mark.slow  # full-size EnCodec 32 kHz
def test_a_skipped_token_is_realigned_by_level(music, tone_tokens):
    codes = realign_tokens(tone_tokens, 4, K)[0]
    broken = list(tone_tokens)
    del broken[30 * 4 + 2]  # frame 30 loses its level-2 token
    fixed, repairs = realign_tokens(broken, 4, K)
    assert repairs == 1 and fixed.shape == (4, 50)
    others = [t for t in range(50) if t != 30]
    assert torch.equal(fixed[:, others], codes[:, others])  # every later frame keeps its codes (no shift)
    assert fixed[2, 30] == codes[2, 29]  # the hole is filled from the previous frame
    wave, clean = music.decode(broken), music.decode(tone_tokens)
    assert wave.shape == clean.shape == (16000,) and np.isfinite(wave).all()
    early = 20 * 320  # 20 frames at 16 kHz: far before frame 30, outside the decoder's reach
    np.testing.assert_allclose(wave[:early], clean[:early], atol=1e-5)


@pytest.mark.slow  # full-size EnCodec 32 kHz
def test_plugs_into_the_pipeline_interface(music, tone_tokens):
    assert isinstance(music, MusicCodec) and (music.vocab_size, music.sample_rate) == (8192, 16000)
    assert isinstance(MusicDetokenizer(MusicCodecConfig(codebook_size=16)), MusicCodec)
    backend = LocalMediaBackend(SimpleNamespace(image=None, music=music))
    wave = asyncio.run(backend.music_wave(tone_tokens))
    assert wave.dtype == np.float32 and wave.shape == (16000,)


# ----- bad folders (tiny Encodec with the real rate and codebooks) ------------------------------------------------
@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return to_checkpoint_naming(EncodecModel(EncodecConfig(**TINY_CONFIG)).state_dict())


def test_tiny_folder_in_module_naming_loads(tmp_path, tiny_state):
    folder = _write_folder(tmp_path / "m", TINY_CONFIG, to_module_naming(tiny_state), "safetensors")
    loaded = load_encodec_music(folder)
    assert len(loaded.encode(_tone(0.2, 32000), sample_rate=32000)) == 40
    assert torch.equal(
        loaded.model.encoder.layers[0].conv.parametrizations.weight.original0,
        tiny_state["encoder.layers.0.conv.weight_g"],
    )


def _mutate(state: dict[str, torch.Tensor], case: str) -> tuple[dict[str, torch.Tensor], str]:
    state = dict(state)
    if case == "missing":
        key = "decoder.layers.3.conv.weight_g"
        del state[key]
    elif case == "unknown":
        key = "encoder.layers.1.shortcut.conv.weight_g"  # what a use_conv_shortcut=true checkpoint adds
        state[key] = torch.zeros(4, 1, 1)
    elif case == "shape":
        key = "quantizer.layers.2.codebook.embed"
        state[key] = torch.zeros(K, 9)
    else:  # integer tensor where the module holds floats
        key = "encoder.layers.0.conv.bias"
        state[key] = state[key].long()
    return state, key


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("case", ["missing", "unknown", "shape", "dtype"])
def test_bad_weights_name_the_file_and_the_key(tmp_path, tiny_state, monkeypatch, fmt, case):
    state, key = _mutate(tiny_state, case)
    folder = _write_folder(tmp_path / "bad", TINY_CONFIG, state, fmt)

    def never(*args, **kwargs):
        raise AssertionError("load_state_dict called before the checkpoint was checked")

    monkeypatch.setattr(EncodecModel, "load_state_dict", never)  # nothing may half-load
    with pytest.raises(ConfigError) as err:
        load_encodec_music(folder)
    message = str(err.value)
    assert str(folder / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")) in message
    assert repr(key) in message  # checkpoint naming (weight_g), as in the hub file


def test_missing_weights_file(tmp_path):
    folder = tmp_path / "no_weights"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    with pytest.raises(ConfigError, match="model.safetensors: weights file not found.*pytorch_model.bin"):
        load_encodec_music(folder)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"use_conv_shortcut": True}, "use_conv_shortcut"),
        ({"use_conv_shortcut": None}, "use_conv_shortcut"),  # None: key left out, transformers defaults to true
        ({"sampling_rate": 24000}, "sampling_rate"),
        ({"codebook_size": 1024}, "codebook_size"),
        ({"target_bandwidths": [1.1, 2.2]}, "target_bandwidths"),  # encode would use 2 codebooks
        ({"normalize": True}, "normalize"),
        ({"model_type": "mimi"}, "model_type"),
    ],
)
def test_bad_config_names_the_field(tmp_path, tiny_state, change, field):
    config = {k: v for k, v in {**TINY_CONFIG, **change}.items() if v is not None}
    folder = _write_folder(tmp_path / "cfg", config, tiny_state, "safetensors")
    with pytest.raises(ConfigError, match=f"config.json: key '{field}'"):
        load_encodec_music(folder)


def test_missing_or_broken_config(tmp_path, tiny_state):
    folder = _write_folder(tmp_path / "cfg", TINY_CONFIG, tiny_state, "safetensors")
    (folder / "config.json").unlink()
    with pytest.raises(ConfigError, match="config.json: file not found"):
        load_encodec_music(folder)
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="config.json: invalid JSON"):
        load_encodec_music(folder)
    with pytest.raises(ConfigError, match="checkpoint folder not found"):
        load_encodec_music(tmp_path / "nowhere")


def test_real_shortcut_config_is_refused_before_reading_weights(tmp_path, manifest):
    """The first hub upload (4a85b2d) said use_conv_shortcut=true: refused from config.json alone."""
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**manifest["config"], "use_conv_shortcut": True}))
    with pytest.raises(ConfigError, match="use_conv_shortcut"):
        load_encodec_music(folder)


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValueError):
        EncodecMusicConfig(frame_rate=7)
    assert EncodecMusicConfig().hop == 640 and EncodecMusicConfig().tokens_per_second == 200
