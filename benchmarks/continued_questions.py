"""Prints how the embedded models hear a question asked in two halves, as the server asks a continued question.

    .venv/bin/python benchmarks/continued_questions.py [--questions 40] [--gap 0.2]

When a caller pauses mid-question for longer than the end of a turn and goes on within ``continue_within_ms``, the
session asks the two utterances as one (``assistant.webrtc.session``): the first half's audio, a short pause
(``assistant.audio.join_utterances``), the second half. The model never trained on questions with a pause inside, so
this measures what that costs. For held-out spoken questions of ``make eval-mini``'s set (arithmetic, facts, small
talk, say; held-out voices, at their own speeds) with at least four words, each is asked three ways through the
in-process engine, each in a fresh conversation:

- whole: the question synthesized in one go (as ``make eval-mini`` asks it);
- joined: its two halves (split at the middle word) synthesized apart and joined with a ``--gap`` pause;
- unjoined: the same halves with the 0.5 s of silence the endpointer's end of turn and pre-roll leave between them.

For each it prints how often the ``<-Ins->`` transcript is the question exactly, and the text reply the reference.
Figures, not assertions (tests/webrtc/test_rtc_speculative.py asserts the session's behaviour).
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np
import torch

from assistant.audio import SAMPLE_RATE, join_utterances
from assistant.models.loading import ModelSpec, load_models
from assistant.models.voices import VoiceBank
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.pipeline.outputs import ReplyTextDelta, TranscriptDelta
from training import domain, voices

FAMILIES = (domain.ARITHMETIC, domain.FACTS, domain.SMALL_TALK, domain.SAY)
ENDPOINTER_SILENCE_S = 0.5  # end_silence_ms (300) + pre_roll_ms (200) of the embedded config


def normalise(text: str) -> str:
    return " ".join(text.strip().lower().split())


async def ask(engine: AssistantEngine, audio: np.ndarray) -> tuple[str, str]:
    """-> (transcript, reply text) of one spoken question in a fresh conversation (the reply's audio is not needed,
    so the turn is stopped once its text is complete)."""
    session = engine.new_session()
    transcript, text = "", ""
    async for item in session.respond(UserTurn(audio=audio)):
        if isinstance(item, TranscriptDelta):
            transcript += item.text
        elif isinstance(item, ReplyTextDelta):
            text += item.text
        elif text:
            session.interrupt()  # the text is followed by speech: nothing more to read
    await session.close()
    return normalise(transcript), normalise(text)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.2, help="seconds of pause at the join")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from assistant.models.embedded import EMBEDDED_DIR
    from assistant.pipeline.local import local_backends

    bundle = load_models(ModelSpec())
    bank = VoiceBank.from_json(EMBEDDED_DIR / "voices.json")
    engine = AssistantEngine(local_backends(bundle, seed=0), bundle.vocab, EngineConfig(), voices=bank)
    dialogues = domain.generate_dialogues(
        16 * len(domain.FAMILIES), seed=2026, voices=voices.HELDOUT_VOICES, families=domain.FAMILIES
    )
    asked = [
        (user, reply)
        for d in dialogues
        if d.family in FAMILIES
        for user, reply in d.turns[:1]
        if user.spoken and len(user.words.split()) >= 4
    ][: args.questions]
    silence = np.zeros(int(ENDPOINTER_SILENCE_S * SAMPLE_RATE), dtype=np.float32)
    right = {way: [0, 0] for way in ("whole", "joined", "unjoined")}
    for user, reply in asked:
        words = user.words.split()
        half = len(words) // 2
        first = voices.synthesize(" ".join(words[:half]), user.voice, user.speed)
        second = voices.synthesize(" ".join(words[half:]), user.voice, user.speed)
        ways = {
            "whole": voices.synthesize(user.words, user.voice, user.speed),
            "joined": join_utterances(first, second, SAMPLE_RATE, gap_s=args.gap),
            "unjoined": np.concatenate([first, silence, second]),
        }
        line = []
        for way, audio in ways.items():
            transcript, text = await ask(engine, audio)
            right[way][0] += transcript == user.words
            right[way][1] += text == normalise(reply.text)
            line.append(f"{way}: {transcript!r}")
        print(f"{user.words!r} -> " + "; ".join(line), flush=True)
    n = len(asked)
    print(f"\n{n} questions, gap {args.gap} s at the join")
    print("| asked | transcript exact | text reply exact |")
    print("|---|---|---|")
    for way, (transcripts, texts) in right.items():
        print(f"| {way} | {transcripts / n:.3f} | {texts / n:.3f} |")


if __name__ == "__main__":
    asyncio.run(main())
