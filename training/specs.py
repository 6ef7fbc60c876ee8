"""What the synthesized instruction set talks about: the attribute vocabularies and the specs that the generators
(speech, images, music) render and the judges measure. Plain data, no torch.

Every spec is hashable and has a canonical ``words()`` phrase, so the dialogue generator, the renderers and the
evaluation all agree on what "a big red circle" or "a fast minor tune" is.
"""

from __future__ import annotations

from dataclasses import dataclass

# Images ---------------------------------------------------------------------------------------------------------
SHAPE_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
BACKGROUNDS: tuple[str, ...] = ("white", "black", "gray")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
SIZES: tuple[str, ...] = ("small", "big")
DEFAULT_BACKGROUND = "white"
DEFAULT_SIZE = "big"

# Music ----------------------------------------------------------------------------------------------------------
TEMPOS_BPM: dict[str, int] = {"slow": 80, "medium": 110, "fast": 150}
MODES: tuple[str, ...] = ("major", "minor")
REGISTERS: tuple[str, ...] = ("low", "middle", "high")
TIMBRES: tuple[str, ...] = ("piano", "organ", "flute")
DEFAULT_REGISTER = "middle"
DEFAULT_TIMBRE = "piano"


@dataclass(frozen=True)
class ImageSpec:
    """One picture: a coloured shape on a plain background. ``jitter`` seeds small random offsets of position and
    size (0 = the canonical centred rendering, which is what "draw ..." replies use)."""

    shape: str
    colour: str
    background: str = DEFAULT_BACKGROUND
    size: str = DEFAULT_SIZE
    jitter: int = 0

    def __post_init__(self) -> None:
        _check("shape", self.shape, SHAPES)
        _check("colour", self.colour, SHAPE_COLOURS)
        _check("background", self.background, BACKGROUNDS)
        _check("size", self.size, SIZES)
        if self.jitter < 0:
            raise ValueError("jitter must be >= 0")

    def words(self) -> str:
        """e.g. 'a big red circle on a white background'."""
        return f"a {self.size} {self.colour} {self.shape} on a {self.background} background"


@dataclass(frozen=True)
class MusicSpec:
    """One short monophonic tune. ``variant`` picks one of a few melodies of the same mode (0 = the canonical one,
    which is what "play ..." replies use)."""

    tempo: str
    mode: str
    register: str = DEFAULT_REGISTER
    timbre: str = DEFAULT_TIMBRE
    variant: int = 0

    def __post_init__(self) -> None:
        _check("tempo", self.tempo, tuple(TEMPOS_BPM))
        _check("mode", self.mode, MODES)
        _check("register", self.register, REGISTERS)
        _check("timbre", self.timbre, TIMBRES)
        if self.variant < 0:
            raise ValueError("variant must be >= 0")

    @property
    def bpm(self) -> int:
        return TEMPOS_BPM[self.tempo]

    def words(self) -> str:
        """e.g. 'a fast minor tune on the organ'."""
        return f"a {self.tempo} {self.mode} tune on the {self.timbre}"


@dataclass(frozen=True)
class Voice:
    """One espeak-ng voice: language voice + variant, pitch (0-99) and base speed (words per minute)."""

    name: str  # our label, e.g. "f2-low"
    espeak: str  # espeak-ng voice argument, e.g. "en-us+f2"
    pitch: int = 50
    speed: int = 165

    def __post_init__(self) -> None:
        if not 0 <= self.pitch <= 99:
            raise ValueError(f"pitch must be in [0, 99], got {self.pitch}")
        if not 80 <= self.speed <= 450:
            raise ValueError(f"speed must be in [80, 450] words per minute, got {self.speed}")


def _check(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(allowed)}")
