"""AnyGPT's image modality: the SEED tokenizer (``AILab-CVC/seed-tokenizer-2``) and its SD-2.1-unCLIP render path.

This is the full-size alternative to the embedded ``ImageDetokenizer`` (``assistant/models/embedded/image.py``):
``SeedImageCodec`` is an ``ImageCodec`` (``assistant.models.interfaces``), so ``LocalMediaBackend`` takes either family.

Encode (image -> 32 codes), as ``Blip2QformerQuantizer.get_codebook_indices``:
    uint8 [H, W, 3] -> PIL bicubic resize to 224 x 224 -> [0, 1] -> CLIP mean/std  -> [B, 3, 224, 224]
    -> EVA-CLIP ViT-g/14 (1408 wide, 39 blocks, 16 heads of 88, MLP 6144, no final norm) -> [B, 257, 1408]
    -> ln_vision (LayerNorm, eps 1e-5, computed in fp32)                              -> [B, 257, 1408]
    -> causal Q-Former: 32 learned queries, BERT-base (768 wide, 12 layers, cross-attention to the image in layers
       0, 2, ..., 10), self-attention among the queries masked causally (query i sees queries <= i) -> [B, 32, 768]
    -> encode_task_layer: Linear 768->768, Tanh, Linear 768->32                         -> [B, 32, 32]
    -> VectorQuantizer2 (8192 x 32): nearest codeword by squared Euclidean distance, no l2 normalisation, ties to
       the lowest index                                                                 -> codes [B, 32]
Decode (32 codes -> 1024-d unCLIP image embedding), as ``Blip2QformerQuantizer.get_codebook_entry``:
    codes [B, 32] -> codebook rows [B, 32, 32] -> decode_task_layer: Linear 32->32, Tanh, Linear 32->768
    -> + pos_embed_image -> 4 pre-norm transformer blocks (12 heads, MLP 3072, LayerNorm eps 1e-6)  [B, 32, 768]
    -> image_down: Linear 768->256, ReLU, Linear 256->128, ReLU, Linear 128->32 (no biases)       [B, 32, 32]
    -> flatten [B, 1024] -> distill_image_proj Linear 1024->1024                          -> [B, 1024]
Render (``UnclipRenderer``): the embedding goes to diffusers' ``StableUnCLIPImg2ImgPipeline`` (a local copy of
``stabilityai/stable-diffusion-2-1-unclip``) as ``image_embeds`` with guidance 10, noise_level 0, 20 steps and one
fixed latent tensor [1, 4, 96, 96] -> a 768 x 768 image, as ``seed2/seed_llama_tokenizer.py: ImageTokenizer.decode``.
AnyGPT draws its latents once per process from the global RNG; here they come from ``UnclipRenderConfig.seed``, and
a generator seeded the same way is passed too (noise_level 0 still draws a small noise for the image embedding), so
a code sequence renders to the same picture in every process. diffusers is optional: it is imported only when a
pipeline is loaded from a folder (the ``[images]`` extra).

Which transformers modules, and where the maths differs (transformers 5.x, ``models/blip_2/modeling_blip_2.py``):
- ``Blip2VisionModel`` is the ViT-g. Its attention has one ``qkv.bias`` of 3 * 1408 where LAVIS' EVA ViT has
  ``q_bias`` and ``v_bias`` and a zero key bias: the loader writes cat(q_bias, 0, v_bias). Its ``post_layernorm``
  uses the blocks' eps 1e-6, while SEED's ``ln_vision`` is a separate LayerNorm with eps 1e-5 run in fp32: we set
  ``post_layernorm`` to identity and keep our own ``ln_vision`` (``Fp32LayerNorm``). Same GELU (exact), no layer
  scale in either, same pre-norm blocks, same patch/cls/position embeddings.
- ``Blip2QFormerModel`` is the Q-Former (``use_qformer_text_input=False`` drops the text feed-forward, as SEED sets
  ``layer.intermediate`` / ``layer.output`` to None; ``cross_attention_frequency=2`` and ``layer_idx % 2 == 0``
  match LAVIS' ``layer_num % cross_attention_freq == 0``). Its ``forward`` always builds a bidirectional mask, but
  SEED's Q-Former is causal: ``seed2/seed_qformer/qformer_causual.py: BertModel.forward`` sets ``is_casual`` when
  there are 32 query embeddings, and ``get_extended_attention_mask`` then adds (1 - tril) * -10000 to the
  self-attention scores. So we run ``qformer.layernorm`` and ``qformer.encoder`` ourselves with that additive mask
  (``SeedTokenizerConfig.causal_queries``). Dropout is set to 0 (inference only).
- The four decode blocks (LAVIS ``seed2/seed_qformer/vit.py: Block``: full qkv bias, pre-norm) and the quantiser
  are our own small modules (``SeedBlock``, ``SeedVectorQuantizer``); their parameter names equal the checkpoint's.

Checkpoint layout (derived from OpenMOSS/AnyGPT @ 282b58f, folder ``seed2/``; the same classes are in
AILab-CVC/SEED ``MultiModalLLM/src/tokenizer/qformer/``). i = block index, L = Q-Former layer, C = L in 0, 2, .., 10.
``eva_vit_g.pth`` (LAVIS' EVA ViT-g; ``seed_qformer/eva_vit.py: VisionTransformer`` via ``create_eva_vit_g``:
patch 14, width 1408, depth 39, heads 16, mlp_ratio 4.3637 -> 6144, qkv_bias, LayerNorm eps 1e-6, no init_values):
    cls_token [1, 1, 1408]             pos_embed [1, 257, 1408]
    patch_embed.proj.weight [1408, 3, 14, 14]   patch_embed.proj.bias [1408]
    blocks.i.norm1.{weight,bias} [1408]    blocks.i.attn.qkv.weight [4224, 1408]   (no qkv.bias in the file)
    blocks.i.attn.q_bias [1408]            blocks.i.attn.v_bias [1408]
    blocks.i.attn.proj.weight [1408, 1408] blocks.i.attn.proj.bias [1408]
    blocks.i.norm2.{weight,bias} [1408]    blocks.i.mlp.fc1.weight [6144, 1408]  blocks.i.mlp.fc1.bias [6144]
    blocks.i.mlp.fc2.weight [1408, 6144]   blocks.i.mlp.fc2.bias [1408]
    -> 4 + 39 * 13 = 511 keys, which is the "missing keys: 511" AnyGPT prints when it overlays seed_quantizer.pt
       (OpenMOSS/AnyGPT issue #14): the SEED file holds no ViT weight.
``seed_quantizer.pt`` (``seed_qformer/qformer_quantizer.py: Blip2QformerQuantizer``, Q-Former classes from
``seed_qformer/qformer_causual.py``, ``ln_vision`` and ``init_Qformer`` from ``seed_qformer/blip2.py``), required:
    ln_vision.{weight,bias} [1408]                       query_tokens [1, 32, 768]
    Qformer.bert.embeddings.LayerNorm.{weight,bias} [768]
    Qformer.bert.encoder.layer.L.attention.self.{query,key,value}.weight [768, 768], .bias [768]
    Qformer.bert.encoder.layer.L.attention.output.dense.weight [768, 768], .bias; ...attention.output.LayerNorm.*
    Qformer.bert.encoder.layer.C.crossattention.self.query.weight [768, 768]
    Qformer.bert.encoder.layer.C.crossattention.self.{key,value}.weight [768, 1408], .bias [768]
    Qformer.bert.encoder.layer.C.crossattention.output.dense.* [768, 768]; ...crossattention.output.LayerNorm.*
    Qformer.bert.encoder.layer.L.intermediate_query.dense.weight [3072, 768], .bias [3072]
    Qformer.bert.encoder.layer.L.output_query.dense.weight [768, 3072], .bias [768]; ...output_query.LayerNorm.*
    encode_task_layer.0.weight [768, 768], .0.bias [768], .2.weight [32, 768], .2.bias [32]
    quantize.embedding.weight [8192, 32]
    decode_task_layer.0.weight [32, 32], .0.bias [32], .2.weight [768, 32], .2.bias [768]
    pos_embed_image [1, 32, 768]
    blocks_image.i.norm1.*, .attn.qkv.weight [2304, 768], .attn.qkv.bias [2304], .attn.proj.* [768, 768],
        .norm2.*, .mlp.fc1.weight [3072, 768], .mlp.fc2.weight [768, 3072] (+ biases), i in 0..3
    image_down.0.weight [256, 768], image_down.2.weight [128, 256], image_down.4.weight [32, 128]
    distill_image_proj.weight [1024, 1024], distill_image_proj.bias [1024]
    -> 320 keys. Known keys we read past (``SEED_IGNORED``, each with its reason); any other key is an error unless
    the caller names its prefix in ``ignore_prefixes``. The reference loads this file with strict=False and reports
    146 unexpected keys (issue #14) that the released code does not list. By size they hold about 143 M parameters
    (the file is 1.23 GB of fp32, the 320 keys above plus the recon_s branch about 164 M parameters): most likely
    the Q-Former's text branch (about 105 M) and text-distillation blocks. ``SEED_IGNORED`` names the training-only
    parts found in the SEED sources, but we could not check the real file's key list.
Our module names differ from the checkpoint's only inside the transformers modules (``checkpoint_names`` maps them);
errors always name the file and the key as the file spells it.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from assistant.models.checkpoint import check_floating, check_state_dict, read_torch_state_dict
from assistant.models.config_io import ConfigError
from assistant.models.interfaces import ImageCodecFromConfig, fit_token_count

logger = logging.getLogger(__name__)

# CLIP's image normalisation (``seed2/seed_llama_tokenizer.py: ImageTokenizer.processor``)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CAUSAL_MASK_VALUE = -10000.0  # what LAVIS' get_extended_attention_mask adds for a masked position
IMAGES_EXTRA_HINT = "install the images extra: pip install 'anystream[images]' (diffusers)"


# ----- config -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedTokenizerConfig:
    """Sizes of the SEED tokenizer; the defaults are AnyGPT's (``seed-tokenizer-2``), small values serve tests.

    input_size / patch_size: ViT input side (224) and patch side (14) -> (224 / 14)^2 + 1 = 257 image tokens.
    vit_width, vit_layers, vit_heads, vit_mlp, vit_eps: EVA ViT-g/14 as BLIP-2 uses it (1408, 39, 16, 6144, 1e-6).
    ln_vision_eps: SEED's ``ln_vision`` (torch's default 1e-5).
    num_queries: Q-Former query tokens = codes per image (32).
    qformer_width, qformer_layers, qformer_heads, qformer_mlp, qformer_eps: BERT-base (768, 12, 12, 3072, 1e-12).
    cross_attention_freq: cross-attention in Q-Former layers with ``index % freq == 0`` (2).
    causal_queries: causal self-attention among the queries (SEED: true whenever there are 32 queries).
    codebook_size, code_dim: VectorQuantizer2 (8192 x 32).
    decode_layers, decode_heads, decode_mlp, decode_eps: ``blocks_image`` (4, 12, 3072, 1e-6).
    image_down: widths of the per-query down projection (256, 128, 32); the last times num_queries feeds
        ``distill_image_proj``.
    embed_dim: width of the unCLIP image embedding (SD-2.1-unCLIP: 1024, a CLIP ViT-H/14 image embedding).
    with_encoder: build the image -> codes path (ViT, ln_vision, Q-Former, encode_task_layer); false for a
        decode-only tokenizer (codes -> embedding), which needs no ViT weights.
    """

    input_size: int = 224
    patch_size: int = 14
    vit_width: int = 1408
    vit_layers: int = 39
    vit_heads: int = 16
    vit_mlp: int = 6144
    vit_eps: float = 1e-6
    ln_vision_eps: float = 1e-5
    num_queries: int = 32
    qformer_width: int = 768
    qformer_layers: int = 12
    qformer_heads: int = 12
    qformer_mlp: int = 3072
    qformer_eps: float = 1e-12
    cross_attention_freq: int = 2
    causal_queries: bool = True
    codebook_size: int = 8192
    code_dim: int = 32
    decode_layers: int = 4
    decode_heads: int = 12
    decode_mlp: int = 3072
    decode_eps: float = 1e-6
    image_down: tuple[int, ...] = (256, 128, 32)
    embed_dim: int = 1024
    with_encoder: bool = True

    def __post_init__(self) -> None:
        sizes = (
            self.input_size,
            self.patch_size,
            self.vit_width,
            self.vit_layers,
            self.vit_heads,
            self.vit_mlp,
            self.num_queries,
            self.qformer_width,
            self.qformer_layers,
            self.qformer_heads,
            self.qformer_mlp,
            self.cross_attention_freq,
            self.code_dim,
            self.decode_heads,
            self.decode_mlp,
            self.embed_dim,
        )
        if min(sizes) < 1 or self.decode_layers < 0 or self.codebook_size < 2:
            raise ValueError("every size must be >= 1 (decode_layers >= 0, codebook_size >= 2)")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
        for name, width, heads in (
            ("vit", self.vit_width, self.vit_heads),
            ("qformer", self.qformer_width, self.qformer_heads),
            ("decode", self.qformer_width, self.decode_heads),
        ):
            if width % heads:
                raise ValueError(f"{name} width {width} is not a multiple of its {heads} heads")
        if not self.image_down or min(self.image_down) < 1:
            raise ValueError(f"image_down must be a non-empty tuple of widths, got {self.image_down}")
        object.__setattr__(self, "image_down", tuple(int(w) for w in self.image_down))

    @property
    def vit_tokens(self) -> int:
        """Image tokens the Q-Former attends to: patches plus the class token (257)."""
        return (self.input_size // self.patch_size) ** 2 + 1

    @property
    def distill_in(self) -> int:
        """Input width of ``distill_image_proj``: num_queries * image_down[-1] (32 * 32 = 1024)."""
        return self.num_queries * self.image_down[-1]


# ----- blocks -------------------------------------------------------------------------------------------------------
class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back (SEED's ``ln_vision``, ``seed_qformer/blip2.py: LayerNorm``)."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class SeedAttention(nn.Module):
    """Bidirectional multi-head self-attention with one fused qkv projection (full bias), scale head_dim^-0.5."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, heads, N, head_dim]
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class SeedMlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SeedBlock(nn.Module):
    """Pre-norm transformer block of ``blocks_image`` (LAVIS ``vit.py: Block``): x + attn(norm1(x)), + mlp(norm2)."""

    def __init__(self, width: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = SeedAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = SeedMlp(width, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SeedVectorQuantizer(nn.Module):
    """VectorQuantizer2 at inference: nearest codeword by squared Euclidean distance |z|^2 + |e|^2 - 2 z.e (no
    normalisation; argmin, so ties go to the lowest index). Distances are computed in fp32."""

    def __init__(self, codebook_size: int, code_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, code_dim)

    def forward(self, z: Tensor) -> Tensor:
        """``[..., D]`` -> codes ``[...]`` (int64)."""
        flat = z.reshape(-1, z.shape[-1]).float()  # [M, D]
        book = self.embedding.weight.float()  # [K, D]
        distances = flat.pow(2).sum(-1, keepdim=True) + book.pow(2).sum(-1)[None] - 2.0 * flat @ book.T  # [M, K]
        return distances.argmin(dim=-1).view(z.shape[:-1])

    def lookup(self, codes: Tensor) -> Tensor:
        """codes ``[...]`` -> codebook rows ``[..., D]``."""
        return self.embedding(codes)


def causal_query_mask(length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Additive self-attention mask ``[1, 1, N, N]``: 0 where query i may see query j (j <= i), -10000 elsewhere."""
    allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    mask = torch.zeros(length, length, dtype=dtype, device=device).masked_fill(~allowed, CAUSAL_MASK_VALUE)
    return mask[None, None]


# ----- the tokenizer ------------------------------------------------------------------------------------------------
class SeedImageTokenizer(nn.Module):
    """SEED: image -> ``num_queries`` codes (``encode_codes``) and codes -> unCLIP image embedding (``embed_codes``).

    Build the real one with ``load_seed_tokenizer``; constructing it directly gives random weights (tests).
    """

    def __init__(self, config: SeedTokenizerConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or SeedTokenizerConfig()
        width = cfg.qformer_width
        if cfg.with_encoder:
            from transformers import Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel

            vision = Blip2VisionConfig(
                hidden_size=cfg.vit_width,
                intermediate_size=cfg.vit_mlp,
                num_hidden_layers=cfg.vit_layers,
                num_attention_heads=cfg.vit_heads,
                image_size=cfg.input_size,
                patch_size=cfg.patch_size,
                hidden_act="gelu",
                layer_norm_eps=cfg.vit_eps,
                attention_dropout=0.0,
                qkv_bias=True,
            )
            self.visual_encoder = Blip2VisionModel(vision)
            # EVA ViT-g has no final norm; ln_vision follows
            self.visual_encoder.post_layernorm = nn.Identity()  # type: ignore[assignment]
            self.ln_vision = Fp32LayerNorm(cfg.vit_width, eps=cfg.ln_vision_eps)
            self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_queries, width))
            qformer = Blip2QFormerConfig(
                hidden_size=width,
                num_hidden_layers=cfg.qformer_layers,
                num_attention_heads=cfg.qformer_heads,
                intermediate_size=cfg.qformer_mlp,
                hidden_act="gelu",
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
                layer_norm_eps=cfg.qformer_eps,
                cross_attention_frequency=cfg.cross_attention_freq,
                encoder_hidden_size=cfg.vit_width,
                use_qformer_text_input=False,
            )
            self.qformer = Blip2QFormerModel(qformer)
            self.encode_task_layer = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, cfg.code_dim))
        self.quantize = SeedVectorQuantizer(cfg.codebook_size, cfg.code_dim)
        self.decode_task_layer = nn.Sequential(
            nn.Linear(cfg.code_dim, cfg.code_dim), nn.Tanh(), nn.Linear(cfg.code_dim, width)
        )
        self.pos_embed_image = nn.Parameter(torch.zeros(1, cfg.num_queries, width))
        self.blocks_image = nn.ModuleList(
            SeedBlock(width, cfg.decode_heads, cfg.decode_mlp, cfg.decode_eps) for _ in range(cfg.decode_layers)
        )
        down: list[nn.Module] = []
        widths = (width, *cfg.image_down)
        for i in range(len(cfg.image_down)):
            if i:
                down.append(nn.ReLU())
            down.append(nn.Linear(widths[i], widths[i + 1], bias=False))
        self.image_down = nn.Sequential(*down)
        self.distill_image_proj = nn.Linear(cfg.distill_in, cfg.embed_dim)

    @property
    def device(self) -> torch.device:
        return self.quantize.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.quantize.embedding.weight.dtype

    # ----- encode -------------------------------------------------------------------------------------------------
    def _require_encoder(self) -> None:
        if not self.config.with_encoder:
            raise RuntimeError(
                "this SEED tokenizer was built without its image encoder (decode only); load it with "
                "vit_path=<eva_vit_g.pth> to encode images"
            )

    def image_features(self, pixels: Tensor) -> Tensor:
        """CLIP-normalised ``[B, 3, S, S]`` -> ``ln_vision(ViT(x))`` ``[B, vit_tokens, vit_width]``."""
        self._require_encoder()
        hidden = self.visual_encoder(pixel_values=pixels).last_hidden_state  # [B, 257, 1408]
        return self.ln_vision(hidden)

    def query_features(self, image_embeds: Tensor) -> Tensor:
        """Image tokens ``[B, T, vit_width]`` -> Q-Former query outputs ``[B, Q, qformer_width]``."""
        self._require_encoder()
        cfg = self.config
        dtype = self.query_tokens.dtype
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)  # [B, Q, W]
        hidden = self.qformer.dropout(self.qformer.layernorm(queries))
        mask = causal_query_mask(cfg.num_queries, dtype, hidden.device) if cfg.causal_queries else None
        out = self.qformer.encoder(
            hidden, attention_mask=mask, encoder_hidden_states=image_embeds.to(dtype), query_length=cfg.num_queries
        )
        return out.last_hidden_state  # [B, Q, W]

    def encode_latents(self, pixels: Tensor) -> Tensor:
        """CLIP-normalised ``[B, 3, S, S]`` -> pre-quantisation vectors ``[B, Q, code_dim]``."""
        self._require_encoder()
        return self.encode_task_layer(self.query_features(self.image_features(pixels)))

    @torch.no_grad()
    def encode_codes(self, pixels: Tensor) -> Tensor:
        """CLIP-normalised ``[B, 3, S, S]`` -> codes ``[B, Q]`` (int64)."""
        return self.quantize(self.encode_latents(pixels.to(self.device, self.dtype)))

    # ----- decode -------------------------------------------------------------------------------------------------
    def embed_codes(self, codes: Tensor) -> Tensor:
        """codes ``[B, Q]`` -> unCLIP image embedding ``[B, embed_dim]``."""
        x = self.decode_task_layer(self.quantize.lookup(codes)) + self.pos_embed_image  # [B, Q, W]
        for block in self.blocks_image:
            x = block(x)
        x = self.image_down(x)  # [B, Q, image_down[-1]]
        return self.distill_image_proj(x.reshape(x.shape[0], -1))  # [B, embed_dim]

    def forward(self, codes: Tensor) -> Tensor:
        return self.embed_codes(codes)


# ----- checkpoint naming --------------------------------------------------------------------------------------------
SEED_FILE, VIT_FILE = "seed", "vit"

# module key fragment -> checkpoint key fragment, applied in order (inside ``visual_encoder.`` / ``qformer.``)
VIT_RENAMES = (
    ("embeddings.class_embedding", "cls_token"),
    ("embeddings.position_embedding", "pos_embed"),
    ("embeddings.patch_embedding.", "patch_embed.proj."),
    ("encoder.layers.", "blocks."),
    (".layer_norm1.", ".norm1."),
    (".layer_norm2.", ".norm2."),
    (".self_attn.projection.", ".attn.proj."),
    (".self_attn.qkv.", ".attn.qkv."),
)
QFORMER_RENAMES = (
    (".attention.attention.", ".attention.self."),
    (".crossattention.attention.", ".crossattention.self."),
)

# Keys of seed_quantizer.pt that the inference path never reads: (regex over the whole key, reason).
SEED_IGNORED: tuple[tuple[str, str], ...] = (
    (
        r"Qformer\.bert\.embeddings\.position_ids",
        "BERT position-id buffer (persistent in LAVIS' BertEmbeddings); used only with text input_ids",
    ),
    (
        r"pos_embed|blocks\.\d+\..+",
        "recon_s branch (Blip2QformerQuantizer.pos_embed / .blocks): reconstructs the Q-Former features for a training "
        "loss; get_codebook_indices and get_codebook_entry never use it",
    ),
    (
        r"Qformer\.cls\..+|Qformer\.bert\.embeddings\.(word|position)_embeddings\.weight"
        r"|Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\..+",
        "the Q-Former's text branch (BERT LM head, word/position embeddings, text feed-forward), which "
        "Blip2QformerQuantizer sets to None; left over from BLIP-2 / SEED stage-1 training",
    ),
    (
        r"vision_proj\..+|text_proj\..+|itm_head\..+|temp",
        "BLIP-2 stage-1 contrastive and image-text-matching heads (training only)",
    ),
    (
        r"pos_embed_text|blocks_text\.\d+\..+|distill_text_proj\..+|Reverse_Qformer(_text)?\..+|reverse_tokens(_text)?",
        "SEED training branches that distil text features or use a reverse Q-Former (AILab-CVC/SEED "
        "SEED_Tokenizer/lavis/models/blip2_models/blip2_qformer_codebook_all_image.py); not in the image decode path",
    ),
)


# Keys of eva_vit_g.pth that ``eva_vit.py`` (strict=False) would drop: EVA-CLIP's final norm / head, which BLIP-2's
# ViT-g does not build; blocks past ``vit_layers`` are ignored too (BLIP-2 removes EVA-CLIP's last layer).
VIT_IGNORED: tuple[tuple[str, str], ...] = (
    (r"(norm|fc_norm|head)\.(weight|bias)", "EVA-CLIP final norm / head, not built by BLIP-2's ViT-g"),
)
Rule = tuple[Callable[[str], bool], str]


def _regex_rules(rules: tuple[tuple[str, str], ...]) -> list[Rule]:
    def matcher(pattern: str) -> Callable[[str], bool]:
        compiled = re.compile(pattern)
        return lambda key: compiled.fullmatch(key) is not None

    return [(matcher(pattern), reason) for pattern, reason in rules]


def vit_ignore_rules(config: SeedTokenizerConfig) -> list[Rule]:
    """``VIT_IGNORED`` plus every ``blocks.<i>.*`` with i >= ``vit_layers``."""
    block = re.compile(r"blocks\.(\d+)\..+")

    def later_block(key: str) -> bool:
        match = block.fullmatch(key)
        return match is not None and int(match.group(1)) >= config.vit_layers

    return [*_regex_rules(VIT_IGNORED), (later_block, f"EVA-CLIP blocks past the {config.vit_layers} BLIP-2 keeps")]


def checkpoint_names(key: str) -> tuple[str, tuple[str, ...]]:
    """A module state-dict key -> (file, checkpoint keys). Every key maps to one checkpoint key except the ViT's
    fused ``qkv.bias``, which is stored as ``q_bias`` and ``v_bias`` (the key bias is zero)."""
    if key.startswith("visual_encoder."):
        name = key[len("visual_encoder.") :]
        for old, new in VIT_RENAMES:
            name = name.replace(old, new)
        if name.endswith(".attn.qkv.bias"):
            stem = name[: -len("qkv.bias")]
            return VIT_FILE, (stem + "q_bias", stem + "v_bias")
        return VIT_FILE, (name,)
    if key.startswith("qformer.layernorm."):  # BertEmbeddings.LayerNorm, applied to the query tokens
        return SEED_FILE, ("Qformer.bert.embeddings.LayerNorm." + key[len("qformer.layernorm.") :],)
    if key.startswith("qformer."):
        name = "Qformer.bert." + key[len("qformer.") :]
        for old, new in QFORMER_RENAMES:
            name = name.replace(old, new)
        return SEED_FILE, (name,)
    return SEED_FILE, (key,)


def checkpoint_shapes(config: SeedTokenizerConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """Every key the two files must hold, with its shape: ``{"seed": {...}, "vit": {...}}`` (built on the meta
    device: no memory). The SEED file's encoder keys are listed even when ``config.with_encoder`` is false."""
    with torch.device("meta"):
        model = SeedImageTokenizer(dataclasses.replace(config, with_encoder=True))
    shapes: dict[str, dict[str, tuple[int, ...]]] = {SEED_FILE: {}, VIT_FILE: {}}
    for key, value in model.state_dict().items():
        source, names = checkpoint_names(key)
        for name in names:
            shapes[source][name] = (value.shape[0] // 3,) if len(names) == 2 else tuple(value.shape)
    return shapes


def _split_ignored(
    tensors: dict[str, Any], rules: list[Rule], prefixes: tuple[str, ...], source: Path
) -> dict[str, Any]:
    """Drop the keys a rule or a caller prefix names (logged); return the rest."""
    kept: dict[str, Any] = {}
    dropped: dict[str, int] = {}
    for key, value in tensors.items():
        reason = next((r for matches, r in rules if matches(key)), None)
        if reason is None and any(key.startswith(p) for p in prefixes):
            reason = "named in ignore_prefixes by the caller"
        if reason is None:
            kept[key] = value
        else:
            dropped[reason] = dropped.get(reason, 0) + 1
    for reason, count in dropped.items():
        logger.info("%s: ignored %d key(s): %s", source, count, reason)
    return kept


def _check_file(expected: dict[str, tuple[int, ...]], tensors: dict[str, Any], source: Path) -> None:
    for key in tensors:
        if key.startswith("visual_encoder."):
            raise ConfigError(
                f"{source}: unexpected key {key!r}: the ViT weights are read from eva_vit_g.pth "
                "(vit_path), not from seed_quantizer.pt"
            )
    try:
        check_state_dict(expected, tensors, source)
    except ConfigError as exc:
        if "unexpected key" in str(exc):
            raise ConfigError(
                f"{exc}; if this key is a known training-only part, pass its prefix in ignore_prefixes"
            ) from None
        raise
    check_floating(tensors, source)


def check_seed_checkpoints(
    seed_quantizer_path: str | Path,
    vit_path: str | Path | None = None,
    *,
    config: SeedTokenizerConfig | None = None,
    ignore_prefixes: tuple[str, ...] = (),
) -> dict[str, dict[str, Tensor]]:
    """Every key and shape of the files checked (memory-mapped, nothing copied) -> the tensors the tokenizer uses,
    per file (``{SEED_FILE: ..., VIT_FILE: ...}``). Raises ``ConfigError`` as ``load_seed_tokenizer`` does."""
    cfg = dataclasses.replace(config or SeedTokenizerConfig(), with_encoder=vit_path is not None)
    expected = checkpoint_shapes(cfg)
    seed_path = Path(seed_quantizer_path)
    seed_rules = _regex_rules(SEED_IGNORED)
    found = {SEED_FILE: _split_ignored(read_torch_state_dict(seed_path), seed_rules, tuple(ignore_prefixes), seed_path)}
    _check_file(expected[SEED_FILE], found[SEED_FILE], seed_path)
    if vit_path is not None:
        path = Path(vit_path)
        found[VIT_FILE] = _split_ignored(read_torch_state_dict(path), vit_ignore_rules(cfg), (), path)
        _check_file(expected[VIT_FILE], found[VIT_FILE], path)
    return found


def load_seed_tokenizer(
    seed_quantizer_path: str | Path,
    vit_path: str | Path | None = None,
    *,
    config: SeedTokenizerConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    ignore_prefixes: tuple[str, ...] = (),
) -> SeedImageTokenizer:
    """``seed_quantizer.pt`` (+ ``eva_vit_g.pth``) -> ``SeedImageTokenizer`` in eval mode on ``device`` in ``dtype``.

    Both files are plain ``torch.save``d state dicts in the layout of the module docstring. With ``vit_path`` None
    the tokenizer is decode-only (codes -> embedding); the SEED file must still be complete. Every required key must
    be present with its shape, every other key must be a known training-only part (``SEED_IGNORED``,
    ``VIT_IGNORED``, later ViT blocks) or start with one of ``ignore_prefixes``; all of it is checked before any
    weight is copied.

    Raises:
        ConfigError: a file is missing or unreadable, or a key is missing, unknown, wrongly shaped or not
            floating point (naming the file and the key).
    """
    cfg = dataclasses.replace(config or SeedTokenizerConfig(), with_encoder=vit_path is not None)
    seed_path = Path(seed_quantizer_path)
    found = check_seed_checkpoints(seed_path, vit_path, config=cfg, ignore_prefixes=ignore_prefixes)

    with torch.device("meta"):
        model = SeedImageTokenizer(cfg)
    state: dict[str, Tensor] = {}
    for key in model.state_dict():
        source, names = checkpoint_names(key)
        parts = [found[source][name] for name in names]
        if len(parts) == 2:  # ViT qkv bias: q_bias, zero key bias, v_bias
            q_bias, v_bias = parts
            state[key] = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias.to(q_bias.dtype)])
        else:
            state[key] = parts[0]
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval()
    stray = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if stray:  # a tensor that no file fed: a bug here, never a silent random weight
        raise ConfigError(f"{seed_path}: internal error, tensors left unloaded: {stray[:3]}")
    return model


# ----- image preprocessing ------------------------------------------------------------------------------------------
def clip_preprocess(image: np.ndarray, size: int) -> Tensor:
    """uint8 RGB ``[H, W, 3]`` -> ``[1, 3, size, size]``: PIL bicubic resize, /255, CLIP mean/std (as torchvision's
    ``Resize((size, size), interpolation=3)``, ``ToTensor``, ``Normalize`` on a PIL image in AnyGPT)."""
    from PIL import Image

    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {pixels.dtype} {tuple(pixels.shape)}")
    picture = Image.fromarray(pixels)
    if picture.size != (size, size):
        picture = picture.resize((size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, S, S]
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((x - mean) / std)[None]


# ----- rendering with SD-2.1-unCLIP ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnclipRenderConfig:
    """How ``UnclipRenderer`` calls ``StableUnCLIPImg2ImgPipeline`` (defaults: AnyGPT's ``ImageTokenizer.decode``).

    num_inference_steps, guidance_scale, noise_level: 20, 10 (classifier-free guidance, zero image embedding as the
        unconditional input), 0.
    latent_channels, latent_size, vae_scale_factor: the fixed latents are [1, 4, 96, 96] -> a 768 x 768 image.
    seed: seeds the fixed latents and the generator passed to every call (deterministic across processes).
    prompt: the text prompt (AnyGPT passes none, which the pipeline turns into "").
    """

    num_inference_steps: int = 20
    guidance_scale: float = 10.0
    noise_level: int = 0
    latent_channels: int = 4
    latent_size: int = 96
    vae_scale_factor: int = 8
    seed: int = 0
    prompt: str = ""

    def __post_init__(self) -> None:
        if min(self.num_inference_steps, self.latent_channels, self.latent_size, self.vae_scale_factor) < 1:
            raise ValueError("num_inference_steps, latent_channels, latent_size, vae_scale_factor must be >= 1")
        if self.noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {self.noise_level}")

    @property
    def image_size(self) -> int:
        """Side of the rendered image (96 * 8 = 768)."""
        return self.latent_size * self.vae_scale_factor

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (1, self.latent_channels, self.latent_size, self.latent_size)


def import_unclip_pipeline() -> Any:
    """diffusers' ``StableUnCLIPImg2ImgPipeline``; a clear ``ImportError`` when diffusers is not installed."""
    try:
        from diffusers import StableUnCLIPImg2ImgPipeline
    except ImportError as exc:
        raise ImportError(
            f"rendering SEED images needs diffusers' StableUnCLIPImg2ImgPipeline: {IMAGES_EXTRA_HINT} ({exc})"
        ) from exc
    return StableUnCLIPImg2ImgPipeline


class UnclipRenderer:
    """unCLIP image embedding ``[embed_dim]`` -> picture, through an SD-2.1-unCLIP pipeline.

    ``pipeline`` is any callable with ``StableUnCLIPImg2ImgPipeline``'s keyword interface returning an object with
    ``.images`` (or a tuple whose first item is the image list); tests pass a fake. ``from_folder`` loads the real one.
    """

    def __init__(
        self,
        pipeline: Any,
        config: UnclipRenderConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.pipeline = pipeline
        self.config = cfg = config or UnclipRenderConfig()
        self.device = torch.device(device)
        self.dtype = dtype
        generator = torch.Generator().manual_seed(cfg.seed)
        self.latents = torch.randn(cfg.latent_shape, generator=generator, device="cpu")  # [1, 4, 96, 96], fixed

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        config: UnclipRenderConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> UnclipRenderer:
        """Load a local copy of ``stabilityai/stable-diffusion-2-1-unclip`` (no network). ``dtype`` defaults to
        fp16 on CUDA (as AnyGPT) and fp32 elsewhere.

        Raises:
            ImportError: diffusers is not installed (the ``[images]`` extra).
            ConfigError: the folder or its ``model_index.json`` is missing.
        """
        pipeline_cls = import_unclip_pipeline()
        folder = Path(folder)
        if not (folder / "model_index.json").is_file():
            raise ConfigError(
                f"{folder / 'model_index.json'}: not found (expected a local copy of "
                "stabilityai/stable-diffusion-2-1-unclip)"
            )
        device = torch.device(device)
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        pipeline = pipeline_cls.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True).to(device)
        pipeline.set_progress_bar_config(disable=True)
        return cls(pipeline, config, device=device, dtype=dtype)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @torch.no_grad()
    def render(self, embedding: Tensor) -> Any:
        """``[embed_dim]`` or ``[1, embed_dim]`` -> a PIL image ``image_size`` x ``image_size``."""
        cfg = self.config
        image_embeds = embedding.reshape(1, -1).to(self.device, self.dtype)  # [1, embed_dim]
        result = self.pipeline(
            prompt=cfg.prompt,
            image_embeds=image_embeds,
            guidance_scale=cfg.guidance_scale,
            noise_level=cfg.noise_level,
            num_inference_steps=cfg.num_inference_steps,
            latents=self.latents.to(self.device, self.dtype),
            generator=torch.Generator().manual_seed(cfg.seed),
            height=cfg.image_size,
            width=cfg.image_size,
            output_type="pil",
        )
        images = result.images if hasattr(result, "images") else result[0]
        return images[0]

    def render_png(self, embedding: Tensor) -> bytes:
        """``[embed_dim]`` -> PNG bytes (RGB)."""
        from PIL import Image

        picture = self.render(embedding)
        if not isinstance(picture, Image.Image):
            raise TypeError(f"the unCLIP pipeline returned a {type(picture).__name__}, expected a PIL image")
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue()


# ----- the pipeline-facing codec ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedImageCodecConfig:
    """The sizes ``SeedImageCodec`` answers the ``ImageCodec`` interface with.

    tokens_per_image: codes per image (32). codebook_size: code vocabulary (8192).
    image_size: side of the PNG ``decode_png`` returns (768). input_size: side ``encode`` resizes to (224).
    """

    tokens_per_image: int = 32
    codebook_size: int = 8192
    image_size: int = 768
    input_size: int = 224


class SeedImageCodec(nn.Module, ImageCodecFromConfig):
    """SEED tokenizer + unCLIP renderer behind the ``ImageCodec`` interface.

    ``decode_png(codes, strict=True)``: codes -> embedding -> renderer -> PNG bytes; a wrong count follows
    ``fit_token_count`` (``strict=False`` pads with the last code or truncates). ``encode(pixels)``: uint8
    ``[H, W, 3]`` -> codes. Only the tokenizer is a submodule: ``.to()`` does not move the diffusers pipeline.
    """

    config: SeedImageCodecConfig  # the interface's sizes

    def __init__(self, tokenizer: SeedImageTokenizer, renderer: UnclipRenderer | None = None) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.renderer = renderer
        tok = tokenizer.config
        side = renderer.image_size if renderer is not None else UnclipRenderConfig().image_size
        self.config = SeedImageCodecConfig(tok.num_queries, tok.codebook_size, side, tok.input_size)

    def _codes(self, codes: list[int], strict: bool) -> Tensor:
        cfg = self.config
        fixed, _ = fit_token_count([int(c) for c in codes], cfg.tokens_per_image, strict=strict)
        if min(fixed) < 0 or max(fixed) >= cfg.codebook_size:
            raise ValueError(f"image codes must lie in [0, {cfg.codebook_size})")
        return torch.tensor(fixed, dtype=torch.long, device=self.tokenizer.device)[None]  # [1, N]

    @torch.no_grad()
    def embed(self, codes: list[int], *, strict: bool = True) -> Tensor:
        """codes -> unCLIP image embedding ``[embed_dim]``."""
        return self.tokenizer.embed_codes(self._codes(codes, strict))[0]

    @torch.no_grad()
    def decode_png(self, codes: list[int], *, strict: bool = True) -> bytes:
        """codes -> PNG bytes of an ``image_size`` x ``image_size`` RGB image."""
        if self.renderer is None:
            raise RuntimeError("this SEED codec has no unCLIP renderer; build it with UnclipRenderer.from_folder")
        return self.renderer.render_png(self.embed(codes, strict=strict))

    @torch.no_grad()
    def encode(self, image: np.ndarray) -> list[int]:
        """uint8 RGB ``[H, W, 3]`` (any size; resized bicubically to ``input_size``) -> ``tokens_per_image`` codes."""
        return self.tokenizer.encode_codes(clip_preprocess(image, self.config.input_size))[0].tolist()


def load_seed_image_codec(
    seed_quantizer_path: str | Path,
    vit_path: str | Path | None,
    unclip_folder: str | Path | None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    render_config: UnclipRenderConfig | None = None,
    ignore_prefixes: tuple[str, ...] = (),
) -> SeedImageCodec:
    """``load_seed_tokenizer`` + ``UnclipRenderer.from_folder`` (skipped when ``unclip_folder`` is None)."""
    tokenizer = load_seed_tokenizer(
        seed_quantizer_path, vit_path, device=device, dtype=dtype, ignore_prefixes=ignore_prefixes
    )
    renderer = (
        None if unclip_folder is None else UnclipRenderer.from_folder(unclip_folder, render_config, device=device)
    )
    return SeedImageCodec(tokenizer, renderer)
