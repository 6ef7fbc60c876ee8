"""One interface per model role: exactly what the engine, the decoders and the backends read of a model (torch-free).

Roles and their implementations (every one subclasses its interface, so a missing member fails at construction;
through ``SpeechCodecFromConfig`` and its like, which read the sizes off the implementation's config)::

    SpeechCodec     wave <-> [n_q, F] codes     embedded.speech.MelRVQCodec       anygpt.speech.SpeechTokenizer
    AcousticModel   level 1 -> levels 2..n_q    anygpt.acoustic.SoundStorm (both families; embedded: a small size)
    ImageCodec      picture <-> codes           embedded.image.ImageDetokenizer   anygpt.image.SeedImageCodec
    MusicCodec      wave <-> music tokens       embedded.music.MusicDetokenizer   anygpt.music.EncodecMusic
    CausalLM        the LM's forward pass       transformers' LlamaForCausalLM (both families; checked in tests)

Who reads what: ``assistant.pipeline.local`` (the in-process backends), ``assistant.decoding.maskgit`` and
``soundstorm_decoding`` (the acoustic fill strategies and the chunked decoder), ``ModelBundle.validate``, and
``assistant.lm_engine.model_runner`` (the LM). The interfaces are ``runtime_checkable`` Protocols: a test double with
the same members passes ``isinstance`` without subclassing.

``DEFAULT_CONTEXT_FRAMES`` is the one default of how many frames of the previous chunk the acoustic model reads as
left context (the engine sends that many; the chunked decoder trims to it).
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar, overload, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor

logger = logging.getLogger(__name__)

# Frames of the previous chunk decoded again before each chunk: 25 frames = 0.5 s at 50 Hz, enough for the codec's
# Griffin-Lim and the acoustic model to join chunks smoothly, and the most context the embedded decoder was trained
# with (``training/train_acoustic.py``).
DEFAULT_CONTEXT_FRAMES = 25


@runtime_checkable
class SpeechCodec(Protocol):
    """Float waves at ``sample_rate`` <-> integer codes ``[n_q, F]`` at ``frame_rate`` (``hop`` samples a frame).

    Level 1 is the LM's "semantic" stream; levels 2..n_q are acoustic detail. Codes come back on the CPU or the
    input's device; the codec runs on ``device``.
    """

    @property
    @abstractmethod
    def sample_rate(self) -> int: ...

    @property
    @abstractmethod
    def frame_rate(self) -> int: ...

    @property
    @abstractmethod
    def hop(self) -> int: ...

    @property
    @abstractmethod
    def n_q(self) -> int: ...

    @property
    @abstractmethod
    def codebook_size(self) -> int: ...

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @abstractmethod
    def encode(self, wave: Tensor) -> Tensor:
        """float wave ``[T]`` -> LongTensor ``[n_q, ceil(T / hop)]``."""

    @abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """LongTensor ``[n_q, F]`` -> float32 wave ``[F * hop]``."""

    @abstractmethod
    def encode_batch(self, waves: Sequence[Tensor], n_q: int | None = None) -> list[Tensor]:
        """Several waves ``[T_i]`` -> their codes ``[n_q, ceil(T_i / hop)]`` each, equal to ``encode(wave)[:n_q]``
        (``n_q`` None: every level); batched where that leaves every utterance's codes unchanged."""

    @abstractmethod
    def decode_batch(self, codes: Tensor) -> Tensor:
        """LongTensor ``[B, n_q, F]`` -> float32 waves ``[B, F * hop]`` (rows of equal length, nothing padded)."""


@runtime_checkable
class AcousticModel(Protocol):
    """Predicts codec levels 2..n_q from level 1 and a partially masked copy of levels 2..n_q (MaskGIT-style).

    Inputs: semantic ``[B, T]`` in ``[0, semantic_vocab)``; acoustic ``[B, n_q - 1, T]`` in ``[0, codebook_size]``,
    where ``mask_id`` (= codebook_size) marks a masked code. Every frame is real (no padding mask).
    """

    @property
    @abstractmethod
    def n_q(self) -> int: ...

    @property
    @abstractmethod
    def codebook_size(self) -> int: ...

    @property
    @abstractmethod
    def semantic_vocab(self) -> int: ...

    @property
    @abstractmethod
    def mask_id(self) -> int: ...

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    def __call__(self, semantic: Tensor, acoustic: Tensor) -> Tensor:
        """Logits ``[B, T, n_q - 1, codebook_size]`` (an ``nn.Module``'s call runs ``forward``)."""
        ...

    @abstractmethod
    def level_logits(self, semantic: Tensor, acoustic: Tensor, level: Tensor | int, start: int = 0) -> Tensor:
        """The logits of one predicted level per sequence (0 = codec level 2; int or LongTensor ``[B]``) for frames
        ``start..T``: ``[B, T - start, codebook_size]``, equal to ``self(semantic, acoustic)[:, start:, level]``."""


@runtime_checkable
class ImageCodec(Protocol):
    """A picture <-> ``tokens_per_image`` codes in ``[0, codebook_size)``.

    A code list of the wrong length follows ``fit_token_count``: an error with ``strict``, else padded with its last
    code or truncated (what a generated image gets: a turn never fails over it).
    """

    @property
    @abstractmethod
    def tokens_per_image(self) -> int: ...

    @property
    @abstractmethod
    def codebook_size(self) -> int: ...

    @property
    @abstractmethod
    def image_size(self) -> int:
        """Side in pixels of the pictures ``decode_png`` draws."""

    @property
    @abstractmethod
    def input_size(self) -> int:
        """Side in pixels ``encode`` reads pictures at (a picture is resized to it)."""

    @abstractmethod
    def decode_png(self, codes: list[int], *, strict: bool = True) -> bytes:
        """codes -> PNG bytes of an ``image_size`` x ``image_size`` RGB picture."""

    @abstractmethod
    def encode(self, image: np.ndarray) -> list[int]:
        """uint8 RGB ``[H, W, 3]`` (any size) -> ``tokens_per_image`` codes."""


@runtime_checkable
class MusicCodec(Protocol):
    """Music tokens (``assistant.modules.music_tokens``: frame-major, token = code + codebook_size * level, ids in
    ``[0, vocab_size)``) <-> float32 mono waves at ``sample_rate``.

    ``decode`` repairs a token the LM skipped or repeated by level, never an error; a token outside ``[0,
    vocab_size)`` raises ``ValueError``.
    """

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def sample_rate(self) -> int: ...

    @abstractmethod
    def decode(self, tokens: list[int]) -> np.ndarray: ...

    @abstractmethod
    def encode(self, wave: np.ndarray) -> list[int]: ...


# ----- the interface attributes an implementation keeps in its config -----------------------------------------------
# Every implementation keeps its sizes in a config dataclass (``self.config``) under the interface's names; the
# ``...FromConfig`` bases read them there, so that an implementation writes only what is its own (``device``, the
# model itself). Each implementing class declares ``config`` with its own config type.
T = TypeVar("T")


class ConfigAttribute(Generic[T]):
    """A read-only attribute that is the field (or property) of the same name of the instance's ``config``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> Self: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...

    def __get__(self, instance: Any, owner: type | None = None) -> Self | T:
        if instance is None:  # looked up on the class (as abc does when it collects abstract members)
            return self
        return getattr(instance.config, self.name)


class SpeechCodecFromConfig(SpeechCodec):
    """A ``SpeechCodec`` whose sizes are its config's."""

    config: Any
    sample_rate = ConfigAttribute[int]()
    frame_rate = ConfigAttribute[int]()
    hop = ConfigAttribute[int]()
    n_q = ConfigAttribute[int]()
    codebook_size = ConfigAttribute[int]()

    def num_frames(self, num_samples: int) -> int:
        """Code frames of a wave of ``num_samples`` samples (frame f centred at sample f * hop)."""
        return math.ceil(num_samples / self.hop)


class AcousticModelFromConfig(AcousticModel):
    """An ``AcousticModel`` whose sizes are its config's (an ``AcousticLevels``, with ``semantic_vocab``)."""

    config: Any
    n_q = ConfigAttribute[int]()
    codebook_size = ConfigAttribute[int]()
    semantic_vocab = ConfigAttribute[int]()
    mask_id = ConfigAttribute[int]()


class AcousticLevels:
    """The level layout an acoustic model's config shares with the ``AcousticModel`` interface: ``n_q`` levels of
    ``codebook_size`` codes, levels 2..n_q predicted, and ``codebook_size`` itself the mask id of each of them."""

    n_q: int
    codebook_size: int

    def check_levels(self) -> None:
        """``ValueError`` for a layout with nothing to predict (called by the config's ``__post_init__``)."""
        if self.n_q < 2:
            raise ValueError(f"n_q must be >= 2 (level 1 + at least one acoustic level), got {self.n_q}")

    @property
    def n_acoustic(self) -> int:
        """Predicted levels (codec levels 2..n_q)."""
        return self.n_q - 1

    @property
    def mask_id(self) -> int:
        return self.codebook_size


class ImageCodecFromConfig(ImageCodec):
    """An ``ImageCodec`` whose sizes are its config's."""

    config: Any
    tokens_per_image = ConfigAttribute[int]()
    codebook_size = ConfigAttribute[int]()
    image_size = ConfigAttribute[int]()
    input_size = ConfigAttribute[int]()


class MusicCodecFromConfig(MusicCodec):
    """A ``MusicCodec`` whose sizes are its config's."""

    config: Any
    vocab_size = ConfigAttribute[int]()
    sample_rate = ConfigAttribute[int]()


# ----- the LM runtime -----------------------------------------------------------------------------------------------
# What ``assistant.lm_engine.model_runner.SlotModelRunner`` reads of a LLaMA (transformers' ``LlamaForCausalLM``
# layout, which both families use): the runner runs these modules itself, over its own KV cache.
Layer = Callable[["Tensor"], "Tensor"]


@runtime_checkable
class LMSettings(Protocol):
    """The fields of the LM's config (a transformers ``LlamaConfig``) the runtime reads."""

    vocab_size: int
    max_position_embeddings: int
    num_attention_heads: int
    num_key_value_heads: int


class SelfAttention(Protocol):
    q_proj: Layer
    k_proj: Layer
    v_proj: Layer
    o_proj: Layer
    head_dim: int
    scaling: float


class DecoderLayer(Protocol):
    self_attn: SelfAttention
    input_layernorm: Layer
    post_attention_layernorm: Layer
    mlp: Layer


class DecoderStack(Protocol):
    embed_tokens: Layer
    layers: Sequence[DecoderLayer]
    norm: Layer
    rotary_emb: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # (x, positions [B, n]) -> cos, sin [B, n, dh]


@runtime_checkable
class CausalLM(Protocol):
    """A decoder-only LM over the unified vocabulary: ``lm_head`` rows cover the vocabulary's ids."""

    config: LMSettings
    model: DecoderStack
    lm_head: Any  # an nn.Linear: the runner reads its ``weight`` (rows, dtype)

    def parameters(self) -> Iterator[Tensor]: ...

    def __call__(self, *, input_ids: Tensor, **kwargs: Any) -> Any:
        """transformers' forward (``.logits [B, n, V]``): the path of models the slot runner cannot run."""
        ...


def fit_token_count(codes: list[int], expected: int, *, strict: bool = True) -> tuple[list[int], bool]:
    """The image token-count policy of every ``ImageCodec``: an empty list always raises ``ValueError``; with
    ``strict`` any other wrong count raises too; else a short list is padded by repeating its last code and a long
    one truncated (a warning is logged). Returns (codes, adjusted)."""
    if len(codes) == 0:
        raise ValueError(f"image has no tokens; expected {expected}")
    if len(codes) == expected:
        return list(codes), False
    if strict:
        raise ValueError(f"image has {len(codes)} tokens, expected exactly {expected}")
    if len(codes) < expected:
        logger.warning("image has %d tokens, expected %d: padded with the last code", len(codes), expected)
        return list(codes) + [codes[-1]] * (expected - len(codes)), True
    logger.warning("image has %d tokens, expected %d: truncated", len(codes), expected)
    return list(codes[:expected]), True
