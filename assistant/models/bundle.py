"""Every model the assistant needs, loaded together: the embedded default (tiny, CPU-fast) or trained weights.

``assistant/assets/embedded/`` holds one JSON config per model plus, once trained, its weights::

    tokenizer/          UnifiedVocab files (added_tokens.json, text_tokenizer.json)
    lm.json             LMConfig (LMConfig.to_dict format)          lm.safetensors        (optional)
    codec.json          MelCodecConfig fields                       codec.safetensors     (optional)
    acoustic.json       AcousticDecoderConfig fields                acoustic.safetensors  (optional)
    image.json          ImageCodecConfig fields                     image.safetensors     (optional)
    music.json          MusicCodecConfig fields                     music.safetensors     (optional)
    generation.json     GenerationSettings (GenerationSettings.to_dict format)
    voices.json         VoiceBank: the acoustic prompts of the voices replies can be spoken in (optional)

Each model is built from its config (seeded random initialisation), then, when ``<name>.safetensors`` exists, its
weights are loaded strictly (every key, every shape). Trained weights and the untrained default take the same path;
``save_weights`` writes the files a training run produces.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from assistant.decoding.lm_sampler import GenerationSettings
from assistant.decoding.maskgit import AcousticFill
from assistant.models.acoustic_decoder import AcousticDecoder, AcousticDecoderConfig
from assistant.models.checkpoint_io import load_safetensors_strict
from assistant.models.image_detokenizer import ImageCodecConfig, ImageDetokenizer
from assistant.models.lm import LMConfig, build_lm
from assistant.models.music_detokenizer import MusicCodecConfig, MusicDetokenizer
from assistant.models.speech_codec import MelCodecConfig, MelRVQCodec, SpeechCodec
from assistant.models.voices import VoiceBank
from assistant.vocab import Modality, UnifiedVocab

EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "assets" / "embedded"
MODEL_NAMES = ("lm", "codec", "acoustic", "image", "music")
VOICES_FILE = "voices.json"


@dataclass
class ModelBundle:
    """The models of one family. A model left out at load time (``load_embedded(parts=...)``) is None: a Serve
    replica loads only what it serves."""

    vocab: UnifiedVocab
    lm: nn.Module | None  # LlamaForCausalLM
    generation: GenerationSettings
    codec: SpeechCodec | None  # MelRVQCodec (embedded) or SpeechTokenizer (AnyGPT)
    acoustic: nn.Module | None  # AcousticDecoder (embedded) or SoundStorm (AnyGPT): the maskgit decoding interface
    image: nn.Module | None  # ImageDetokenizer (embedded) or SeedImageCodec (AnyGPT)
    music: nn.Module | None  # MusicDetokenizer (embedded) or EncodecMusic (AnyGPT)
    lm_config: LMConfig | None = None
    weights_loaded: tuple[str, ...] = ()  # names of the models whose safetensors were found
    voices: VoiceBank | None = None  # None: no voices.json (untrained family), replies use no acoustic prompt
    acoustic_fill: AcousticFill | None = None  # None: the decoding default (AnyGPT's SoundStorm has its own loop)

    def modules(self) -> dict[str, nn.Module]:
        every = {
            "lm": self.lm,
            "codec": self.codec,
            "acoustic": self.acoustic,
            "image": self.image,
            "music": self.music,
        }
        return {name: module for name, module in every.items() if module is not None}

    def validate(self) -> None:
        """The loaded models must agree with the vocabulary and with each other."""
        v = self.vocab
        if self.lm_config is not None and self.lm_config.vocab_size != v.size:
            raise ValueError(f"lm vocab_size {self.lm_config.vocab_size} != vocabulary size {v.size}")
        checks = []
        if self.codec is not None:
            checks.append(("codec codebook_size", self.codec.codebook_size, v.range_of(Modality.SPEECH).n_codes))
        if self.acoustic is not None:
            checks.append(
                ("acoustic codebook_size", self.acoustic.config.codebook_size, v.range_of(Modality.SPEECH).n_codes)
            )
            if self.codec is not None:
                checks.append(("acoustic n_q", self.acoustic.config.n_q, self.codec.n_q))
        if self.image is not None:
            checks.append(("image codebook_size", self.image.config.codebook_size, v.range_of(Modality.IMAGE).n_codes))
        if self.music is not None:
            checks.append(("music vocab_size", self.music.config.vocab_size, v.range_of(Modality.MUSIC).n_codes))
        if self.voices is not None:
            checks.append(("voice bank codebook_size", self.voices.codebook_size, v.range_of(Modality.SPEECH).n_codes))
            if self.acoustic is not None:
                checks.append(("voice bank n_q", self.voices.n_q, self.acoustic.config.n_q))
        for what, got, want in checks:
            if got != want:
                raise ValueError(f"{what} is {got}, expected {want}")


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def config_from_json(path: Path, cls: type, **overrides: Any) -> Any:
    """Config dataclass from a flat JSON object of its fields (lists become tuples); unknown keys are errors."""
    data = read_json(path)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown {cls.__name__} fields {unknown}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    fields.update(overrides)
    try:
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid {cls.__name__}: {exc}") from exc


def save_weights(
    bundle: ModelBundle, assets_dir: str | Path | None = None, names: tuple[str, ...] = MODEL_NAMES
) -> Path:
    """Write ``<name>.safetensors`` for the given models (what a training run leaves behind)."""
    directory = Path(assets_dir) if assets_dir is not None else EMBEDDED_DIR
    directory.mkdir(parents=True, exist_ok=True)
    modules = bundle.modules()
    for name in names:
        state = {k: v.detach().contiguous().cpu() for k, v in modules[name].state_dict().items()}
        save_file(state, str(directory / f"{name}.safetensors"), metadata={"model": name})
    return directory


def load_embedded(
    assets_dir: str | Path | None = None, seed: int = 0, parts: tuple[str, ...] = MODEL_NAMES
) -> ModelBundle:
    """Loads the models named in ``parts`` (default: all) from ``assets_dir`` (default: the embedded assets).

    ``seed`` seeds the random initialisation of models without saved weights (it is added to each config's own seed),
    so the untrained default is deterministic; saved weights override it.
    """
    directory = Path(assets_dir) if assets_dir is not None else EMBEDDED_DIR
    vocab = UnifiedVocab.from_dir(directory / "tokenizer")

    unknown = sorted(set(parts) - set(MODEL_NAMES))
    if unknown:
        raise ValueError(f"unknown model parts {unknown}; known: {MODEL_NAMES}")

    def seeded(name: str, cls: type, model_cls: type) -> Any:
        if name not in parts:
            return None
        config = config_from_json(directory / f"{name}.json", cls)
        return model_cls(dataclasses.replace(config, seed=config.seed + seed))

    lm_config = LMConfig.from_json(directory / "lm.json")
    lm = build_lm(lm_config, seed=seed) if "lm" in parts else None
    codec = seeded("codec", MelCodecConfig, MelRVQCodec)
    acoustic = seeded("acoustic", AcousticDecoderConfig, AcousticDecoder)
    image = seeded("image", ImageCodecConfig, ImageDetokenizer)
    music = seeded("music", MusicCodecConfig, MusicDetokenizer)
    generation = GenerationSettings.from_json(directory / "generation.json")

    bundle = ModelBundle(vocab, lm, generation, codec, acoustic, image, music, lm_config=lm_config)
    loaded = []
    for name, module in bundle.modules().items():
        path = directory / f"{name}.safetensors"
        if path.is_file():
            load_safetensors_strict(path, module)
            loaded.append(name)
        module.eval()
    bundle.weights_loaded = tuple(loaded)
    voices_path = directory / VOICES_FILE
    bundle.voices = VoiceBank.from_json(voices_path) if voices_path.is_file() else None
    bundle.validate()
    return bundle
