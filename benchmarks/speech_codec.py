"""Prints how well the speech codec's level 1 carries content rather than voice, and its round-trip intelligibility.

    .venv/bin/python benchmarks/speech_codec.py [--assets DIR] [--threads 2]

Eight fixed sentences (``training.codec_eval.TEST_SENTENCES``), each read by 8 training voices and the 7 held-out
voices. Level-1 sequences (repeats collapsed) are compared by normalised edit distance: one sentence in two voices
(want low: issue 13's target is <= 0.4) and two sentences in one voice (want high: >= 0.8). Then the pocketsphinx
sentence judge on the original audio and on the codec's decode of its own codes, held-out voices only.
Figures, not assertions.
"""

from __future__ import annotations

import argparse
import time

import torch

from assistant.models.embedded import EMBEDDED_DIR
from assistant.models.loading import ModelSpec, load_models
from training.codec_eval import codec_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", default=str(EMBEDDED_DIR))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = load_models(ModelSpec(assets_dir=args.assets), parts=("codec",)).codec
    assert codec is not None
    started = time.monotonic()
    report = codec_report(codec)
    print(f"{'level-1 distance':28} {'same sentence':>14} {'other sentence':>15} {'pairs':>12}")
    for name in ("training_voices", "heldout_voices", "all_voices"):
        row = report[name]
        pairs = "/".join(str(p) for p in row["pairs"])
        print(f"{name:28} {row['same_sentence']:14.3f} {row['different_sentences']:15.3f} {pairs:>12}")
    trip = report["round_trip_heldout"]
    print(f"round trip, held-out voices: judge right on {trip['decoded']:.2f} (original audio {trip['original']:.2f})")
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
