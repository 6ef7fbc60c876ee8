"""The models of one family, loaded together (torch-free to import): what the in-process backends run over.

``assistant.models.loading.load_models(spec, parts)`` returns one; a Serve replica loads only the parts of its role,
so a model left out is None. Every model is typed by its role's interface (``assistant.models.interfaces``), so the
backends read the same members whatever the family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from assistant.vocab import Modality, UnifiedVocab

if TYPE_CHECKING:
    from assistant.decoding.lm_sampler import GenerationSettings
    from assistant.decoding.maskgit import AcousticFill
    from assistant.models.interfaces import AcousticModel, CausalLM, ImageCodec, MusicCodec, SpeechCodec
    from assistant.models.voices import VoiceBank

MODEL_NAMES = ("lm", "codec", "acoustic", "image", "music")


def check_parts(parts: tuple[str, ...]) -> None:
    unknown = sorted(set(parts) - set(MODEL_NAMES))
    if unknown:
        raise ValueError(f"unknown model parts {unknown}; known: {MODEL_NAMES}")


@dataclass
class ModelBundle:
    """The models of one family. A model left out at load time (``parts``) is None."""

    vocab: UnifiedVocab
    lm: CausalLM | None
    generation: GenerationSettings
    codec: SpeechCodec | None
    acoustic: AcousticModel | None
    image: ImageCodec | None
    music: MusicCodec | None
    weights_loaded: tuple[str, ...] = ()  # names of the models whose weights were read (the rest: seeded init)
    voices: VoiceBank | None = None  # None: no voice bank, replies use no acoustic prompt
    acoustic_fill: AcousticFill | None = None  # None: the decoding default (AnyGPT's SoundStorm has its own loop)

    @property
    def parts(self) -> tuple[str, ...]:
        """Names (``MODEL_NAMES``) of the models this bundle holds."""
        return tuple(name for name in MODEL_NAMES if getattr(self, name) is not None)

    def validate(self) -> None:
        """The loaded models must agree with the vocabulary and with each other."""
        v = self.vocab
        checks = []
        if self.lm is not None:
            checks.append(("lm vocab_size", self.lm.config.vocab_size, v.size))
        if self.codec is not None:
            checks.append(("codec codebook_size", self.codec.codebook_size, v.range_of(Modality.SPEECH).n_codes))
        if self.acoustic is not None:
            checks.append(("acoustic codebook_size", self.acoustic.codebook_size, v.range_of(Modality.SPEECH).n_codes))
            if self.codec is not None:
                checks.append(("acoustic n_q", self.acoustic.n_q, self.codec.n_q))
        if self.image is not None:
            checks.append(("image codebook_size", self.image.codebook_size, v.range_of(Modality.IMAGE).n_codes))
        if self.music is not None:
            checks.append(("music vocab_size", self.music.vocab_size, v.range_of(Modality.MUSIC).n_codes))
        if self.voices is not None:
            checks.append(("voice bank codebook_size", self.voices.codebook_size, v.range_of(Modality.SPEECH).n_codes))
            if self.acoustic is not None:
                checks.append(("voice bank n_q", self.voices.n_q, self.acoustic.n_q))
        for what, got, want in checks:
            if got != want:
                raise ValueError(f"{what} is {got}, expected {want}")
