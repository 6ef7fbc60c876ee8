"""``assistant chat``: one turn with the in-process engine (same engine as the server; no Ray, no WebRTC).

    assistant chat --input question.wav --out DIR [--seed N] [--voice NAME]
    assistant chat --text "what is two plus three" --out DIR
    assistant chat --image picture.png [--text "what is in this picture" | --input question.wav] --out DIR
    assistant chat --family anygpt --assets /models/anygpt --device cuda --text "hello" --out DIR

Models: ``--family embedded`` (default: the package's tiny CPU models, or ``--assets DIR``) or ``--family anygpt``
(``--assets`` is the AnyGPT weights root laid out as on the hub; ``--lm-dir``, ``--dtype``, ``--device``), loaded
once in this process by ``assistant.models.loading.load_backends``.

Writes ``DIR/answer.wav`` (every audio frame of the reply, speech and music, 16 kHz), ``DIR/reply.txt``
(transcript and reply text), ``DIR/image_{i}.png`` and ``DIR/music_{i}.wav`` (the frames of piece i, as played);
prints the text as it streams.

The turn runs as it does on the server: a :class:`~assistant.pipeline.turns.TurnController` drives the engine
session and turns its outputs into wire messages, which are read here through :func:`assistant.dispatch.dispatch`
(as the edge client reads them); the reply's audio frames come to :class:`_ChatReply` as to the server's track.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from assistant import protocol
from assistant.audio import SAMPLE_RATE, AudioFormatError, pcm16_to_float, read_wav, write_wav
from assistant.dispatch import ServerMessageHandler, dispatch
from assistant.models.loading import DTYPES, MODEL_FAMILIES, ModelSpec, load_backends, load_vocab_and_voices
from assistant.pipeline.outputs import AudioFrame
from assistant.pipeline.turns import TurnController


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assistant", description="AnyGPT-style any-to-any assistant")
    sub = parser.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat", help="answer one spoken or typed question")
    chat.add_argument("--input", type=Path, help="WAV (or any soundfile-readable) file with the spoken question")
    chat.add_argument("--text", help="typed question")
    chat.add_argument("--image", type=Path, help="PNG or JPEG picture that goes with the question")
    chat.add_argument("--voice", help="voice of the spoken reply (a name from the models' voice bank)")
    chat.add_argument("--out", type=Path, required=True, help="output directory")
    chat.add_argument("--seed", type=int, default=0, help="seed of the model initialisation and of sampling")
    chat.add_argument(
        "--family", choices=MODEL_FAMILIES, default="embedded", help="model family (default: %(default)s)"
    )
    chat.add_argument(
        "--assets",
        type=Path,
        default=None,
        help="embedded: model assets directory (default: the package's own); anygpt: the weights root",
    )
    chat.add_argument(
        "--lm-dir", default="AnyGPT-chat", help="anygpt: the LLM folder under --assets (default: %(default)s)"
    )
    chat.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="anygpt: weights dtype (default: float16 on CUDA, float32 elsewhere)",
    )
    chat.add_argument(
        "--device", default="cpu", help="anygpt: torch device, e.g. cuda or cuda:1 (default: %(default)s)"
    )
    chat.add_argument(
        "--voices-file",
        type=Path,
        default=None,
        help="anygpt: a voices.json made by `anystream make-voices` (the names --voice picks from)",
    )
    return parser


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The models ``assistant chat`` loads (raises ValueError for a combination that cannot load)."""
    if args.family == "embedded":
        # the embedded family is a CPU float32 family whose voices live beside its assets: say so, never ignore
        unset = {
            "--dtype": args.dtype in (None, "float32"),
            "--device": args.device == "cpu",
            "--voices-file": args.voices_file is None,
            "--lm-dir": args.lm_dir == "AnyGPT-chat",
        }
        given = [flag for flag, is_unset in unset.items() if not is_unset]
        if given:
            raise ValueError(
                f"{', '.join(given)}: for --family anygpt only (the embedded family runs on the CPU "
                "in float32 and reads voices.json from its assets folder)"
            )
    dtype = args.dtype or ("float16" if str(args.device).startswith("cuda") else "float32")
    return ModelSpec(
        family=args.family,
        assets_dir=str(args.assets) if args.assets is not None else None,
        seed=args.seed,
        lm_dir=args.lm_dir,
        dtype=dtype,
        device=args.device,
        voices_file=str(args.voices_file) if args.voices_file is not None else None,
    )


class _ChatReply(ServerMessageHandler):
    """The reply sink of ``assistant chat``: prints the text as it streams and keeps what goes to files.

    Wire messages arrive through :func:`dispatch`; audio frames through :meth:`play` (nothing is played live, so
    nothing waits). Music frames follow the ``music`` message of their piece."""

    def __init__(self, out: Path):
        self.out = out
        self.frames: list[np.ndarray] = []  # every frame of the reply: answer.wav
        self.music: dict[int, list[np.ndarray]] = {}  # the frames of each piece of music: music_{i}.wav
        self._music_index: int | None = None
        self.transcript: list[str] = []
        self.reply: list[str] = []
        self._section: str | None = None
        self.status = 0

    # ----- ReplySink -----

    def send(self, message: protocol.ServerMessage) -> None:
        dispatch(message, self)

    async def play(self, frame: AudioFrame) -> None:
        self.frames.append(frame.pcm)
        if frame.source == "music" and self._music_index is not None:
            self.music[self._music_index].append(frame.pcm)

    def flush_audio(self) -> None:
        pass  # nothing interrupts a chat turn

    def begin_reply(self, on_first_played: Callable[[], None] | None) -> None:
        pass

    def end_reply(self) -> None:
        pass

    async def wait_played(self) -> None:
        pass

    # ----- ServerMessageHandler -----

    def on_transcript(self, message: protocol.Transcript) -> None:
        self._print_text("transcript", message.delta)
        self.transcript.append(message.delta)

    def on_text(self, message: protocol.TextDelta) -> None:
        self._print_text("reply", message.delta)
        self.reply.append(message.delta)

    def on_image(self, message: protocol.ImageReady) -> None:
        path = self.out / f"image_{message.index}.png"
        path.write_bytes(base64.b64decode(message.png_base64))
        print(f"\n[image] {path} ({message.width}x{message.height})", flush=True)

    def on_music(self, message: protocol.MusicReady) -> None:
        self._music_index = message.index
        self.music[message.index] = []
        path = self.out / f"music_{message.index}.wav"
        print(f"\n[music] {path} ({message.duration_s:.2f} s)", flush=True)

    def on_error(self, message: protocol.ErrorEvent) -> None:
        print(f"\nerror: {message.message}", file=sys.stderr)
        self.status = 1

    def on_turn_end(self, message: protocol.TurnEnd) -> None:
        print(f"\n[turn finished: {message.reason}]", flush=True)
        if message.reason == protocol.FinishReason.ERROR.value:
            self.status = 1

    def _print_text(self, section: str, text: str) -> None:
        if self._section != section:
            print(f"\n[{section}] ", end="")
            self._section = section
        print(text, end="", flush=True)

    # ----- files -----

    def write_files(self) -> None:
        for index, frames in self.music.items():
            write_wav(self.out / f"music_{index}.wav", _wave(frames), SAMPLE_RATE)
        wave = _wave(self.frames)
        write_wav(self.out / "answer.wav", wave, SAMPLE_RATE)
        text = ""
        if self.transcript:
            text += "transcript: " + "".join(self.transcript).strip() + "\n"
        text += "reply: " + "".join(self.reply).strip() + "\n"
        (self.out / "reply.txt").write_text(text, encoding="utf-8")
        print(f"[wrote] {self.out / 'answer.wav'} ({wave.size / SAMPLE_RATE:.2f} s), {self.out / 'reply.txt'}")


def _wave(frames: list[np.ndarray]) -> np.ndarray:
    return pcm16_to_float(np.concatenate(frames)) if frames else np.zeros(0, dtype=np.float32)


async def _chat(args: argparse.Namespace, spec: ModelSpec, audio: np.ndarray | None, picture: bytes | None) -> int:
    # torch-heavy imports only once the input is known to be good
    from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn

    try:
        vocab, voices = load_vocab_and_voices(spec)
        backends = load_backends(spec)
    except (OSError, ValueError, ImportError) as exc:  # a missing or damaged weights folder, a missing extra
        print(f"error: cannot load the {spec.family} models: {exc}", file=sys.stderr)
        return 2
    engine = AssistantEngine(backends, vocab, EngineConfig(), voices=voices)
    try:
        session = engine.new_session(args.voice)
    except (KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    reply = _ChatReply(out)
    turns = TurnController(session, reply, label="assistant chat")
    try:
        await turns.start(UserTurn(audio=audio, text=args.text, image=picture))
        await turns.wait()
    finally:
        await turns.close()  # closes the engine session
        close_lm = getattr(backends.lm, "close", None)  # the batched LM engine's thread
        if close_lm is not None:
            close_lm()
    reply.write_files()
    return reply.status


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.input is None and args.text is None and args.image is None:
        print("error: give a question: --input WAV, --text TEXT and/or --image PICTURE", file=sys.stderr)
        return 2
    audio = picture = None
    if args.image is not None:
        try:
            picture = args.image.read_bytes()
        except OSError as exc:
            print(f"error: cannot read picture {args.image}: {exc.strerror}", file=sys.stderr)
            return 2
        if not picture.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
            print(f"error: {args.image} is not a PNG or JPEG picture", file=sys.stderr)
            return 2
    if args.input is not None:
        try:
            audio = read_wav(args.input)
        except AudioFormatError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not np.isfinite(audio).all():
            print(f"error: audio file {args.input} holds non-finite samples", file=sys.stderr)
            return 2
    if args.text is not None and not args.text.strip():
        print("error: --text is empty", file=sys.stderr)
        return 2
    try:
        spec = model_spec(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_chat(args, spec, audio, picture))


if __name__ == "__main__":
    sys.exit(main())
