"""SEED image tokenizer (assistant/models/anygpt/image.py) with small configs, checked against a reference forward pass
written here directly over a state dict in SEED's (LAVIS) key naming, so the key mapping and the maths are tested
together. The real unCLIP pipeline is replaced by a fake that records its call."""

import dataclasses
import io
import math
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from assistant.models.anygpt.image import (
    CLIP_MEAN,
    CLIP_STD,
    SeedImageCodec,
    SeedImageTokenizer,
    SeedTokenizerConfig,
    SeedVectorQuantizer,
    UnclipRenderConfig,
    UnclipRenderer,
    checkpoint_shapes,
    clip_preprocess,
    import_unclip_pipeline,
    load_seed_tokenizer,
)
from assistant.models.config_io import ConfigError

SMALL = SeedTokenizerConfig(
    input_size=28,
    patch_size=14,
    vit_width=24,
    vit_layers=2,
    vit_heads=2,
    vit_mlp=40,
    num_queries=6,
    qformer_width=16,
    qformer_layers=3,
    qformer_heads=2,
    qformer_mlp=24,
    codebook_size=40,
    code_dim=4,
    decode_layers=2,
    decode_heads=2,
    decode_mlp=20,
    image_down=(12, 8, 3),
    embed_dim=10,
)


# ----- SEED-format state dicts (names written out from seed2/seed_qformer/*.py, not from the module) ----------------
def lavis_vit_state(cfg: SeedTokenizerConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    d, f, p = cfg.vit_width, cfg.vit_mlp, cfg.patch_size
    shapes = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, cfg.vit_tokens, d),
        "patch_embed.proj.weight": (d, 3, p, p),
        "patch_embed.proj.bias": (d,),
    }
    for i in range(cfg.vit_layers):
        b = f"blocks.{i}."
        shapes.update(
            {
                b + "norm1.weight": (d,),
                b + "norm1.bias": (d,),
                b + "attn.qkv.weight": (3 * d, d),
                b + "attn.q_bias": (d,),
                b + "attn.v_bias": (d,),
                b + "attn.proj.weight": (d, d),
                b + "attn.proj.bias": (d,),
                b + "norm2.weight": (d,),
                b + "norm2.bias": (d,),
                b + "mlp.fc1.weight": (f, d),
                b + "mlp.fc1.bias": (f,),
                b + "mlp.fc2.weight": (d, f),
                b + "mlp.fc2.bias": (d,),
            }
        )
    return {k: 0.3 * torch.randn(s, generator=gen) for k, s in shapes.items()}


def lavis_seed_state(cfg: SeedTokenizerConfig, seed: int = 1, extras: bool = True) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w, v, q, m, c = cfg.qformer_width, cfg.vit_width, cfg.num_queries, cfg.qformer_mlp, cfg.code_dim
    shapes = {
        "ln_vision.weight": (v,),
        "ln_vision.bias": (v,),
        "query_tokens": (1, q, w),
        "Qformer.bert.embeddings.LayerNorm.weight": (w,),
        "Qformer.bert.embeddings.LayerNorm.bias": (w,),
    }

    def attention(prefix: str, kv_width: int) -> None:
        for name, width in (("query", w), ("key", kv_width), ("value", kv_width)):
            shapes[f"{prefix}.self.{name}.weight"] = (w, width)
            shapes[f"{prefix}.self.{name}.bias"] = (w,)
        shapes.update(
            {
                f"{prefix}.output.dense.weight": (w, w),
                f"{prefix}.output.dense.bias": (w,),
                f"{prefix}.output.LayerNorm.weight": (w,),
                f"{prefix}.output.LayerNorm.bias": (w,),
            }
        )

    for layer in range(cfg.qformer_layers):
        p = f"Qformer.bert.encoder.layer.{layer}"
        attention(f"{p}.attention", w)
        if layer % 2 == 0:
            attention(f"{p}.crossattention", v)
        shapes.update(
            {
                f"{p}.intermediate_query.dense.weight": (m, w),
                f"{p}.intermediate_query.dense.bias": (m,),
                f"{p}.output_query.dense.weight": (w, m),
                f"{p}.output_query.dense.bias": (w,),
                f"{p}.output_query.LayerNorm.weight": (w,),
                f"{p}.output_query.LayerNorm.bias": (w,),
            }
        )
    shapes.update(
        {
            "encode_task_layer.0.weight": (w, w),
            "encode_task_layer.0.bias": (w,),
            "encode_task_layer.2.weight": (c, w),
            "encode_task_layer.2.bias": (c,),
            "quantize.embedding.weight": (cfg.codebook_size, c),
            "decode_task_layer.0.weight": (c, c),
            "decode_task_layer.0.bias": (c,),
            "decode_task_layer.2.weight": (w, c),
            "decode_task_layer.2.bias": (w,),
            "pos_embed_image": (1, q, w),
        }
    )
    for i in range(cfg.decode_layers):
        b = f"blocks_image.{i}."
        shapes.update(
            {
                b + "norm1.weight": (w,),
                b + "norm1.bias": (w,),
                b + "attn.qkv.weight": (3 * w, w),
                b + "attn.qkv.bias": (3 * w,),
                b + "attn.proj.weight": (w, w),
                b + "attn.proj.bias": (w,),
                b + "norm2.weight": (w,),
                b + "norm2.bias": (w,),
                b + "mlp.fc1.weight": (cfg.decode_mlp, w),
                b + "mlp.fc1.bias": (cfg.decode_mlp,),
                b + "mlp.fc2.weight": (w, cfg.decode_mlp),
                b + "mlp.fc2.bias": (w,),
            }
        )
    d0, d1, d2 = cfg.image_down
    shapes.update(
        {
            "image_down.0.weight": (d0, w),
            "image_down.2.weight": (d1, d0),
            "image_down.4.weight": (d2, d1),
            "distill_image_proj.weight": (cfg.embed_dim, q * d2),
            "distill_image_proj.bias": (cfg.embed_dim,),
        }
    )
    if extras:  # training-only parts the reference loads past (strict=False)
        shapes.update(
            {
                "pos_embed": (1, q, w),
                "blocks.0.norm1.weight": (w,),
                "blocks.3.attn.qkv.weight": (3 * w, w),
                "Qformer.cls.predictions.bias": (30,),
                "Qformer.cls.predictions.decoder.weight": (30, w),
                "Qformer.bert.embeddings.word_embeddings.weight": (30, w),
                "Qformer.bert.encoder.layer.1.intermediate.dense.weight": (m, w),
                "Qformer.bert.encoder.layer.1.output.LayerNorm.bias": (w,),
                "vision_proj.weight": (8, w),
                "temp": (),
                "blocks_text.0.mlp.fc1.weight": (m, w),
                "distill_text_proj.bias": (8,),
            }
        )
    state = {k: 0.3 * torch.randn(s, generator=gen) for k, s in shapes.items()}
    if extras:
        state["Qformer.bert.embeddings.position_ids"] = torch.arange(512)[None]
    return state


def save(tmp_path, name: str, state: dict) -> str:
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


# ----- reference forward over the SEED-format dicts -----------------------------------------------------------------
def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, w = x.shape
    return x.view(b, n, heads, w // heads).transpose(1, 2)


def _attend(q, k, v, heads, mask=None):
    q, k, v = _heads(q, heads), _heads(k, heads), _heads(v, heads)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def _lin(s, prefix, x):
    return F.linear(x, s[prefix + ".weight"], s.get(prefix + ".bias"))


def _ln(s, prefix, x, eps):
    return F.layer_norm(x, x.shape[-1:], s[prefix + ".weight"], s[prefix + ".bias"], eps)


def _prenorm_block(s, b, x, heads, qkv_bias, eps):
    h = _ln(s, b + "norm1", x, eps)
    q, k, v = F.linear(h, s[b + "attn.qkv.weight"], qkv_bias).chunk(3, dim=-1)
    x = x + _lin(s, b + "attn.proj", _attend(q, k, v, heads))
    return x + _lin(s, b + "mlp.fc2", F.gelu(_lin(s, b + "mlp.fc1", _ln(s, b + "norm2", x, eps))))


def reference_queries(cfg, vit, seed, pixels, causal=True):
    x = F.conv2d(pixels, vit["patch_embed.proj.weight"], vit["patch_embed.proj.bias"], stride=cfg.patch_size)
    x = torch.cat([vit["cls_token"].expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], 1) + vit["pos_embed"]
    for i in range(cfg.vit_layers):
        b = f"blocks.{i}."
        bias = torch.cat([vit[b + "attn.q_bias"], torch.zeros_like(vit[b + "attn.q_bias"]), vit[b + "attn.v_bias"]])
        x = _prenorm_block(vit, b, x, cfg.vit_heads, bias, 1e-6)
    image = _ln(seed, "ln_vision", x, 1e-5)
    n = cfg.num_queries
    mask = torch.full((n, n), -10000.0).triu(1) if causal else None
    h = _ln(seed, "Qformer.bert.embeddings.LayerNorm", seed["query_tokens"].expand(x.shape[0], -1, -1), 1e-12)
    for layer in range(cfg.qformer_layers):
        p = f"Qformer.bert.encoder.layer.{layer}."
        for kind, kv, m in (("attention", None, mask), ("crossattention", image, None)):
            if kind == "crossattention" and layer % 2:
                continue
            src = h if kv is None else kv
            a = _attend(
                _lin(seed, p + kind + ".self.query", h),
                _lin(seed, p + kind + ".self.key", src),
                _lin(seed, p + kind + ".self.value", src),
                cfg.qformer_heads,
                m,
            )
            h = _ln(seed, p + kind + ".output.LayerNorm", _lin(seed, p + kind + ".output.dense", a) + h, 1e-12)
        ff = _lin(seed, p + "output_query.dense", F.gelu(_lin(seed, p + "intermediate_query.dense", h)))
        h = _ln(seed, p + "output_query.LayerNorm", ff + h, 1e-12)
    return h


def reference_latents(cfg, vit, seed, pixels):
    h = reference_queries(cfg, vit, seed, pixels)
    return _lin(seed, "encode_task_layer.2", torch.tanh(_lin(seed, "encode_task_layer.0", h)))


def reference_embedding(cfg, seed, codes):
    x = seed["quantize.embedding.weight"][codes]
    x = _lin(seed, "decode_task_layer.2", torch.tanh(_lin(seed, "decode_task_layer.0", x))) + seed["pos_embed_image"]
    for i in range(cfg.decode_layers):
        b = f"blocks_image.{i}."
        x = _prenorm_block(seed, b, x, cfg.decode_heads, seed[b + "attn.qkv.bias"], 1e-6)
    x = F.linear(
        F.relu(F.linear(F.relu(F.linear(x, seed["image_down.0.weight"])), seed["image_down.2.weight"])),
        seed["image_down.4.weight"],
    )
    return _lin(seed, "distill_image_proj", x.reshape(x.shape[0], -1))


def brute_force_codes(z: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    flat, book = z.detach().reshape(-1, z.shape[-1]), book.detach()
    out = [min(range(book.shape[0]), key=lambda j, v=v: float(((v - book[j]) ** 2).sum())) for v in flat]
    return torch.tensor(out).view(z.shape[:-1])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seed")
    vit, seed = lavis_vit_state(SMALL), lavis_seed_state(SMALL)
    return SimpleNamespace(
        vit=vit, seed=seed, vit_path=save(tmp, "eva_vit_g.pth", vit), seed_path=save(tmp, "seed_quantizer.pt", seed)
    )


@pytest.fixture(scope="module")
def loaded(files):
    return load_seed_tokenizer(files.seed_path, files.vit_path, config=SMALL)


def _pixels(batch=2, seed=3):
    return torch.randn(batch, 3, SMALL.input_size, SMALL.input_size, generator=torch.Generator().manual_seed(seed))


# ----- encode / decode maths ----------------------------------------------------------------------------------------
def test_loaded_encoder_matches_the_seed_reference(files, loaded):
    pixels = _pixels()
    with torch.no_grad():
        ours = loaded.encode_latents(pixels)
    want = reference_latents(SMALL, files.vit, files.seed, pixels)
    assert ours.shape == (2, SMALL.num_queries, SMALL.code_dim)
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)
    codes = loaded.encode_codes(pixels)
    assert codes.shape == (2, SMALL.num_queries) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < SMALL.codebook_size
    assert torch.equal(codes, brute_force_codes(want, files.seed["quantize.embedding.weight"]))


def _perturb_last_query(model, image):
    with torch.no_grad():
        before = model.query_features(image)
        saved = model.query_tokens[0, -1].clone()
        model.query_tokens[0, -1] = torch.linspace(-1.0, 1.0, SMALL.qformer_width)  # not a constant: LN removes it
        after = model.query_features(image)
        model.query_tokens[0, -1] = saved
    return before, after


def test_qformer_self_attention_is_causal_among_queries(files, loaded):
    """SEED's Q-Former hides query j > i from query i (qformer_causual.py adds -10000 above the diagonal)."""
    pixels = _pixels(batch=1)
    with torch.no_grad():
        image = loaded.image_features(pixels)
    before, after = _perturb_last_query(loaded, image)
    torch.testing.assert_close(after[:, :-1], before[:, :-1], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(after[:, -1], before[:, -1])
    torch.testing.assert_close(before, reference_queries(SMALL, files.vit, files.seed, pixels), atol=1e-4, rtol=1e-4)
    # control: without the mask (transformers' Blip2QFormerModel default) the earlier queries see the change
    bidirectional = load_seed_tokenizer(
        files.seed_path, files.vit_path, config=dataclasses.replace(SMALL, causal_queries=False)
    )
    before, after = _perturb_last_query(bidirectional, image)
    assert (after[:, :-1] - before[:, :-1]).abs().max() > 1e-5
    torch.testing.assert_close(
        before, reference_queries(SMALL, files.vit, files.seed, pixels, causal=False), atol=1e-4, rtol=1e-4
    )


def test_decode_path_matches_the_seed_reference(files, loaded):
    codes = torch.randint(0, SMALL.codebook_size, (3, SMALL.num_queries), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = loaded.embed_codes(codes)
    assert ours.shape == (3, SMALL.embed_dim)
    torch.testing.assert_close(ours, reference_embedding(SMALL, files.seed, codes), atol=1e-5, rtol=1e-5)


def test_quantizer_is_plain_euclidean_nearest_codeword():
    gen = torch.Generator().manual_seed(5)
    quantizer = SeedVectorQuantizer(50, 6)
    with torch.no_grad():
        quantizer.embedding.weight.copy_(torch.randn(50, 6, generator=gen) * torch.rand(50, 1, generator=gen) * 3)
    z = torch.randn(4, 7, 6, generator=gen)
    codes = quantizer(z)
    assert torch.equal(codes, brute_force_codes(z, quantizer.embedding.weight))
    # no l2 normalisation: a long codeword pointing the same way is not the nearest
    with torch.no_grad():
        quantizer.embedding.weight.copy_(torch.tensor([[10.0, 0, 0, 0, 0, 0], [0.5, 0.6, 0, 0, 0, 0]]).repeat(25, 1))
    assert quantizer(torch.tensor([[1.0, 0, 0, 0, 0, 0]])).item() == 1
    assert quantizer(torch.tensor([[0.5, 0.6, 0, 0, 0, 0]])).item() == 1  # ties resolve to the lowest index


def test_random_small_tokenizer_shapes():
    torch.manual_seed(0)
    model = SeedImageTokenizer(SMALL).eval()
    codes = model.encode_codes(_pixels())
    assert codes.shape == (2, SMALL.num_queries)
    assert int(codes.min()) >= 0 and int(codes.max()) < SMALL.codebook_size
    assert model(codes).shape == (2, SMALL.embed_dim)


# ----- loading ------------------------------------------------------------------------------------------------------
def test_loader_fills_every_tensor_from_the_files(files, loaded):
    assert not loaded.training and loaded.dtype == torch.float32
    qkv = loaded.visual_encoder.encoder.layers[1].self_attn.qkv.bias
    q, v = files.vit["blocks.1.attn.q_bias"], files.vit["blocks.1.attn.v_bias"]
    assert torch.equal(qkv, torch.cat([q, torch.zeros_like(q), v]))
    assert torch.equal(loaded.ln_vision.weight, files.seed["ln_vision.weight"])
    attention = loaded.qformer.encoder.layer[2].crossattention.attention
    assert torch.equal(attention.key.weight, files.seed["Qformer.bert.encoder.layer.2.crossattention.self.key.weight"])
    assert not hasattr(loaded.qformer.encoder.layer[1], "crossattention")
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])


def test_fp16_vit_file_loads_and_casts(tmp_path, files):
    half = {k: v.half() for k, v in files.vit.items()}
    model = load_seed_tokenizer(files.seed_path, save(tmp_path, "vit16.pth", half), config=SMALL)
    assert model.visual_encoder.embeddings.class_embedding.dtype == torch.float32
    low = load_seed_tokenizer(files.seed_path, files.vit_path, config=SMALL, dtype=torch.bfloat16)
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}
    codes = low.encode_codes(_pixels())  # fp32 pixels are cast; ln_vision runs in fp32 inside
    assert codes.shape == (2, SMALL.num_queries)
    with torch.no_grad():
        assert low.embed_codes(codes).dtype == torch.bfloat16


def test_decode_only_load_needs_no_vit(files, loaded):
    model = load_seed_tokenizer(files.seed_path, config=SMALL)
    assert not model.config.with_encoder and not hasattr(model, "qformer")
    codes = torch.randint(0, SMALL.codebook_size, (1, SMALL.num_queries), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model.embed_codes(codes), loaded.embed_codes(codes))
    with pytest.raises(RuntimeError, match="vit_path"):
        model.encode_codes(_pixels(1))


def _expect_error(tmp_path, seed=None, vit=None, match="", **kwargs):
    seed_path = save(tmp_path, "seed_quantizer.pt", seed) if seed is not None else None
    vit_path = save(tmp_path, "eva_vit_g.pth", vit) if vit is not None else None
    with pytest.raises(ConfigError, match=match) as info:
        load_seed_tokenizer(seed_path, vit_path, config=SMALL, **kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    "edit, key",
    [
        ("drop", "quantize.embedding.weight"),
        ("drop", "Qformer.bert.encoder.layer.2.crossattention.self.value.bias"),
        ("drop", "ln_vision.weight"),
        ("shape", "distill_image_proj.weight"),
        ("shape", "Qformer.bert.encoder.layer.0.crossattention.self.key.weight"),
        ("add", "mystery.weight"),
        ("add", "visual_encoder.blocks.0.norm1.weight"),
        ("int", "pos_embed_image"),
    ],
)
def test_bad_seed_file_names_file_and_key(tmp_path, files, edit, key):
    seed = dict(files.seed)
    if edit == "drop":
        del seed[key]
    elif edit == "shape":
        seed[key] = torch.zeros(*seed[key].shape[:-1], seed[key].shape[-1] + 1)
    elif edit == "add":
        seed[key] = torch.zeros(3)
    else:
        seed[key] = seed[key].long()
    message = _expect_error(tmp_path, seed, files.vit, match=key.replace(".", r"\."))
    assert "seed_quantizer.pt" in message
    if edit == "drop":  # decode-only loading still requires the whole SEED file
        _expect_error(tmp_path, seed, None, match=key.replace(".", r"\."))


def test_unknown_key_can_be_named_in_ignore_prefixes(tmp_path, files):
    seed = {**files.seed, "text_down.weight": torch.zeros(3)}
    message = _expect_error(tmp_path, seed, files.vit, match="text_down")
    assert "ignore_prefixes" in message
    model = load_seed_tokenizer(
        save(tmp_path, "ok.pt", seed), files.vit_path, config=SMALL, ignore_prefixes=("text_down.",)
    )
    assert model.config.with_encoder


@pytest.mark.parametrize(
    "edit, key",
    [("drop", "blocks.1.attn.v_bias"), ("drop", "cls_token"), ("shape", "pos_embed"), ("add", "blocks.0.attn.k_bias")],
)
def test_bad_vit_file_names_file_and_key(tmp_path, files, edit, key):
    vit = dict(files.vit)
    if edit == "drop":
        del vit[key]
    elif edit == "shape":
        vit[key] = torch.zeros(1, SMALL.vit_tokens + 1, SMALL.vit_width)
    else:
        vit[key] = torch.zeros(SMALL.vit_width)
    message = _expect_error(tmp_path, files.seed, vit, match=key.replace(".", r"\."))
    assert "eva_vit_g.pth" in message


def test_vit_file_may_hold_the_parts_blip2_drops(tmp_path, files):
    d = SMALL.vit_width
    vit = {
        **files.vit,
        f"blocks.{SMALL.vit_layers}.norm1.weight": torch.ones(d),
        "norm.weight": torch.ones(d),
        "head.weight": torch.ones(8, d),
    }
    load_seed_tokenizer(files.seed_path, save(tmp_path, "vit.pth", vit), config=SMALL)


def test_missing_or_unreadable_file(tmp_path, files):
    with pytest.raises(ConfigError, match="not found"):
        load_seed_tokenizer(tmp_path / "nope.pt", config=SMALL)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="garbage.pt"):
        load_seed_tokenizer(files.seed_path, garbage, config=SMALL)


# ----- full AnyGPT size, on the meta device -------------------------------------------------------------------------
def test_full_size_layout_and_parameter_count():
    cfg = SeedTokenizerConfig()
    shapes = checkpoint_shapes(cfg)
    assert len(shapes["vit"]) == 4 + 39 * 13 == 511  # AnyGPT issue #14: "missing keys: 511" = the ViT
    assert len(shapes["seed"]) == 320
    vit, seed = shapes["vit"], shapes["seed"]
    assert vit["pos_embed"] == (1, 257, 1408) and vit["patch_embed.proj.weight"] == (1408, 3, 14, 14)
    assert vit["blocks.38.attn.qkv.weight"] == (4224, 1408) and vit["blocks.38.attn.q_bias"] == (1408,)
    assert vit["blocks.0.mlp.fc1.weight"] == (6144, 1408) and "blocks.39.norm1.weight" not in vit
    assert seed["query_tokens"] == (1, 32, 768) and seed["ln_vision.weight"] == (1408,)
    assert seed["Qformer.bert.encoder.layer.10.crossattention.self.key.weight"] == (768, 1408)
    assert "Qformer.bert.encoder.layer.11.crossattention.self.key.weight" not in seed
    assert seed["Qformer.bert.encoder.layer.11.intermediate_query.dense.weight"] == (3072, 768)
    assert seed["encode_task_layer.2.weight"] == (32, 768) and seed["quantize.embedding.weight"] == (8192, 32)
    assert seed["decode_task_layer.2.weight"] == (768, 32) and seed["blocks_image.3.attn.qkv.bias"] == (2304,)
    assert seed["image_down.0.weight"] == (256, 768) and seed["image_down.4.weight"] == (32, 128)
    assert seed["distill_image_proj.weight"] == (1024, 1024)

    d, f, n = 1408, 6144, 257
    vit_block = 4 * d + 3 * d * d + 2 * d + d * d + d + d * f + f + f * d + d  # norms, qkv + q/v bias, proj, mlp
    vit_params = 39 * vit_block + d * 3 * 14 * 14 + d + d + n * d
    w, m = 768, 3072
    attn = 4 * (w * w + w) + 2 * w
    cross = 2 * (w * w + w) + 2 * (d * w + w) + 2 * w
    qformer = 2 * w + 12 * (attn + (w * m + m) + (m * w + w) + 2 * w) + 6 * cross
    decoder_block = 4 * w + (3 * w * w + 3 * w) + (w * w + w) + (w * m + m) + (m * w + w)
    rest = (
        2 * d
        + 32 * w
        + (w * w + w)
        + (w * 32 + 32)
        + 8192 * 32
        + (32 * 32 + 32)
        + (32 * w + w)
        + 32 * w
        + 4 * decoder_block
        + (w * 256 + 256 * 128 + 128 * 32)
        + (1024 * 1024 + 1024)
    )
    assert sum(math.prod(s) for s in vit.values()) == vit_params
    assert sum(math.prod(s) for s in seed.values()) == qformer + rest
    with torch.device("meta"):
        model = SeedImageTokenizer(cfg)
    assert all(p.is_meta for p in model.parameters())
    # the module holds the ViT's key bias too (39 zero vectors of 1408)
    assert sum(p.numel() for p in model.parameters()) == vit_params + 39 * d + qformer + rest
    assert round(vit_params / 1e9, 2) == 0.99 and round((qformer + rest) / 1e6) == 136


def test_config_validation():
    with pytest.raises(ValueError, match="patch_size"):
        SeedTokenizerConfig(input_size=30)
    with pytest.raises(ValueError, match="heads"):
        SeedTokenizerConfig(vit_heads=7)
    assert SeedTokenizerConfig().vit_tokens == 257 and SeedTokenizerConfig().distill_in == 1024


# ----- rendering ----------------------------------------------------------------------------------------------------
class FakePipeline:
    def __init__(self, side: int = 768):
        self.calls: list[dict] = []
        self.image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return SimpleNamespace(images=[self.image])


def test_renderer_calls_the_pipeline_like_anygpt():
    fake = FakePipeline()
    renderer = UnclipRenderer(fake)
    embedding = torch.randn(1024)
    png = renderer.render_png(embedding)
    renderer.render_png(embedding)
    first, second = fake.calls
    assert torch.equal(first["image_embeds"], embedding[None])
    assert first["guidance_scale"] == 10 and first["noise_level"] == 0 and first["num_inference_steps"] == 20
    assert first["latents"].shape == (1, 4, 96, 96) and first["height"] == first["width"] == 768
    assert torch.equal(first["latents"], second["latents"])  # fixed latents
    assert torch.equal(first["latents"], UnclipRenderer(FakePipeline(1)).latents)  # same seed, same latents
    assert torch.equal(first["generator"].get_state(), second["generator"].get_state())
    with Image.open(io.BytesIO(png)) as picture:
        assert picture.format == "PNG" and np.array_equal(np.asarray(picture), np.asarray(fake.image))


def test_render_config_is_configurable():
    fake = FakePipeline(64)
    config = UnclipRenderConfig(num_inference_steps=5, guidance_scale=3.0, latent_size=8, seed=7)
    renderer = UnclipRenderer(fake, config, dtype=torch.float64)
    renderer.render(torch.randn(1, 16))
    call = fake.calls[0]
    assert call["num_inference_steps"] == 5 and call["guidance_scale"] == 3.0 and call["height"] == 64
    assert call["latents"].shape == (1, 4, 8, 8) and call["latents"].dtype == torch.float64
    assert renderer.image_size == 64


def test_missing_diffusers_says_which_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"anystream\[images\]"):
        import_unclip_pipeline()
    with pytest.raises(ImportError, match=r"anystream\[images\]"):
        UnclipRenderer.from_folder(tmp_path)


def test_from_folder_loads_locally(monkeypatch, tmp_path):
    recorded = {}

    class FakeUnclip(FakePipeline):
        @classmethod
        def from_pretrained(cls, folder, **kwargs):
            recorded.update(folder=folder, **kwargs)
            return cls()

        def to(self, device):
            recorded["device"] = device
            return self

        def set_progress_bar_config(self, **kwargs):
            recorded["progress"] = kwargs

    module = types.ModuleType("diffusers")
    module.StableUnCLIPImg2ImgPipeline = FakeUnclip
    monkeypatch.setitem(sys.modules, "diffusers", module)
    with pytest.raises(ConfigError, match="model_index.json"):
        UnclipRenderer.from_folder(tmp_path)
    (tmp_path / "model_index.json").write_text("{}")
    renderer = UnclipRenderer.from_folder(tmp_path)
    assert recorded["folder"] == str(tmp_path) and recorded["local_files_only"] is True
    assert recorded["torch_dtype"] == torch.float32 and recorded["progress"] == {"disable": True}
    assert isinstance(renderer.pipeline, FakeUnclip)


# ----- the pipeline-facing codec ------------------------------------------------------------------------------------
def test_codec_decode_png_uses_the_embedding_and_the_count_policy(loaded):
    fake = FakePipeline()
    codec = SeedImageCodec(loaded, UnclipRenderer(fake))
    assert (codec.codebook_size, codec.image_size, codec.tokens_per_image, codec.input_size) == (40, 768, 6, 28)
    png = codec.decode_png([3, 4, 5], strict=False)
    assert png.startswith(b"\x89PNG")
    with torch.no_grad():
        want = loaded.embed_codes(torch.tensor([[3, 4, 5, 5, 5, 5]]))
    torch.testing.assert_close(fake.calls[0]["image_embeds"], want)
    with pytest.raises(ValueError, match="expected exactly 6"):
        codec.decode_png([3, 4, 5], strict=True)
    with pytest.raises(ValueError, match="no tokens"):
        codec.decode_png([], strict=False)
    with pytest.raises(ValueError, match=r"\[0, 40\)"):
        codec.decode_png([0, 1, 2, 3, 4, 40])
    with pytest.raises(RuntimeError, match="renderer"):
        SeedImageCodec(loaded).decode_png([1] * 6)


def test_codec_encode_resizes_bicubically_and_normalises(loaded):
    codec = SeedImageCodec(loaded, UnclipRenderer(FakePipeline()))
    grey = np.full((50, 40, 3), 128, dtype=np.uint8)
    x = clip_preprocess(grey, 28)
    assert x.shape == (1, 3, 28, 28)
    want = (128 / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(x[0, :, 5, 7], want)
    image = np.random.default_rng(1).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    resized = np.asarray(Image.fromarray(image).resize((28, 28), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    manual = (torch.from_numpy(resized).permute(2, 0, 1) - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(
        CLIP_STD
    )[:, None, None]
    torch.testing.assert_close(clip_preprocess(image, 28)[0], manual)
    codes = codec.encode(image)
    assert len(codes) == 6 and all(isinstance(c, int) and 0 <= c < 40 for c in codes)
    assert codes == loaded.encode_codes(manual[None]).tolist()[0]
    with pytest.raises(ValueError, match="uint8"):
        codec.encode(image.astype(np.float32))
