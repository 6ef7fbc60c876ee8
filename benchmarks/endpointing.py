"""Prints how endpointing settings treat the held-out spoken questions, and coughs and clicks.

    .venv/bin/python benchmarks/endpointing.py [--settings 700:0,450:200,350:200] [--limit N]

The questions are ``make eval-mini``'s spoken user turns (held-out voices, at their own speeds), each with 0.3 s of
silence before and 2 s after, sent through an Opus round trip at 32 kb/s (what WebRTC does to them) and pushed 20 ms
at a time through :class:`assistant.endpointing.VadEndpointer` with the server's other defaults. Each setting is
``END_SILENCE_MS:PAUSE_MS``. For each it prints:

- turns: questions that produced exactly one turn end, as they should;
- false ends: turn ends beyond the first in one question (the speaker was cut off mid-question), and missed
  questions (no turn end at all);
- pauses / resumes: speculative starts per question, and how many of them the speaker then talked over (each such
  one is wasted work: an encode and a prefill thrown away);
- end delay: from the question's last voiced sample to the turn end (what the user waits before anything can play),
  and from it to the last pause (when a speculative start begins), p50 / p95;
- noises: synthetic coughs (shaped noise bursts of 150-400 ms) and clicks (single impulses and short click trains),
  each alone in silence: how many started a turn (want 0) and how many became a turn (want 0).

Figures, not assertions (tests/test_endpointing.py asserts the rules).
"""

from __future__ import annotations

import argparse

import numpy as np

from assistant.audio import SAMPLE_RATE, float_to_pcm16
from assistant.endpointing import (
    EndpointerConfig,
    SpeechDiscarded,
    SpeechEnd,
    SpeechPaused,
    SpeechResumed,
    SpeechStart,
    VadEndpointer,
)

FRAME = SAMPLE_RATE // 50
LEAD_S, TAIL_S = 0.3, 2.0


def spoken_questions(limit: int | None) -> list[np.ndarray]:
    from training import domain, voices
    from training.augment import opus_round_trip
    from training.evaluate import EvalPlan

    plan = EvalPlan()
    dialogues = domain.generate_dialogues(
        plan.per_family * len(domain.FAMILIES), seed=plan.seed, voices=voices.HELDOUT_VOICES, families=domain.FAMILIES
    )
    users = [user for dialogue in dialogues for user, _ in dialogue.turns if user.spoken]
    waves = []
    for user in users[:limit]:
        wave = voices.synthesize(user.words, user.voice, user.speed)
        waves.append(opus_round_trip(wave, bitrate=32000))
    return waves


def noises(seed: int = 0) -> list[np.ndarray]:
    """Coughs: noise bursts with a fast attack and slower decay, band-shaped; clicks: impulses and click trains."""
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(20):
        n = int(SAMPLE_RATE * rng.uniform(0.15, 0.4))
        envelope = np.minimum(1.0, np.arange(n) / (0.01 * SAMPLE_RATE)) * np.exp(-np.arange(n) / (0.3 * n))
        burst = np.convolve(rng.standard_normal(n), np.hanning(int(rng.integers(3, 12))), mode="same")
        found.append((rng.uniform(0.2, 0.7) * envelope * burst / np.max(np.abs(burst))).astype(np.float32))
    for _ in range(10):
        click = np.zeros(int(0.05 * SAMPLE_RATE), np.float32)
        click[int(rng.integers(0, 200)) :: int(rng.integers(300, 800))] = rng.uniform(0.3, 0.9)
        found.append(click)
    return found


def run(config: EndpointerConfig, wave: np.ndarray) -> list[tuple[int, object]]:
    """(frame index, event) for ``wave`` with lead and tail silence."""
    lead = np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32)
    tail = np.zeros(int(TAIL_S * SAMPLE_RATE), np.float32)
    pcm = float_to_pcm16(np.concatenate([lead, wave, tail]))
    endpointer = VadEndpointer(config)
    events = []
    for i in range(pcm.size // FRAME):
        for event in endpointer.push(pcm[i * FRAME : (i + 1) * FRAME].tobytes()):
            events.append((i, event))
    return events


def last_voiced_frame(wave: np.ndarray) -> int:
    """The frame (in the padded signal) holding the question's last sample above -40 dBFS."""
    loud = np.flatnonzero(np.abs(wave) > 0.01)
    return (int(LEAD_S * SAMPLE_RATE) + int(loud[-1])) // FRAME if loud.size else 0


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.percentile(values, 50) * 1000:.0f} / {np.percentile(values, 95) * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="700:0,450:200,400:200,350:200,300:150")
    parser.add_argument("--limit", type=int, default=None, help="at most this many questions")
    args = parser.parse_args()
    questions = spoken_questions(args.limit)
    sounds = noises()
    print(f"{len(questions)} held-out spoken questions, {len(sounds)} coughs and clicks")
    header = f"{'end:pause ms':>12} {'turns':>7} {'false ends':>10} {'missed':>6} {'pauses/q':>8} {'resumes':>7}"
    print(header + f" {'end delay p50/p95':>18} {'pause delay p50/p95':>20} {'noise starts':>12} {'noise turns':>11}")
    for setting in args.settings.split(","):
        end_ms, pause_ms = (int(x) for x in setting.split(":"))
        config = EndpointerConfig(end_silence_ms=end_ms, pause_ms=pause_ms)
        good = false_ends = missed = pauses = resumes = 0
        end_delays: list[float] = []
        pause_delays: list[float] = []
        for wave in questions:
            events = run(config, wave)
            ends = [i for i, e in events if isinstance(e, SpeechEnd)]
            pauses += sum(isinstance(e, SpeechPaused) for _, e in events)
            resumes += sum(isinstance(e, SpeechResumed) for _, e in events)
            if not ends:
                missed += 1
                continue
            good += len(ends) == 1
            false_ends += len(ends) - 1
            last = last_voiced_frame(wave)
            end_delays.append((ends[-1] + 1 - last) * FRAME / SAMPLE_RATE)
            final_pauses = [i for i, e in events if isinstance(e, SpeechPaused) and i <= ends[-1]]
            if final_pauses:
                pause_delays.append((final_pauses[-1] + 1 - last) * FRAME / SAMPLE_RATE)
        noise_starts = noise_turns = 0
        for sound in sounds:
            events = [e for _, e in run(config, sound)]
            noise_starts += any(isinstance(e, SpeechStart) for e in events)
            noise_turns += any(isinstance(e, SpeechEnd) for e in events)
            assert all(isinstance(e, SpeechStart | SpeechEnd | SpeechDiscarded | SpeechPaused) for e in events)
        n = max(1, len(questions))
        print(
            f"{setting:>12} {good:>7} {false_ends:>10} {missed:>6} {pauses / n:>8.2f} {resumes:>7} "
            f"{spread(end_delays):>18} {spread(pause_delays):>20} {noise_starts:>12} {noise_turns:>11}"
        )


if __name__ == "__main__":
    main()
