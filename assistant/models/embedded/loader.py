"""Loading the embedded family from an assets folder (``assistant.models.loading.load_models`` calls this).

An assets folder is a checkpoint folder (``assistant.models.checkpoint``) holding one model per name, plus the files
the engine reads::

    tokenizer/          UnifiedVocab files (added_tokens.json, text_tokenizer.json)
    lm.json             LMConfig                lm.safetensors        (optional)
    codec.json          MelCodecConfig          codec.safetensors     (optional)
    acoustic.json       SoundStormConfig        acoustic.safetensors  (optional; AnyGPT's SoundStorm class, small)
    image.json          ImageCodecConfig        image.safetensors     (optional)
    music.json          MusicCodecConfig        music.safetensors     (optional)
    generation.json     GenerationSettings
    voices.json         VoiceBank: the acoustic prompts of the voices replies can be spoken in (optional)

Each model is built from its config (seeded random initialisation), then, when ``<name>.safetensors`` exists, its
weights are loaded strictly (every key, every shape). Trained weights and the untrained default take the same path;
``training/pipeline.py`` writes the weights files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from assistant.decoding.lm_sampler import GenerationSettings
from assistant.models.bundle import MODEL_NAMES, ModelBundle, check_parts
from assistant.models.checkpoint import config_path, load_weights, weights_path
from assistant.models.config_io import read_config
from assistant.models.embedded import EMBEDDED_DIR
from assistant.models.embedded.image import ImageCodecConfig, ImageDetokenizer
from assistant.models.embedded.lm import LMConfig, build_lm
from assistant.models.embedded.music import MusicCodecConfig, MusicDetokenizer
from assistant.models.embedded.speech import MelCodecConfig, MelRVQCodec
from assistant.models.soundstorm import SoundStorm, SoundStormConfig
from assistant.models.voices import VoiceBank
from assistant.vocab import UnifiedVocab

GENERATION_FILE = "generation.json"
VOICES_FILE = "voices.json"
TOKENIZER_DIR = "tokenizer"


def _offset_seed(model_cls: type[nn.Module]) -> Callable[[Any, int], nn.Module]:
    """A builder for models that draw their initialisation from ``config.seed``: the load seed is added to it."""
    return lambda config, seed: model_cls(dataclasses.replace(config, seed=config.seed + seed))


# name -> (config class, build(config, seed)). ``seed`` makes the untrained default deterministic; weights override it.
PARTS: dict[str, tuple[type, Callable[[Any, int], nn.Module]]] = {
    "lm": (LMConfig, build_lm),
    "codec": (MelCodecConfig, _offset_seed(MelRVQCodec)),
    "acoustic": (SoundStormConfig, _offset_seed(SoundStorm)),
    "image": (ImageCodecConfig, _offset_seed(ImageDetokenizer)),
    "music": (MusicCodecConfig, _offset_seed(MusicDetokenizer)),
}


def load_embedded(
    assets_dir: str | Path | None = None, seed: int = 0, parts: tuple[str, ...] = MODEL_NAMES
) -> ModelBundle:
    """The models named in ``parts`` (default: all) from ``assets_dir`` (default: the package's assets).

    ``seed`` seeds the random initialisation of models without saved weights, so the untrained default is
    deterministic; saved weights override it.
    """
    check_parts(parts)
    directory = Path(assets_dir) if assets_dir is not None else EMBEDDED_DIR
    vocab = UnifiedVocab.from_dir(directory / TOKENIZER_DIR)
    models: dict[str, Any] = {}  # name -> model, each an implementation of its role's interface
    loaded = []
    for name in (name for name in MODEL_NAMES if name in parts):
        config_cls, build = PARTS[name]
        model = build(read_config(config_path(directory, name), config_cls), seed)
        if weights_path(directory, name).is_file():
            load_weights(weights_path(directory, name), model)
            loaded.append(name)
        models[name] = model.eval()
    voices_path = directory / VOICES_FILE
    bundle = ModelBundle(
        vocab,
        models.get("lm"),
        GenerationSettings.from_json(directory / GENERATION_FILE),
        models.get("codec"),
        models.get("acoustic"),
        models.get("image"),
        models.get("music"),
        weights_loaded=tuple(loaded),
        voices=VoiceBank.from_json(voices_path) if voices_path.is_file() else None,
    )
    bundle.validate()
    return bundle
