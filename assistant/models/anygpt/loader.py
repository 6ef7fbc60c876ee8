"""The published AnyGPT checkpoints as one model family: where each file lives, loading them into a ``ModelBundle``
(``assistant.models.loading.load_models`` calls ``load_anygpt``), and checking a folder without loading it
(``anystream check-weights``).

A weights root is laid out as the hub repositories are::

    AnyGPT-chat/ or AnyGPT-base/                        fnlp/AnyGPT-chat | -base (config.json, weights,
                                                        tokenizer.model, added_tokens.json)
    AnyGPT-speech-modules/speechtokenizer/config.json   fnlp/AnyGPT-speech-modules
    AnyGPT-speech-modules/speechtokenizer/ckpt.dev
    AnyGPT-speech-modules/soundstorm/speechtokenizer_soundstorm_mls.pt
    encodec_32khz/                                      facebook/encodec_32khz (config.json, weights)
    seed-tokenizer-2/seed_quantizer.pt                  AILab-CVC/seed-tokenizer-2
    seed-tokenizer-2/eva_vit_g.pth                      EVA-CLIP ViT-g (LAVIS), needed to read pictures users send
    stable-diffusion-2-1-unclip/                        stabilityai/stable-diffusion-2-1-unclip, needed to draw;
                                                        the ``[images]`` extra installs diffusers

Precision: the LLM and SoundStorm run in the requested dtype (fp16/bf16 on GPUs); SpeechTokenizer and Encodec stay
in fp32 as AnyGPT runs them (their LSTMs and nearest-code searches are where half precision would change codes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from assistant.models.bundle import MODEL_NAMES, ModelBundle, check_parts
from assistant.models.config_io import ConfigError

if TYPE_CHECKING:
    from assistant.models.interfaces import CausalLM

LM_DIRS = ("AnyGPT-chat", "AnyGPT-base")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class AnyGPTLayout:
    """Paths of every part under ``root`` (relative names as on the hub)."""

    root: Path
    lm_dir: str = "AnyGPT-chat"
    speechtokenizer_dir: str = "AnyGPT-speech-modules/speechtokenizer"
    soundstorm_file: str = "AnyGPT-speech-modules/soundstorm/speechtokenizer_soundstorm_mls.pt"
    encodec_dir: str = "encodec_32khz"
    seed_file: str = "seed-tokenizer-2/seed_quantizer.pt"
    vit_file: str = "seed-tokenizer-2/eva_vit_g.pth"
    unclip_dir: str = "stable-diffusion-2-1-unclip"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def path(self, name: str) -> Path:
        return self.root / getattr(self, name)


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(TORCH_DTYPES)}, got {name!r}") from None


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def load_anygpt(
    root: str | Path,
    *,
    lm_dir: str = "AnyGPT-chat",
    parts: tuple[str, ...] = MODEL_NAMES,
    dtype: str | torch.dtype = "float16",
    device: str | torch.device = "cpu",
) -> ModelBundle:
    """The ``parts`` of the family under the weights root ``root`` that a process needs, as a ``ModelBundle``. The
    vocabulary is read from ``lm_dir`` whether or not the LM is loaded."""
    from assistant.decoding.soundstorm_decoding import AnyGPTFill
    from assistant.models.anygpt.lm import generation_settings, load_hf_lm, read_vocab

    check_parts(parts)
    layout = AnyGPTLayout(Path(root), lm_dir=lm_dir)
    dtype = torch_dtype(dtype)
    lm_folder = layout.path("lm_dir")
    lm = None
    if "lm" in parts:
        lm, vocab = load_hf_lm(lm_folder, dtype=dtype, device=device)
    else:
        vocab = read_vocab(lm_folder)
    codec = acoustic = image = music = None
    if "codec" in parts:
        from assistant.models.anygpt.speech import load_speechtokenizer_dir

        codec = load_speechtokenizer_dir(layout.path("speechtokenizer_dir"), device=device)
    if "acoustic" in parts:
        from assistant.models.anygpt.acoustic import load_soundstorm

        acoustic = load_soundstorm(layout.path("soundstorm_file"), device=device, dtype=dtype)
    if "image" in parts:
        from assistant.models.anygpt.image import load_seed_image_codec

        vit = layout.path("vit_file")
        unclip = layout.path("unclip_dir")
        image = load_seed_image_codec(
            layout.path("seed_file"),
            vit if vit.is_file() else None,
            unclip if unclip.is_dir() else None,
            device=device,
            dtype=dtype,
        )
    if "music" in parts:
        from assistant.models.anygpt.music import load_encodec_music

        music = load_encodec_music(layout.path("encodec_dir"), device=device)
    bundle = ModelBundle(
        vocab,
        cast("CausalLM | None", lm),  # transformers' LLaMA, conforming structurally (tests/models/test_lm.py)
        generation_settings(lm_folder),
        codec,
        acoustic,
        image,
        music,
        weights_loaded=tuple(parts),
        acoustic_fill=AnyGPTFill(),
    )
    bundle.validate()
    return bundle


# --------------------------------------------------------------------------------------------------------------------
# Checking a folder (``anystream check-weights``)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class PartReport:
    """One part of a weights root: which of its files are there, and whether the present ones load strictly."""

    name: str
    files: list[str]  # relative to the root
    present: list[str]
    missing: list[str]
    status: str  # "ok", "missing", "incomplete", "failed", "unchecked"
    detail: str = ""
    required: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Part:
    name: str
    files: tuple[str, ...]  # a folder is given with a trailing "/"; "a|b" means either
    check: Callable[[AnyGPTLayout], str] | None  # raises ConfigError; returns a short summary
    required: bool = True
    use: str = ""


def _exists(root: Path, name: str) -> bool:
    if "|" in name:
        return any(_exists(root, alternative) for alternative in name.split("|"))
    return (root / name).is_dir() if name.endswith("/") else (root / name).is_file()


def _check_lm(folder: Path) -> str:
    from assistant.models.anygpt.lm import check_hf_lm

    checked = check_hf_lm(folder)
    vocab = checked.vocab
    kinds = "chat (<-Ins->/<-Res->)" if vocab.ins_id is not None and vocab.res_id is not None else "base"
    return (
        f"LLaMA {checked.config.num_hidden_layers} layers, vocab {checked.config.vocab_size}, {kinds}; "
        f"{len(checked.weight_files)} weight file(s); keys and shapes checked from the file headers"
    )


def _check_speechtokenizer(layout: AnyGPTLayout) -> str:
    from assistant.models.anygpt.speech import load_speechtokenizer_dir

    model = load_speechtokenizer_dir(layout.path("speechtokenizer_dir"), device="meta")
    return f"{model.config.activation} activation, {model.n_q} levels x {model.codebook_size} codes; strict"


def _check_soundstorm(layout: AnyGPTLayout) -> str:
    from assistant.models.anygpt.acoustic import detect_layout, load_soundstorm
    from assistant.models.checkpoint import read_torch_state_dict

    path = layout.path("soundstorm_file")
    load_soundstorm(path, device="meta")
    naming = detect_layout(list(read_torch_state_dict(path)), path)
    return f"{naming} key layout; strict"


def _check_encodec(layout: AnyGPTLayout) -> str:
    from assistant.models.anygpt.music import load_encodec_music

    load_encodec_music(layout.path("encodec_dir"))
    return "4 codebooks x 2048, 32 kHz; strict"


def _check_seed(layout: AnyGPTLayout) -> str:
    from assistant.models.anygpt.image import check_seed_checkpoints

    vit = layout.path("vit_file")
    check_seed_checkpoints(layout.path("seed_file"), vit if vit.is_file() else None)
    return "quantizer and decoder" + (" + ViT-g encoder" if vit.is_file() else " (no ViT: pictures cannot be read)")


def _check_vit(layout: AnyGPTLayout) -> str:
    if layout.path("seed_file").is_file():
        return "checked together with seed-tokenizer-2"
    return "present; checked once seed_quantizer.pt is there too"


def _check_unclip(layout: AnyGPTLayout) -> str:
    folder = layout.path("unclip_dir")
    index = folder / "model_index.json"
    if not index.is_file():
        raise ConfigError(f"{index}: not found, so this is not a diffusers pipeline folder")
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return "present; diffusers is not installed (the [images] extra), so pictures cannot be drawn"
    return "present; loaded by diffusers when the media deployment starts"


def _parts(layout: AnyGPTLayout) -> list[_Part]:
    st, ss = layout.speechtokenizer_dir, layout.soundstorm_file
    return [
        _Part(
            "speechtokenizer",
            (f"{st}/config.json", f"{st}/ckpt.dev"),
            _check_speechtokenizer,
            use="speech in (user's voice -> codes) and out (codes -> waveform)",
        ),
        _Part("soundstorm", (ss,), _check_soundstorm, use="fills levels 2..8 of spoken replies"),
        _Part(
            "encodec_32khz",
            (
                f"{layout.encodec_dir}/config.json",
                f"{layout.encodec_dir}/model.safetensors|{layout.encodec_dir}/pytorch_model.bin",
            ),
            _check_encodec,
            use="music in and out",
        ),
        _Part("seed-tokenizer-2", (layout.seed_file,), _check_seed, use="image tokens -> picture embedding"),
        _Part(
            "eva_vit_g",
            (layout.vit_file,),
            _check_vit,
            required=False,
            use="reading pictures users send (SEED encoder)",
        ),
        _Part(
            "stable-diffusion-2-1-unclip",
            (f"{layout.unclip_dir}/",),
            _check_unclip,
            required=False,
            use="drawing pictures from SEED embeddings",
        ),
    ]


_WEIGHTS = "model.safetensors|model.safetensors.index.json|pytorch_model.bin|pytorch_model.bin.index.json"


def _lm_part(name: str) -> _Part:
    return _Part(
        name,
        (
            f"{name}/config.json",
            f"{name}/tokenizer.model",
            f"{name}/added_tokens.json",
            "|".join(f"{name}/{w}" for w in _WEIGHTS.split("|")),
        ),
        None,
        use="the language model",
    )


def _lm_check(folder: Path) -> Callable[[AnyGPTLayout], str]:
    return lambda _layout: _check_lm(folder)


def check_weights(root: str | Path) -> list[PartReport]:
    """What is present under ``root``, what is missing, and whether each present part loads strictly."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    layout = AnyGPTLayout(root)
    reports: list[PartReport] = []
    lm_present = [name for name in LM_DIRS if (root / name).is_dir()]
    for name in lm_present or list(LM_DIRS[:1]):
        reports.append(_report(root, _lm_part(name), _lm_check(root / name)))
    if not lm_present:
        reports[-1].detail = f"neither {' nor '.join(LM_DIRS)} is present"
    for part in _parts(layout):
        reports.append(_report(root, part, part.check))
    return reports


def failed(reports: list[PartReport]) -> list[PartReport]:
    """Parts that are (partly) present but do not load: the ones that make ``check-weights`` exit non-zero."""
    return [r for r in reports if r.status in ("failed", "incomplete")]


def _report(root: Path, part: _Part, check: Callable[[AnyGPTLayout], str] | None) -> PartReport:
    present = [f for f in part.files if _exists(root, f)]
    missing = [f for f in part.files if not _exists(root, f)]
    report = PartReport(part.name, list(part.files), present, missing, "ok", part.use, part.required)
    if not present:
        report.status = "missing"
        return report
    if missing:
        report.status = "incomplete"
        report.detail = "missing " + ", ".join(name.replace("|", " or ") for name in missing)
        return report
    if check is None:
        return report
    try:
        report.detail = check(AnyGPTLayout(root))
    except ConfigError as exc:
        report.status, report.detail = "failed", str(exc)
    except (ImportError, OSError, ValueError, RuntimeError) as exc:
        report.status, report.detail = "failed", f"{type(exc).__name__}: {exc}"
    return report
