"""One interface per model role: every implementation of both families declares it (so a missing member fails at
construction), and the modules that describe models, read their configs and choose a loader import without torch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from assistant.models import interfaces
from assistant.models.anygpt.image import SeedImageCodec
from assistant.models.anygpt.music import EncodecMusic
from assistant.models.anygpt.speech import SpeechTokenizer
from assistant.models.embedded.image import ImageDetokenizer
from assistant.models.embedded.music import MusicDetokenizer
from assistant.models.embedded.speech import MelRVQCodec
from assistant.models.soundstorm import SoundStorm

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "interface, implementations",
    [
        (interfaces.SpeechCodec, (MelRVQCodec, SpeechTokenizer)),
        (interfaces.AcousticModel, (SoundStorm,)),  # both families: one class
        (interfaces.ImageCodec, (ImageDetokenizer, SeedImageCodec)),
        (interfaces.MusicCodec, (MusicDetokenizer, EncodecMusic)),
    ],
    ids=["speech", "acoustic", "image", "music"],
)
def test_each_family_implements_each_role(interface, implementations):
    for cls in implementations:
        assert interface in cls.__mro__, cls  # declared, not only duck-typed
        assert not getattr(cls, "__abstractmethods__", ()), cls


def test_a_model_missing_a_member_of_its_role_cannot_be_built():
    import torch

    class Half(torch.nn.Module, interfaces.SpeechCodec):
        def encode(self, wave):
            return wave

    with pytest.raises(TypeError, match="abstract"):
        Half()


def test_the_token_count_policy_of_every_image_codec(caplog):
    assert interfaces.fit_token_count([4] * 5, 5) == ([4] * 5, False)
    assert interfaces.fit_token_count([1, 2, 3], 5, strict=False) == ([1, 2, 3, 3, 3], True)
    assert interfaces.fit_token_count(list(range(7)), 5, strict=False) == ([0, 1, 2, 3, 4], True)
    with pytest.raises(ValueError, match="no tokens"):
        interfaces.fit_token_count([], 5, strict=False)
    with pytest.raises(ValueError, match="3 tokens, expected exactly 5"):
        interfaces.fit_token_count([1, 2, 3], 5)


def test_describing_reading_and_choosing_models_imports_no_torch():
    modules = [
        "assistant.models.interfaces",
        "assistant.models.config_io",
        "assistant.models.bundle",
        "assistant.models.loading",
        "assistant.models.voices",
        "assistant.models.embedded",
        "assistant.models.anygpt",
        "assistant.modules",
        "assistant.vocab",
    ]
    code = "import importlib, json, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "torch" not in json.loads(out.stdout)
