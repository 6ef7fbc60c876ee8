"""The embedded model family: tiny models that run on a CPU, trained here (``make train-mini``) and shipped with the
package in ``assistant/assets/embedded/`` (torch-free to import; the models are in the modules below).

    speech.py    MelRVQCodec          log-mel residual VQ + Griffin-Lim (no network)
    (acoustic)   SoundStorm           the shared class (``models/soundstorm.py``) at a small size (``acoustic.json``),
                                      filling levels 2..n_q
    image.py     ImageDetokenizer     VQ autoencoder, 32 codes <-> 64 x 64 pictures
    music.py     MusicDetokenizer     log-magnitude residual VQ + Griffin-Lim
    lm.py        LMConfig, build_lm   a tiny LLaMA over the unified vocabulary
    loader.py    the family's loader (``assistant.models.loading.load_models`` calls it)
"""

from pathlib import Path

EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "assets" / "embedded"
