"""The AnyGPT family's acoustic checkpoint: ``speechtokenizer_soundstorm_mls.pt`` (or USLM's) loaded strictly into
``assistant.models.soundstorm.SoundStorm`` at AnyGPT's sizes (``SoundStormConfig.anygpt()``).

State-dict layout: ``net.conformer.layers.{i}.`` + a conformer layer's keys (``assistant.modules.conformer``), and
    net.code_embeds [Q*(K+1), D], net.heads.0 Linear(D, Q*D), net.to_logits.0 LayerNorm,
    net.to_logits.2.{weight [Q, D, K], bias [1, 1, Q, K]} (an einops EinMix in the reference), semantic_token_emb.
The upstream USLM checkpoint names the conv module ``conv.net.{0,2,4,6,7}`` instead; ``load_soundstorm`` renames
(see ``USLM_TO_ANYGPT``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from assistant.models.checkpoint import check_floating, check_state_dict, read_torch_state_dict
from assistant.models.config_io import ConfigError
from assistant.models.soundstorm import SoundStorm, SoundStormConfig

USLM_TO_ANYGPT: dict[str, str] = {
    "conv.net.0.weight": "conv.net1.0.weight",
    "conv.net.0.bias": "conv.net1.0.bias",
    "conv.net.2.weight": "conv.net1.2.weight",
    "conv.net.2.bias": "conv.net1.2.bias",
    "conv.net.4.conv.weight": "conv.ds_conv.conv.weight",
    "conv.net.4.conv.bias": "conv.ds_conv.conv.bias",
    "conv.net.6.gamma": "conv.net2.1.gamma",
    "conv.net.7.weight": "conv.net2.2.weight",
    "conv.net.7.bias": "conv.net2.2.bias",
}
"""Per-layer renames from the upstream checkpoint naming to AnyGPT's (and ours), applied after the
``net.conformer.layers.{i}.`` prefix.

Upstream ``ZhangXInFD/soundstorm-speechtokenizer`` (the ``fnlp/USLM`` SoundStorm checkpoint) keeps the conformer
conv module in one ``nn.Sequential`` ``net``: 0 LayerNorm, 1 transpose, 2 pointwise Conv1d, 3 GLU, 4 depthwise conv
(``.conv``), 5 Swish, 6 ChanLayerNorm, 7 pointwise Conv1d, 8 transpose, 9 Dropout. AnyGPT's vendored copy splits it
into ``net1`` (slots 0-3), ``ds_conv`` (slot 4, so that it can take a padding mask) and ``net2`` (slots 5-9, renumbered
from 0). Shapes are unchanged; every other key is identical. These nine keys per layer are exactly the missing /
unexpected keys reported in ZhangXInFD/soundstorm-speechtokenizer issue #9 when a USLM file meets AnyGPT's code.
"""

_LAYER_KEY = re.compile(r"^(net\.conformer\.layers\.\d+\.)(.*)$")
_ANYGPT_CONV = re.compile(r"\.conv\.(net1|net2|ds_conv)\.")
_USLM_CONV = re.compile(r"\.conv\.net\.\d+\.")
LAYOUTS = ("auto", "anygpt", "uslm")


def detect_layout(keys: list[str] | tuple[str, ...], source: str | Path = "<state dict>") -> str | None:
    """``"anygpt"`` or ``"uslm"`` from the conv-module key names, ``None`` when neither appears; a file that uses both
    raises ``ConfigError`` naming one key of each."""
    anygpt = next((k for k in keys if _ANYGPT_CONV.search(k)), None)
    uslm = next((k for k in keys if _USLM_CONV.search(k)), None)
    if anygpt is not None and uslm is not None:
        raise ConfigError(f"{source}: mixes AnyGPT conv-module keys (e.g. {anygpt!r}) with USLM ones (e.g. {uslm!r})")
    return "anygpt" if anygpt is not None else "uslm" if uslm is not None else None


def rename_uslm_keys(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Apply ``USLM_TO_ANYGPT`` -> (renamed tensors, {new key: key in the file}); other keys pass through."""
    out: dict[str, Tensor] = {}
    renamed: dict[str, str] = {}
    for key, value in tensors.items():
        match = _LAYER_KEY.match(key)
        new = key
        if match is not None and match.group(2) in USLM_TO_ANYGPT:
            new = match.group(1) + USLM_TO_ANYGPT[match.group(2)]
            renamed[new] = key
        out[new] = value
    return out, renamed


def load_soundstorm(
    path: str | Path,
    *,
    config: SoundStormConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    layout: str = "auto",
) -> SoundStorm:
    """Read a plain ``torch.save``d SoundStorm state dict (``speechtokenizer_soundstorm_mls.pt`` or the USLM one) into
    a new ``SoundStorm(config or SoundStormConfig.anygpt())`` in eval mode.

    ``layout``: ``"anygpt"`` (``conv.net1 / ds_conv / net2`` keys), ``"uslm"`` (``conv.net.{0,2,4,6,7}``, renamed by
    ``USLM_TO_ANYGPT``) or ``"auto"`` (decided from the keys). Every key, shape and (floating) dtype is checked before
    anything is copied; any problem raises ``ConfigError`` naming the file and the key, so nothing half-loads.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    path = Path(path)
    tensors = read_torch_state_dict(path)
    for key, value in tensors.items():
        if not isinstance(value, Tensor):
            raise ConfigError(f"{path}: key {key!r} holds a {type(value).__name__}, not a tensor")
    check_floating(tensors, path)
    found = detect_layout(list(tensors), path)
    if layout != "auto" and found is not None and found != layout:
        raise ConfigError(f"{path}: layout {layout!r} was asked for but the keys are {found!r} ones")
    renamed: dict[str, str] = {}
    if found == "uslm":
        tensors, renamed = rename_uslm_keys(tensors)

    with torch.device("meta"):  # no 1.4 GB random init: every parameter is replaced below
        model = SoundStorm(config or SoundStormConfig.anygpt())
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    try:
        check_state_dict(expected, tensors, path)
    except ConfigError as exc:
        message = str(exc)
        for new, old in renamed.items():
            if f"{new!r}" in message:
                raise ConfigError(f"{message} [USLM key in the file: {old!r}]") from exc
        raise
    state = {key: value.to(device=device, dtype=dtype, copy=True) for key, value in tensors.items()}  # off the mmap
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
