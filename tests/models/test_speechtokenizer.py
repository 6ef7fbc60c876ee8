"""SpeechTokenizer: exact checkpoint layout (reference manifests), strict loading, and the maths of each part checked
against hand computations. Full-size models only where the layout or loading needs them; the maths uses tiny
configs with the real 320-sample hop."""

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from assistant.models.anygpt.speech import (
    NonCausalConv1d,
    NonCausalConvTranspose1d,
    Snake1d,
    SpeechTokenizer,
    SpeechTokenizerConfig,
    load_speechtokenizer,
    load_speechtokenizer_dir,
)
from assistant.models.config_io import ConfigError
from assistant.models.interfaces import SpeechCodec

REPO = Path(__file__).resolve().parents[2]
MANIFEST_DIR = REPO / "tests" / "reference"
MANIFESTS = ("speechtokenizer_anygpt.json", "speechtokenizer_hubert_avg.json")

# What the hub config.json carries besides the model fields (values from upstream's spt_base_cfg.json).
TRAINING_FIELDS = {
    "num_mels": 80,
    "n_fft": 1024,
    "hop_size": 240,
    "fmax_for_loss": None,
    "mel_loss_lambdas": [45, 1, 1, 1],
    "distill_loss_lambda": 120,
    "distill_type": "d_axis",
    "semantic_model_path": "/remote-home/share/models/hubert/ls_960/hubert-base-ls960",
    "semantic_model_layer": "avg",
    "segment_size": 48000,
    "learning_rate": 1e-4,
    "betas": [0.9, 0.99],
    "num_ckpt_keep": 6,
}

SMALL = SpeechTokenizerConfig(n_filters=4, dimension=32, semantic_dimension=16, codebook_size=32, n_q=4)


def manifest(name: str) -> dict:
    return json.loads((MANIFEST_DIR / name).read_text(encoding="utf-8"))


def random_state_dict(m: dict) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {}
    for key, spec in m["tensors"].items():
        dtype = getattr(torch, spec["dtype"])
        out[key] = torch.randn(spec["shape"], dtype=dtype, generator=gen)
    return out


def write_hub_folder(folder: Path, config: dict, state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**config, **TRAINING_FIELDS}, indent=4))
    torch.save(state, folder / "ckpt.dev")
    return folder


def hub_dict(cfg: SpeechTokenizerConfig) -> dict:
    d = {name: getattr(cfg, name) for name in cfg.__dataclass_fields__}
    return {**d, "strides": list(cfg.strides)}


def small_model(seed: int = 0, **changes) -> SpeechTokenizer:
    torch.manual_seed(seed)
    cfg = SpeechTokenizerConfig(**{**hub_dict(SMALL), **changes})
    return SpeechTokenizer(cfg).eval()


def voiced(seconds: float, batch: int = 0) -> torch.Tensor:
    t = torch.arange(int(16000 * seconds)) / 16000
    wave = sum(0.2 / k * torch.sin(2 * math.pi * 140 * k * t) for k in range(1, 6)) + 0.01 * torch.randn(t.shape)
    return wave.float() if batch == 0 else wave.float().expand(batch, 1, -1).clone()


# ----- layout ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MANIFESTS)
def test_state_dict_layout_equals_reference_manifest(name):
    m = manifest(name)
    cfg = SpeechTokenizerConfig.from_dict(m["config"], name)
    with torch.device("meta"):  # shapes and kinds only: no 100M-parameter initialisation
        model = SpeechTokenizer(cfg)
    got = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    want = {k: (v["shape"], v["dtype"]) for k, v in m["tensors"].items()}
    assert set(got) == set(want), (sorted(set(want) - set(got))[:5], sorted(set(got) - set(want))[:5])
    assert got == want
    assert list(got) == list(want)  # the same order too, though loading does not need it
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for key, spec in m["tensors"].items():
        assert (key in params, key in buffers) == (spec["kind"] == "param", spec["kind"] == "buffer"), key
    assert sum(p.numel() for p in params.values()) == m["total_params"]
    assert sum(b.numel() for b in buffers.values()) == m["total_buffer_elements"]


def test_snake_and_elu_layouts_differ_only_by_alpha():
    snake, elu = (manifest(n)["tensors"] for n in MANIFESTS)
    assert set(snake) - set(elu) == {k for k in snake if k.endswith(".alpha")}
    assert set(elu) <= set(snake)


# ----- config ----------------------------------------------------------------------------------------------------


def test_config_reads_hub_json_and_ignores_training_fields(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**hub_dict(SpeechTokenizerConfig()), **TRAINING_FIELDS}))
    cfg = SpeechTokenizerConfig.from_json(path)
    assert cfg == SpeechTokenizerConfig()
    assert (cfg.hop, cfg.frame_rate, cfg.sample_rate, cfg.activation) == (320, 50, 16000, "Snake")


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"n_heads": 8}, "n_heads"),  # unknown, not training-only
        ({"activation": "GELU"}, "activation"),
        ({"strides": "8542"}, "strides"),
        ({"bidirectional": 1}, "bidirectional"),
        ({"n_q": 2.0}, "n_q"),
        ({"n_q": 0}, "n_q"),
        ({"sample_rate": 16001}, "sample_rate"),
    ],
)
def test_config_errors_name_the_file_and_the_key(tmp_path, change, key):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**hub_dict(SpeechTokenizerConfig()), **TRAINING_FIELDS, **change}))
    with pytest.raises(ConfigError) as err:
        SpeechTokenizerConfig.from_json(path)
    assert str(path) in str(err.value) and key in str(err.value)


def test_config_missing_field_and_missing_file(tmp_path):
    data = hub_dict(SpeechTokenizerConfig())
    del data["codebook_size"]
    with pytest.raises(ConfigError, match=r"cfg\.json: missing config key 'codebook_size'"):
        SpeechTokenizerConfig.from_dict(data, "cfg.json")
    with pytest.raises(ConfigError, match="file not found"):
        SpeechTokenizerConfig.from_json(tmp_path / "nope.json")


# ----- loading the full-size checkpoint --------------------------------------------------------------------------


@pytest.mark.slow  # full-size SpeechTokenizer
def test_full_snake_checkpoint_loads_and_codes_one_second(tmp_path):
    m = manifest(MANIFESTS[0])
    state = random_state_dict(m)
    folder = write_hub_folder(tmp_path / "AnyGPT-speech-modules" / "speechtokenizer", m["config"], state)
    probe = "quantizer.vq.layers.3._codebook.embed"
    expected_probe = state[probe].clone()
    del state

    model = load_speechtokenizer_dir(folder.parent)  # the AnyGPT-speech-modules root works too
    assert isinstance(model, SpeechCodec) and not model.training
    assert (model.sample_rate, model.frame_rate, model.hop, model.n_q, model.codebook_size) == (16000, 50, 320, 8, 1024)
    assert torch.equal(model.state_dict()[probe], expected_probe)

    torch.manual_seed(0)
    codes = model.encode(voiced(1.0))
    assert codes.shape == (8, 50) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 1024
    wave = model.decode(codes)
    assert wave.shape == (16000,) and wave.dtype == torch.float32 and bool(torch.isfinite(wave).all())

    batch = voiced(0.2, batch=2)
    batch_codes = model.encode(batch)
    assert batch_codes.shape == (8, 2, 10)
    assert torch.equal(batch_codes[:, 0], batch_codes[:, 1])  # identical rows code identically
    assert model.encode(batch, n_q=1).shape == (1, 2, 10)
    assert model.decode(batch_codes).shape == (2, 1, 3200)


# ----- maths of the parts ----------------------------------------------------------------------------------------


def hand_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    norms = torch.stack([v[i].pow(2).sum().sqrt() for i in range(v.shape[0])])  # one norm per first-axis slice
    return g * v / norms[:, None, None]


@pytest.mark.parametrize(("kernel", "stride", "dilation", "length"), [(7, 1, 1, 23), (3, 1, 2, 23), (10, 5, 1, 23)])
def test_weight_norm_conv_is_conv1d_with_g_v_over_norm_v(kernel, stride, dilation, length):
    torch.manual_seed(0)
    conv = NonCausalConv1d(3, 5, kernel, stride=stride, dilation=dilation).double()
    inner = conv.conv.conv
    with torch.no_grad():
        inner.weight_g.copy_(torch.rand(5, 1, 1) + 0.5)  # break g = ||v|| from the initialisation
    x = torch.randn(2, 3, length, dtype=torch.float64)

    # Padding by hand: reflection, (k-1)d - (s-1) in total with the larger half on the left, plus as many more
    # samples on the right as it takes for ceil(L / s) windows of span (k-1)d + 1 to fit exactly.
    total = (kernel - 1) * dilation - (stride - 1)
    frames = math.ceil(length / stride)
    extra = (frames - 1) * stride + (kernel - 1) * dilation + 1 - (length + total)
    left, right = total - total // 2, total // 2 + extra
    padded = F.pad(x, (left, right), mode="reflect")
    weight = hand_weight_norm(inner.weight_g, inner.weight_v)
    want = F.conv1d(padded, weight, inner.bias, stride=stride, dilation=dilation)
    got = conv(x)
    assert got.shape == (2, 5, frames)
    torch.testing.assert_close(got, want)

    # and torch's own (deprecated) weight_norm, which wrote these keys upstream, agrees
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = nn.utils.weight_norm(nn.Conv1d(3, 5, kernel, stride=stride, dilation=dilation).double())
    ref.load_state_dict(inner.state_dict())
    torch.testing.assert_close(ref(padded), want)


def test_weight_norm_transposed_conv_upsamples_by_stride():
    torch.manual_seed(0)
    conv = NonCausalConvTranspose1d(6, 4, kernel_size=10, stride=5).double()
    inner = conv.convtr.convtr
    assert inner.weight_g.shape == (6, 1, 1)  # the input-channel axis, as the manifest says
    with torch.no_grad():
        inner.weight_g.copy_(torch.rand(6, 1, 1) + 0.5)
    x = torch.randn(2, 6, 9, dtype=torch.float64)
    full = F.conv_transpose1d(x, hand_weight_norm(inner.weight_g, inner.weight_v), inner.bias, stride=5)
    assert full.shape[-1] == 9 * 5 + 5
    torch.testing.assert_close(conv(x), full[..., 3 : 3 + 45])  # 5 extra samples: 3 cut on the left, 2 on the right


def test_snake_formula():
    snake = Snake1d(4).double()
    with torch.no_grad():
        snake.alpha.copy_(torch.tensor([0.3, 1.0, 2.5, -0.7], dtype=torch.float64).view(1, 4, 1))
    x = torch.linspace(-4, 4, 3 * 4 * 50, dtype=torch.float64).view(3, 4, 50)
    a = snake.alpha
    torch.testing.assert_close(snake(x), x + 1.0 / (a + 1e-9) * torch.sin(a * x) ** 2)


def test_rvq_codes_are_brute_force_nearest_codewords_of_the_residual():
    model = small_model()
    wave = voiced(0.3)
    codes = model.encode(wave)  # [4, 15]
    with torch.no_grad():
        residual = model.encoder(wave[None, None])[0].T  # [F, D]
    for level, book in enumerate(model.quantizer.codebooks):
        embed = book.embed  # [K, D]
        for frame in range(residual.shape[0]):
            dists = [float((residual[frame] - embed[c]).pow(2).sum()) for c in range(embed.shape[0])]
            assert int(codes[level, frame]) == min(range(len(dists)), key=dists.__getitem__)
        residual = residual - embed[codes[level]]
    assert len(set(codes[0].tolist())) > 1  # not a degenerate all-one-code case


def test_decode_is_the_decoder_of_the_summed_codewords():
    model = small_model()
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, SMALL.codebook_size, (SMALL.n_q, 12), generator=gen)
    books = model.quantizer.codebooks
    latent = sum(books[q].embed[codes[q]] for q in range(SMALL.n_q))  # [F, D]
    with torch.no_grad():
        want = model.decoder(latent.T[None])[0, 0]
    torch.testing.assert_close(model.decode(codes), want)
    # fewer levels: the sum of the first ones only
    with torch.no_grad():
        want2 = model.decoder((books[0].embed[codes[0]] + books[1].embed[codes[1]]).T[None])[0, 0]
    torch.testing.assert_close(model.decode(codes[:2]), want2)


@pytest.mark.slow  # > 1.5 s
def test_encode_uses_the_first_levels_and_batch_equals_single():
    model = small_model()
    wave = voiced(0.5)
    codes = model.encode(wave)
    assert torch.equal(model.encode(wave, n_q=2), codes[:2])
    batch = torch.stack([wave, 0.5 * wave])[:, None]  # [2, 1, T]
    batch_codes = model.encode(batch)
    assert torch.equal(batch_codes[:, 0], codes)
    assert torch.equal(batch_codes[:, 1], model.encode(0.5 * wave))
    torch.testing.assert_close(model.decode(batch_codes)[1, 0], model.decode(batch_codes[:, 1]))


@pytest.mark.parametrize("activation", ["Snake", "ELU"])
@pytest.mark.slow  # > 1.5 s each
def test_frame_rate_and_lengths(activation):
    model = small_model(activation=activation)
    for seconds in (1, 2):
        codes = model.encode(torch.zeros(16000 * seconds).uniform_(-0.5, 0.5))
        assert codes.shape == (SMALL.n_q, 50 * seconds)
        assert model.decode(codes).shape == (50 * seconds * 320,)
    for samples in (1, 5, 319, 320, 321, 641):  # ceil(T / hop): the tail is padded, never dropped
        frames = math.ceil(samples / 320)
        codes = model.encode(torch.rand(samples) - 0.5)
        assert codes.shape == (SMALL.n_q, frames)
        assert model.decode(codes).shape == (frames * 320,)
    assert model.encode(torch.zeros(0)).shape == (SMALL.n_q, 0)
    assert model.decode(torch.zeros(SMALL.n_q, 0, dtype=torch.long)).shape == (0,)


def test_bad_codes_and_waves_raise_value_error():
    model = small_model()
    good = torch.zeros(SMALL.n_q, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 32\)"):
        model.decode(good + 32)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 32\)"):
        model.decode(good - 1)
    with pytest.raises(ValueError, match="integer"):
        model.decode(good.float())
    with pytest.raises(ValueError, match="levels"):
        model.decode(torch.zeros(SMALL.n_q + 1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="n_q"):
        model.encode(torch.zeros(320), n_q=SMALL.n_q + 1)
    with pytest.raises(ValueError, match="shape"):
        model.encode(torch.zeros(2, 320))
    with pytest.raises(ValueError, match="float"):
        model.encode(torch.zeros(320, dtype=torch.int16))


# ----- strict loading errors -------------------------------------------------------------------------------------


def small_folder(tmp_path: Path, name: str, state_changes=None, **config_changes) -> Path:
    """A hub-style folder holding a tiny model's checkpoint (``state_changes`` edits its state dict)."""
    model = small_model(**config_changes)
    state = dict(model.state_dict())
    if state_changes:
        state_changes(state)
    return write_hub_folder(tmp_path / name, hub_dict(model.config), state)


@pytest.mark.slow  # > 1.5 s
def test_small_checkpoint_round_trips_and_casts(tmp_path):
    folder = small_folder(tmp_path, "ok")
    model = load_speechtokenizer(folder / "config.json", folder / "ckpt.dev", dtype=torch.float64)
    original = small_model()
    assert all(v.dtype == torch.float64 for v in model.state_dict().values())
    for key, value in original.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value.double())
    wave = voiced(0.2)
    assert torch.equal(model.encode(wave), original.encode(wave))
    assert model.decode(model.encode(wave)).dtype == torch.float32


def test_missing_checkpoint_file(tmp_path):
    folder = small_folder(tmp_path, "no_ckpt")
    (folder / "ckpt.dev").unlink()
    with pytest.raises(ConfigError, match="ckpt.dev: weights file not found"):
        load_speechtokenizer_dir(folder)
    with pytest.raises(ConfigError, match="checkpoint folder not found"):
        load_speechtokenizer_dir(tmp_path / "absent")


def test_wrong_shape_names_file_key_and_both_shapes(tmp_path):
    key = "decoder.model.0.conv.conv.weight_v"

    def widen(state):
        state[key] = torch.zeros(64, 32, 8)

    folder = small_folder(tmp_path, "shape", widen)
    with pytest.raises(ConfigError) as err:
        load_speechtokenizer_dir(folder)
    message = str(err.value)
    assert str(folder / "ckpt.dev") in message and repr(key) in message
    assert "(64, 32, 8)" in message and "(64, 32, 7)" in message


def test_unknown_key_is_refused(tmp_path):
    folder = small_folder(
        tmp_path, "unknown", lambda s: s.__setitem__("encoder.model.99.conv.conv.bias", torch.ones(3))
    )
    with pytest.raises(ConfigError, match=r"ckpt\.dev: unexpected key 'encoder\.model\.99\.conv\.conv\.bias'"):
        load_speechtokenizer_dir(folder)


def test_missing_key_is_refused(tmp_path):
    key = "quantizer.vq.layers.2._codebook.embed_avg"
    folder = small_folder(tmp_path, "missing", lambda s: s.pop(key))
    with pytest.raises(ConfigError, match=rf"ckpt\.dev: missing key '{key}' \(expected shape \(32, 32\)\)"):
        load_speechtokenizer_dir(folder)


def test_activation_mismatch_is_named(tmp_path):
    elu = small_folder(tmp_path, "elu", activation="ELU")
    snake = small_folder(tmp_path, "snake")
    # ELU weights under a config that says Snake
    (elu / "config.json").write_text((snake / "config.json").read_text())
    with pytest.raises(ConfigError) as err:
        load_speechtokenizer_dir(elu)
    message = str(err.value)
    assert str(elu / "ckpt.dev") in message and "'encoder.model.1.block.0.alpha'" in message
    assert "ELU checkpoint" in message and "'Snake'" in message
    # and Snake weights under a config that says ELU
    (snake / "config.json").write_text(json.dumps({**hub_dict(SMALL), "activation": "ELU"}))
    with pytest.raises(ConfigError, match=r"ckpt\.dev: key 'encoder\.model\.1\.block\.0\.alpha' is a Snake"):
        load_speechtokenizer_dir(snake)


def test_integer_entries_are_refused(tmp_path):
    key = "quantizer.vq.layers.0._codebook.inited"
    folder = small_folder(tmp_path, "int", lambda s: s.__setitem__(key, torch.ones(1, dtype=torch.long)))
    with pytest.raises(ConfigError, match=rf"key '{key}' has dtype torch.int64"):
        load_speechtokenizer_dir(folder)
