"""Prints how soon a caller hears the answer after their question ends, over real WebRTC, on held-out questions.

    make serve                                    # in one shell (or any anystream-serve URL)
    .venv/bin/python benchmarks/turn_latency.py --server http://127.0.0.1:8000 [--questions 30] [--json out.json]

One caller at a time (a real aiortc peer, :class:`anystream_bench.webrtc_client.BenchClient`) speaks one of
``make eval-mini``'s spoken questions (held-out voices, their own speeds; trailing silence trimmed, so the question
ends at its last sample above -40 dBFS) and waits for the answer; a fresh session per question. Figures:

- first answer audio: from the question's end (the frame with its last sample leaving the caller) to the first loud
  answer frame reaching the caller, p50 / p95 / max (issue 14's targets on this CPU: p50 <= 0.5 s, p95 <= 0.7 s);
- endpoint: from the question's end to the server's ``speech_stopped`` (the turn certain);
- false turn ends: questions the server heard as more than one turn (more than one ``speech_stopped``), and questions
  with no answer;

With ``--barge-in`` each caller instead speaks a second question over the answer, 0.5 s after the answer's first loud
frame, and the figures are how soon the answer stops at the caller: from the first voiced frame of the interruption
leaving the caller to the later of the server's ``interrupted`` arriving (on which a client drops what it still
buffers) and the last loud frame of the old answer arriving (issue 14's target: 0.2 s); and how many loud frames of
the old answer still arrived after ``interrupted`` (a client plays them as silence).

Figures, not assertions; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np

from anystream_bench.timeline import LOUD_RMS
from anystream_bench.webrtc_client import BenchClient, QuestionSource
from assistant.audio import SAMPLE_RATE


def held_out_questions(count: int) -> list[tuple[str, np.ndarray]]:
    from training import domain, voices
    from training.evaluate import EvalPlan

    plan = EvalPlan()
    dialogues = domain.generate_dialogues(
        plan.per_family * len(domain.FAMILIES), seed=plan.seed, voices=voices.HELDOUT_VOICES, families=domain.FAMILIES
    )
    users = [user for dialogue in dialogues for user, _ in dialogue.turns[:1] if user.spoken and user.image is None]
    found = []
    for user in users[:count]:
        wave = voices.synthesize(user.words, user.voice, user.speed)
        loud = np.flatnonzero(np.abs(wave) > 0.01)
        found.append((user.words, wave[: int(loud[-1]) + 1] if loud.size else wave))
    return found


class TimedQuestionSource(QuestionSource):
    """Notes when the first voiced frame of each question leaves (after the lead silence)."""

    def __init__(self, question_16k: np.ndarray):
        super().__init__(question_16k)
        self.voice_started_at: list[float] = []
        self.voice_started = asyncio.Event()
        self._waiting_for_voice = False

    def speak(self) -> None:
        super().speak()
        self._waiting_for_voice = True

    async def read(self) -> np.ndarray | None:
        frame = await super().read()
        if self._waiting_for_voice and frame is not None and np.abs(frame).max() > 0.01:
            self._waiting_for_voice = False
            self.voice_started_at.append(time.monotonic())
            self.voice_started.set()
        return frame


class BargeInClient(BenchClient):
    """Speaks its question, then the same question again over the answer; records how soon the answer stopped."""

    def __init__(self, index: int, server: str, question: np.ndarray, **options):
        super().__init__(index, server, question, **options)
        self.source = TimedQuestionSource(question)
        self.barge_in: dict = {}

    def _loud_since(self, t: float) -> list[float]:
        return [arrival for arrival, _, rms, _ in self._heard.frames if arrival >= t and rms >= LOUD_RMS]

    async def _one_turn(self, turn, track) -> bool:
        source = self.source
        assert isinstance(source, TimedQuestionSource)
        deadline = time.monotonic() + self.turn_timeout_s
        asked = time.monotonic()
        source.speak()
        while not self._loud_since(asked):
            if time.monotonic() > deadline:
                self._fail("no answer to barge in on")
                return False
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # the answer is playing
        events_before = len(self._events)
        source.voice_started.clear()
        source.speak()
        await source.voice_started.wait()
        onset = source.voice_started_at[-1]
        try:
            t_ack, _ = await self._wait_event(lambda m: m.get("type") == "interrupted", deadline, events_before)
        except TimeoutError:
            self._fail("the answer was never interrupted")
            return False
        old = [t for t in self._loud_since(onset) if t <= t_ack + 0.3]
        before_ack = [t for t in old if t <= t_ack]
        self.barge_in = {
            "stop_s": max([t_ack, *before_ack]) - onset,
            "ack_s": t_ack - onset,
            "loud_frames_after_ack": sum(t > t_ack for t in old),
        }
        try:  # the interrupting question gets its own answer; let it end so the session closes cleanly
            await self._wait_event(lambda m: m.get("type") == "turn_end", deadline, len(self._events))
        except TimeoutError:
            pass
        return True


def spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None, "n": 0}
    return {
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "max": float(max(values)),
        "n": len(values),
    }


async def measure_barge_in(server: str, questions: list[tuple[str, np.ndarray]], timeout_s: float) -> list[dict]:
    records = []
    for i, (words, wave) in enumerate(questions):
        client = BargeInClient(i, server, wave, turn_timeout_s=timeout_s)
        result = await client.run()
        records.append({"question": words, "status": result.status, "reason": result.reason, **client.barge_in})
        stop = client.barge_in.get("stop_s")
        print(f"{i + 1:3d} {words[:40]:40} answer stopped after {stop if stop is not None else float('nan'):.3f} s")
        await asyncio.sleep(0.3)
    return records


async def measure(server: str, questions: list[tuple[str, np.ndarray]], timeout_s: float) -> list[dict]:
    records = []
    for i, (words, wave) in enumerate(questions):
        client = BenchClient(i, server, wave, turn_timeout_s=timeout_s)
        result = await client.run()
        turn = result.turns[0] if result.turns else {}
        records.append(
            {
                "question": words,
                "seconds": round(wave.size / SAMPLE_RATE, 3),
                "status": result.status,
                "reason": result.reason,
                "ttfa_s": turn.get("ttfa_s"),
                "endpoint_s": turn.get("endpoint_s"),
                "speech_stops": turn.get("speech_stops"),
            }
        )
        print(
            f"{i + 1:3d} {words[:40]:40} ttfa {turn.get('ttfa_s') or float('nan'):.3f} s "
            f"endpoint {turn.get('endpoint_s') or float('nan'):.3f} s stops {turn.get('speech_stops')}",
            flush=True,
        )
        await asyncio.sleep(0.3)  # the session closes on the server before the next one opens
    return records


def save(path: str | None, summary: dict, records: list[dict]) -> None:
    """Writes the figures and every question's record as JSON (when a path was given)."""
    if path:
        with open(path, "w") as f:
            json.dump({"summary": summary, "records": records}, f, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--json", default=None, help="write the figures and every question's record here")
    parser.add_argument("--barge-in", action="store_true", help="measure how soon an answer stops when talked over")
    args = parser.parse_args()
    questions = held_out_questions(args.questions)
    started = time.monotonic()
    if args.barge_in:
        records = asyncio.run(measure_barge_in(args.server, questions, args.timeout))
        done = [r for r in records if "stop_s" in r]
        summary = {
            "questions": len(records),
            "interrupted": len(done),
            "stop_s": spread([r["stop_s"] for r in done]),
            "ack_s": spread([r["ack_s"] for r in done]),
            "loud_frames_after_ack": sum(r["loud_frames_after_ack"] for r in done),
        }
        stop = summary["stop_s"]
        print(
            f"\n{len(done)}/{len(records)} answers interrupted; the answer stopped at the caller after p50 "
            f"{stop['p50']:.3f} s, p95 {stop['p95']:.3f} s, max {stop['max']:.3f} s; loud frames of the old answer "
            f"after its interrupted: {summary['loud_frames_after_ack']}"
        )
        save(args.json, summary, records)
        return
    records = asyncio.run(measure(args.server, questions, args.timeout))
    answered = [r for r in records if r["ttfa_s"] is not None]
    summary = {
        "questions": len(records),
        "answered": len(answered),
        "ttfa_s": spread([r["ttfa_s"] for r in answered]),
        "endpoint_s": spread([r["endpoint_s"] for r in answered if r["endpoint_s"] is not None]),
        "false_turn_ends": sum(max(0, (r["speech_stops"] or 0) - 1) for r in records),
        "unanswered": len(records) - len(answered),
        "wall_s": round(time.monotonic() - started, 1),
    }
    ttfa, endpoint = summary["ttfa_s"], summary["endpoint_s"]
    print(
        f"\n{summary['answered']}/{summary['questions']} answered; first answer audio after the question "
        f"p50 {ttfa['p50']:.3f} s, p95 {ttfa['p95']:.3f} s, max {ttfa['max']:.3f} s; endpoint p50 "
        f"{endpoint['p50']:.3f} s; false turn ends {summary['false_turn_ends']}; unanswered {summary['unanswered']}"
    )
    save(args.json, summary, records)


if __name__ == "__main__":
    main()
