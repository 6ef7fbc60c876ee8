"""AnyGPT's SoundStorm: the exact checkpoint layout (from the manifests), full-size random checkpoints in AnyGPT and
USLM naming loaded and run, the maths against hand-written references on tiny configs, strict loading errors, and
decoding through maskgit (AnyGPT's 10-pass schedule, chunked streaming) and through the literal AnyGPT loop.

The full-size model (351M parameters) is only materialised by the two loading tests; the random 1.4 GB state dict
and its two files are built once per module. The layout test builds the module on the meta device.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from soundstorm_fixtures import soundstorm_inputs as _inputs
from soundstorm_fixtures import tiny_soundstorm as _tiny
from torch import nn

from assistant.decoding.maskgit import ChunkedAcousticDecoder, fill_acoustic_levels
from assistant.decoding.soundstorm_decoding import AnyGPTFill, anygpt_generate, anygpt_schedule
from assistant.models.anygpt.acoustic import USLM_TO_ANYGPT, load_soundstorm
from assistant.models.config_io import ConfigError
from assistant.models.interfaces import AcousticModel, SpeechCodec
from assistant.models.soundstorm import SoundStorm, SoundStormConfig
from assistant.modules.conformer import ChanLayerNorm
from assistant.modules.rotary import rotary_angles

REFERENCE = Path(__file__).resolve().parents[1] / "reference"
TINY = SoundStormConfig.tiny()
K = TINY.codebook_size


def _manifest(name: str) -> dict:
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def anygpt_manifest() -> dict:
    return _manifest("soundstorm_anygpt.json")


@pytest.fixture(scope="module")
def uslm_manifest() -> dict:
    return _manifest("soundstorm_uslm.json")


def _to_uslm(state: dict[str, torch.Tensor], rename: dict[str, str]) -> dict[str, torch.Tensor]:
    """AnyGPT-named state -> USLM naming, from a per-layer {uslm suffix: anygpt suffix} map."""
    back = {v: k for k, v in rename.items()}
    out = {}
    for key, value in state.items():
        head, sep, tail = key.partition(".conv.")
        suffix = "conv." + tail
        out[head + "." + back[suffix] if sep and suffix in back else key] = value
    return out


# ----- layout -----------------------------------------------------------------------------------------------------


def test_anygpt_layout_matches_the_manifest_exactly(anygpt_manifest):
    with torch.device("meta"):
        model = SoundStorm(SoundStormConfig.anygpt())
    want = {k: (v["shape"], v["dtype"]) for k, v in anygpt_manifest["tensors"].items()}
    got = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    assert set(got) == set(want), (sorted(set(want) - set(got))[:5], sorted(set(got) - set(want))[:5])
    assert got == want
    assert list(got) == list(want)  # even the reference's state_dict order
    assert all(v["kind"] == "param" for v in anygpt_manifest["tensors"].values())
    assert list(model.buffers()) == []  # rotary tables and level offsets are computed, never stored
    total = sum(p.numel() for p in model.parameters())
    assert total == anygpt_manifest["total_params"] == 351_378_432
    assert len(got) == anygpt_manifest["num_tensors"] == 356


def test_uslm_rename_table_is_the_manifests(anygpt_manifest, uslm_manifest):
    assert USLM_TO_ANYGPT == anygpt_manifest["key_differences_vs_uslm"]["state_dict"]["rename_uslm_to_anygpt_per_layer"]
    renamed = _to_uslm(dict.fromkeys(anygpt_manifest["tensors"]), USLM_TO_ANYGPT)
    assert set(renamed) == set(uslm_manifest["tensors"])


# ----- full-size checkpoints ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_checkpoints(tmp_path_factory, anygpt_manifest, uslm_manifest):
    """One random state dict built only from the AnyGPT manifest, saved in AnyGPT naming and in USLM naming."""
    gen = torch.Generator().manual_seed(0)
    state = {
        key: torch.randn(spec["shape"], generator=gen).mul_(0.02) for key, spec in anygpt_manifest["tensors"].items()
    }
    rename = uslm_manifest["key_differences_vs_anygpt"]["state_dict"]["rename_uslm_to_anygpt_per_layer"]
    uslm = _to_uslm(state, rename)
    assert set(uslm) == set(uslm_manifest["tensors"])
    folder = tmp_path_factory.mktemp("soundstorm")
    torch.save(state, folder / "speechtokenizer_soundstorm_mls.pt")
    torch.save(uslm, folder / "SoundStorm_best_dev.pt")
    yield folder, state, uslm
    for path in folder.iterdir():
        path.unlink()


@pytest.mark.slow  # full-size AnyGPT SoundStorm
def test_full_size_anygpt_checkpoint_loads_and_runs(full_checkpoints):
    folder, state, _ = full_checkpoints
    model = load_soundstorm(folder / "speechtokenizer_soundstorm_mls.pt")
    assert not model.training and model.config == SoundStormConfig.anygpt()
    loaded = model.state_dict()
    for key in ("semantic_token_emb.weight", "net.to_logits.2.bias", "net.conformer.layers.11.conv.ds_conv.conv.bias"):
        assert torch.equal(loaded[key], state[key])
    semantic, acoustic = _inputs(model.config, 1, 6)
    with torch.no_grad():
        logits = model(semantic, acoustic)
        assert logits.shape == (1, 6, 7, 1024)
        assert torch.isfinite(logits).all()
        torch.testing.assert_close(model.level_logits(semantic, acoustic, 3, start=2), logits[:, 2:, 3])


@pytest.mark.slow  # full-size USLM SoundStorm
def test_full_size_uslm_checkpoint_loads_with_renamed_keys(full_checkpoints):
    folder, state, uslm = full_checkpoints
    model = load_soundstorm(folder / "SoundStorm_best_dev.pt")
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    # spot-check one renamed key against the tensor stored under its USLM name
    assert torch.equal(
        model.net.conformer.layers[5].conv.ds_conv.conv.weight, uslm["net.conformer.layers.5.conv.net.4.conv.weight"]
    )
    assert torch.equal(
        model.net.conformer.layers[0].conv.net2[1].gamma, uslm["net.conformer.layers.0.conv.net.6.gamma"]
    )


# ----- maths against hand-written references (tiny configs) --------------------------------------------------------


def test_chan_layer_norm_matches_the_hand_formula():
    norm = ChanLayerNorm(6)
    with torch.no_grad():
        norm.gamma.copy_(torch.linspace(0.5, 2.0, 6).view(1, 6, 1))
    x = torch.randn(2, 6, 9, generator=torch.Generator().manual_seed(0)).double()
    x[1, :, 4] = 1e-4 * (torch.arange(6) - 2.0)  # variance far below eps: eps floors it (not added)
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)  # biased, over channels per frame
    want = (x - mean) / torch.sqrt(torch.clamp(var, min=1e-6)) * norm.gamma.double()
    torch.testing.assert_close(norm(x.float()), want.float(), atol=1e-5, rtol=1e-5)
    assert torch.allclose(norm(x.float())[1, :, 4], ((x - mean)[1, :, 4] * 1e3 * norm.gamma.double()[0, :, 0]).float())


def _rotary_by_hand(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x [B, H, T, dh]: channel j and j + dh/2 form a complex number rotated by t * theta^(-2j/dh)."""
    half = x.shape[-1] // 2
    t = torch.arange(x.shape[2], dtype=torch.float64)[:, None]
    freq = theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / x.shape[-1])
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(t * freq), t * freq)
    return torch.cat([z.real, z.imag], dim=-1)


def _block_by_hand(block: nn.Module, x: torch.Tensor, cfg: SoundStormConfig) -> torch.Tensor:
    """AnyGPT's conformer block in float64 from the block's own parameters, with plain tensor maths."""
    p = {k: v.detach().double() for k, v in block.named_parameters()}

    def layer_norm(h, name):
        mu = h.mean(-1, keepdim=True)
        return (h - mu) / torch.sqrt(((h - mu) ** 2).mean(-1, keepdim=True) + 1e-5) * p[name + ".weight"] + p[
            name + ".bias"
        ]

    def swish(h):
        return h * torch.sigmoid(h)

    def feed_forward(h, name):
        h = layer_norm(h, f"{name}.fn.norm")
        h = swish(h @ p[f"{name}.fn.fn.net.0.weight"].T + p[f"{name}.fn.fn.net.0.bias"])
        return h @ p[f"{name}.fn.fn.net.3.weight"].T + p[f"{name}.fn.fn.net.3.bias"]

    batch, length, dim = x.shape
    heads, dh, inner = cfg.heads, cfg.dim_head, cfg.heads * cfg.dim_head

    x = x + 0.5 * feed_forward(x, "ff1")

    h = layer_norm(x, "attn.norm")
    q = h @ p["attn.fn.to_q.weight"].T
    kv = h @ p["attn.fn.to_kv.weight"].T
    k, v = kv[..., :inner], kv[..., inner:]
    q, k, v = (t.reshape(batch, length, heads, dh).transpose(1, 2) for t in (q, k, v))
    q, k = _rotary_by_hand(q, cfg.rotary_theta), _rotary_by_hand(k, cfg.rotary_theta)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)  # no causal mask
    out = (attn @ v).transpose(1, 2).reshape(batch, length, inner)
    x = x + out @ p["attn.fn.to_out.weight"].T + p["attn.fn.to_out.bias"]

    h = layer_norm(x, "conv.net1.0")
    h = h @ p["conv.net1.2.weight"][:, :, 0].T + p["conv.net1.2.bias"]  # [B, T, 2 * conv_inner]
    half = h.shape[-1] // 2
    h = h[..., :half] * torch.sigmoid(h[..., half:])  # GLU: value first, gate second
    kernel = cfg.conv_kernel
    left, right = kernel // 2, kernel // 2 - (kernel + 1) % 2
    padded = torch.cat([h.new_zeros(batch, left, half), h, h.new_zeros(batch, right, half)], dim=1)
    w = p["conv.ds_conv.conv.weight"][:, 0, :]  # [C, k]
    h = (
        torch.stack([(padded[:, t : t + kernel] * w.T).sum(1) for t in range(length)], dim=1)
        + p["conv.ds_conv.conv.bias"]
    )
    h = swish(h)  # Swish before the channel norm
    mu = h.mean(-1, keepdim=True)
    var = ((h - mu) ** 2).mean(-1, keepdim=True)
    h = (h - mu) / torch.sqrt(var.clamp(min=1e-6)) * p["conv.net2.1.gamma"][0, :, 0]
    x = x + h @ p["conv.net2.2.weight"][:, :, 0].T + p["conv.net2.2.bias"]

    x = x + 0.5 * feed_forward(x, "ff2")
    return layer_norm(x, "post_norm")


@pytest.mark.parametrize("kernel", [5, 4], ids=["odd-kernel", "even-kernel"])
def test_conformer_block_matches_a_hand_written_reference(kernel):
    model = _tiny(seed=1, conv_kernel=kernel)
    cfg = model.config
    block = model.net.conformer.layers[0]
    x = torch.randn(2, 11, cfg.dim, generator=torch.Generator().manual_seed(0))
    angles = rotary_angles(11, cfg.dim_head, cfg.rotary_theta, x.device)
    with torch.no_grad():
        got = block(x, angles.cos(), angles.sin())
    torch.testing.assert_close(got.double(), _block_by_hand(block, x.double(), cfg), atol=2e-5, rtol=1e-4)


def test_embeddings_are_summed_per_level_with_offsets_plus_the_semantic_condition():
    model = _tiny()
    semantic, acoustic = _inputs(model.config, 2, 7)
    model.net.conformer.layers = nn.ModuleList()  # trunk now returns the embedding sum itself
    table = model.net.code_embeds.weight
    want = model.semantic_token_emb.weight[semantic].clone()  # [B, T, D]
    for q in range(TINY.n_acoustic):
        want += table[q * (K + 1) + acoustic[:, q]]
    with torch.no_grad():
        torch.testing.assert_close(model.trunk(semantic, acoustic), want)


def test_level_heads_match_an_explicit_per_level_matmul():
    model = _tiny(seed=2)
    semantic, acoustic = _inputs(model.config, 2, 8, seed=1)
    D = TINY.dim
    with torch.no_grad():
        model.net.to_logits[2].bias.normal_()  # non-trivial per-level bias
        x = model.trunk(semantic, acoustic)  # [B, T, D]
        logits = model(semantic, acoustic)  # [B, T, Q, K]
        proj, norm, mix = model.net.heads[0], model.net.to_logits[0], model.net.to_logits[2]
        for q in range(TINY.n_acoustic):
            h = x @ proj.weight[q * D : (q + 1) * D].T + proj.bias[q * D : (q + 1) * D]  # level q's slice
            h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
            h = h * norm.weight + norm.bias
            torch.testing.assert_close(logits[:, :, q], h @ mix.weight[q] + mix.bias[0, 0, q], atol=1e-5, rtol=1e-5)
    assert mix.bias.shape == (1, 1, TINY.n_acoustic, K)


def test_level_logits_equal_the_matching_slice_of_forward():
    model = _tiny(seed=3)
    semantic, acoustic = _inputs(model.config, 3, 9, seed=2)
    with torch.no_grad():
        full = model(semantic, acoustic)
        for level in (0, 3, TINY.n_acoustic - 1):
            torch.testing.assert_close(model.level_logits(semantic, acoustic, level, start=4), full[:, 4:, level])
        per_sequence = model.level_logits(semantic, acoustic, torch.tensor([1, 6, 2]))
    torch.testing.assert_close(per_sequence, torch.stack([full[0, :, 1], full[1, :, 6], full[2, :, 2]]))
    with pytest.raises(ValueError, match="level"):
        model.level_logits(semantic, acoustic, TINY.n_acoustic)
    with pytest.raises(ValueError, match="acoustic"):
        model(semantic, acoustic[:, 1:])


def test_attention_is_bidirectional():
    model = _tiny(seed=4)
    semantic, acoustic = _inputs(model.config, 1, 12, seed=3)
    changed = acoustic.clone()
    changed[0, 2, -1] = (changed[0, 2, -1] + 1) % K  # only the last frame
    with torch.no_grad():
        base, after = model(semantic, acoustic), model(semantic, changed)
    assert not torch.allclose(after[0, 0], base[0, 0])


def test_attention_applies_rotary_positions():
    model = _tiny(seed=5)
    cfg = model.config
    attn = model.net.conformer.layers[0].attn.fn
    x = torch.randn(1, 10, cfg.dim, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    angles = rotary_angles(10, cfg.dim_head, cfg.rotary_theta, x.device)
    with torch.no_grad():
        out, out_perm = attn(x, angles.cos(), angles.sin()), attn(x[:, perm], angles.cos(), angles.sin())
        # without positions, attention would be permutation-equivariant; with rotary it is not
        assert not torch.allclose(out_perm, out[:, perm], atol=1e-4)
        # and the positions are exactly rotate-half rotary (a zero angle table gives the equivariant case)
        zero = torch.zeros_like(angles)
        still = (zero.cos(), zero.sin())
        torch.testing.assert_close(attn(x[:, perm], *still), attn(x, *still)[:, perm], atol=1e-5, rtol=1e-5)


def test_sdpa_attention_equals_the_explicit_softmax_path():
    explicit, fused = _tiny(seed=6), _tiny(seed=6, sdpa=True)
    semantic, acoustic = _inputs(explicit.config, 2, 13, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(fused(semantic, acoustic), explicit(semantic, acoustic), atol=1e-5, rtol=1e-5)


def test_config_validates():
    with pytest.raises(ValueError):
        SoundStormConfig(n_q=1)
    with pytest.raises(ValueError):
        SoundStormConfig(dim_head=5)
    cfg = SoundStormConfig.anygpt()
    assert (cfg.n_q, cfg.n_acoustic, cfg.codebook_size, cfg.mask_id) == (8, 7, 1024, 1024)
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.dim_head, cfg.ff_mult, cfg.conv_expansion, cfg.conv_kernel) == (
        1024,
        12,
        8,
        128,
        4,
        2,
        31,
    )
    a, b = _tiny(seed=7), _tiny(seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# ----- loading (tiny config) -----------------------------------------------------------------------------------------


def test_tiny_checkpoints_load_in_both_layouts_and_dtypes(tmp_path):
    source = _tiny(seed=8)
    state = source.state_dict()
    torch.save(state, tmp_path / "anygpt.pt")
    torch.save(_to_uslm(state, USLM_TO_ANYGPT), tmp_path / "uslm.pt")
    semantic, acoustic = _inputs(TINY, 1, 7)
    with torch.no_grad():
        want = source(semantic, acoustic)
        for name, layout in (("anygpt.pt", "auto"), ("uslm.pt", "auto"), ("anygpt.pt", "anygpt"), ("uslm.pt", "uslm")):
            model = load_soundstorm(tmp_path / name, config=TINY, layout=layout)
            assert torch.equal(model(semantic, acoustic), want), (name, layout)
        half = load_soundstorm(tmp_path / "anygpt.pt", config=TINY, dtype=torch.bfloat16)
        assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
        logits = half(semantic, acoustic)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    assert (logits.float().argmax(-1) == want.argmax(-1)).float().mean() > 0.5


def _edit_missing(s):
    del s["net.conformer.layers.1.attn.fn.to_kv.weight"]


def _edit_unknown(s):
    s["net.conformer.layers.1.attn.fn.to_v.weight"] = torch.zeros(4, 4)


def _edit_shape(s):
    s["net.to_logits.2.bias"] = torch.zeros(TINY.n_acoustic, K)


def _edit_mixed(s):
    s["net.conformer.layers.1.conv.net.0.weight"] = s.pop("net.conformer.layers.1.conv.net1.0.weight")


def _edit_dtype(s):
    s["semantic_token_emb.weight"] = s["semantic_token_emb.weight"].long()


@pytest.mark.parametrize(
    "edit, message",
    [
        (_edit_missing, r"missing key 'net\.conformer\.layers\.1\.attn\.fn\.to_kv\.weight'"),
        (_edit_unknown, r"unexpected key 'net\.conformer\.layers\.1\.attn\.fn\.to_v\.weight'"),
        (_edit_shape, r"key 'net\.to_logits\.2\.bias' has shape \(7, 32\), expected \(1, 1, 7, 32\)"),
        (_edit_mixed, r"mixes AnyGPT conv-module keys .*'net\.conformer\.layers\.\d\.conv\.net\.0\.weight'"),
        (_edit_dtype, r"key 'semantic_token_emb\.weight' has dtype torch\.int64"),
    ],
    ids=["missing", "unknown", "shape", "mixed-layouts", "dtype"],
)
def test_a_bad_checkpoint_names_file_and_key(tmp_path, edit, message):
    state = dict(_tiny().state_dict())
    edit(state)
    path = tmp_path / "broken_soundstorm.pt"
    torch.save(state, path)
    with pytest.raises(ConfigError, match=rf"broken_soundstorm\.pt.*{message}"):
        load_soundstorm(path, config=TINY)


def test_a_bad_uslm_checkpoint_names_the_key_as_stored_and_layouts_are_enforced(tmp_path):
    state = _to_uslm(_tiny().state_dict(), USLM_TO_ANYGPT)
    state["net.conformer.layers.0.conv.net.4.conv.weight"] = torch.zeros(3, 1, 5)
    path = tmp_path / "uslm_bad.pt"
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"uslm_bad\.pt.*ds_conv\.conv\.weight.*\(3, 1, 5\).*conv\.net\.4\.conv"):
        load_soundstorm(path, config=TINY)
    good = tmp_path / "uslm.pt"
    torch.save(_to_uslm(_tiny().state_dict(), USLM_TO_ANYGPT), good)
    with pytest.raises(ConfigError, match=r"uslm\.pt.*layout 'anygpt'.*'uslm'"):
        load_soundstorm(good, config=TINY, layout="anygpt")
    with pytest.raises(ConfigError, match="not a readable torch state dict"):
        (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
        load_soundstorm(tmp_path / "junk.pt", config=TINY)


# ----- decoding ------------------------------------------------------------------------------------------------------


class _Recorder:
    """Wraps ``model.trunk`` (every forward and level_logits call goes through it) and records its inputs."""

    def __init__(self, model: SoundStorm) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        inner = model.trunk

        def trunk(semantic, acoustic):
            self.calls.append((semantic.clone(), acoustic.clone()))
            return inner(semantic, acoustic)

        model.trunk = trunk


def test_anygpt_schedule_makes_ten_passes_with_the_cosine_mask_counts():
    schedule = anygpt_schedule()
    assert schedule.forward_passes(8) == 10
    assert schedule.topk(1024) == 308 and schedule.pass_temperature(0) == 0.0 and schedule.pass_temperature(3) == 0.0
    model = _tiny(seed=9)
    recorder = _Recorder(model)
    length = 40
    semantic = torch.randint(0, K, (length,), generator=torch.Generator().manual_seed(0))
    codes = fill_acoustic_levels(model, semantic, schedule=schedule, generator=torch.Generator().manual_seed(0))
    assert len(recorder.calls) == 10
    masked = [int((acoustic[0, 0] == K).sum()) for _, acoustic in recorder.calls[:4]]
    assert masked == schedule.masked_counts(length) == [40, 34, 20, 1]
    # cos(i / 3 * pi / 2): 100%, 86.6%, 50%, then (maskgit keeps at least one) a single token
    assert [round(m / length, 2) for m in masked[:3]] == [1.0, 0.85, 0.5] and masked[3] <= 1
    assert all(bool((acoustic[0, 1:] == K).all()) for _, acoustic in recorder.calls[:4])  # higher levels masked
    assert codes.shape == (8, length) and torch.equal(codes[0], semantic)
    assert 0 <= int(codes.min()) and int(codes.max()) < K


class FakeCodec:
    """The SpeechCodec interface with no model (structurally: no subclassing): each frame decodes to ``hop`` samples
    of its mean code."""

    sample_rate, frame_rate, hop, n_q, codebook_size = 16000, 50, 320, 8, K
    device = torch.device("cpu")

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.n_q, math.ceil(wave.shape[-1] / 320), dtype=torch.long)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes.float().mean(0) / self.codebook_size).repeat_interleave(320)

    def encode_batch(self, waves, n_q=None):
        return [self.encode(wave)[:n_q] for wave in waves]

    def decode_batch(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.decode(row) for row in codes])


@pytest.mark.slow  # > 1.5 s
def test_chunked_decoder_streams_with_context_and_prompt():
    codec = FakeCodec()
    assert isinstance(codec, SpeechCodec)
    model = _tiny(seed=10)
    assert isinstance(model, AcousticModel) and (model.n_q, model.semantic_vocab, model.mask_id) == (8, K, K)
    recorder = _Recorder(model)
    decoder = ChunkedAcousticDecoder(model, codec, anygpt_schedule(), context_frames=4)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, K, (8, 6), generator=gen)
    semantic = torch.randint(0, K, (22,), generator=gen)
    context, chunks = None, []
    for start in range(0, 22, 8):  # chunks of 8, 8, 6 frames
        chunk = semantic[start : start + 8]
        calls_before = len(recorder.calls)
        codes, wave = decoder.decode_chunk(chunk, context, prompt, generator=gen)
        assert codes.shape == (8, chunk.numel()) and wave.shape == (chunk.numel() * 320,)
        assert torch.equal(codes[0], chunk)
        assert 0 <= int(codes.min()) and int(codes.max()) < K
        assert len(recorder.calls) - calls_before == 10
        fixed = prompt if context is None else torch.cat([prompt, context[:, -4:]], dim=1)
        for cond, acoustic in recorder.calls[calls_before:]:
            assert torch.equal(cond[0], torch.cat([fixed[0], chunk]))
            assert torch.equal(acoustic[0, :, : fixed.shape[1]], fixed[1:])
        chunks.append(codes)
        context = codes if context is None else torch.cat([context, codes], dim=1)
    assert torch.equal(torch.cat(chunks, dim=1)[0], semantic)


@pytest.mark.slow  # > 1.5 s
def test_chunked_decoder_streams_with_anygpts_own_loop():
    """AnyGPTFill: the voice prompt and the previous chunk become AnyGPT's acoustic prompt; each chunk equals
    anygpt_generate over that prompt."""
    codec = FakeCodec()
    model = _tiny(seed=12)
    recorder = _Recorder(model)
    decoder = ChunkedAcousticDecoder(model, codec, context_frames=4, fill=AnyGPTFill())
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, K, (8, 6), generator=gen)
    semantic = torch.randint(0, K, (14,), generator=gen)
    first, _ = decoder.decode_chunk(semantic[:8], None, prompt, generator=torch.Generator().manual_seed(5))
    assert len(recorder.calls) == 10 and torch.equal(first[0], semantic[:8])
    second, wave = decoder.decode_chunk(semantic[8:], first, prompt, generator=torch.Generator().manual_seed(6))
    assert second.shape == (8, 6) and wave.shape == (6 * 320,) and torch.equal(second[0], semantic[8:])
    cond, acoustic = recorder.calls[10]
    fixed = torch.cat([prompt, first[:, -4:]], dim=1)  # [8, 10]
    assert torch.equal(cond[0], torch.cat([fixed[0], semantic[8:]]))
    assert torch.equal(acoustic[0, :, :10], fixed[1:])
    expected = anygpt_generate(model, semantic[None, 8:], fixed.T[None], generator=torch.Generator().manual_seed(6))
    assert torch.equal(second, expected[0].T)


def test_anygpt_generate_follows_the_reference_loop():
    model = _tiny(seed=11)
    recorder = _Recorder(model)
    gen = torch.Generator().manual_seed(0)
    semantic = torch.randint(0, K, (2, 15), generator=gen)
    prompt = torch.randint(0, K, (2, 5, 8), generator=gen)
    out = anygpt_generate(model, semantic, prompt, steps=3, generator=torch.Generator().manual_seed(1))
    assert len(recorder.calls) == 10  # (steps + 1) + 6
    assert out.shape == (2, 15, 8) and torch.equal(out[:, :, 0], semantic)
    assert 0 <= int(out.min()) and int(out.max()) < K
    first_cond, first_acoustic = recorder.calls[0]
    assert torch.equal(first_cond, torch.cat([prompt[:, :, 0], semantic], dim=1))
    assert torch.equal(first_acoustic[:, :, :5], prompt[:, :, 1:].transpose(1, 2))
    assert bool((first_acoustic[:, :, 5:] == K).all())
    # the re-mask counts are fractions of prompt + new frames, ranked over all levels: never more than that
    total = 20
    for (_, acoustic), count in zip(recorder.calls[1:4], [total, int(0.8660254 * total), total // 2], strict=True):
        assert int((acoustic[:, 0] == K).sum(-1).max()) <= count
        assert bool((acoustic[:, 1:, 5:] == K).all())  # higher levels of new frames still masked
    again = anygpt_generate(model, semantic, prompt, steps=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    recorder.calls.clear()
    anygpt_generate(model, semantic[:1], None, steps=1)
    assert len(recorder.calls) == 2 + 6
