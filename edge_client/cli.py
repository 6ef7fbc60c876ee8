"""Command line: ``anystream-edge --server URL [--input mic|silence|FILE.wav] [--output speaker|DIR] ...``.

``--image PIC.png [--text QUESTION]`` sends a picture once connected: with ``--text`` the picture and the question
start a turn at once; without it the picture goes with your next spoken question. ``--voice NAME`` asks for one
of the server's voices (``GET /voices`` lists them). A server with access on wants an API key or session token:
``--api-key KEY`` or, better (other users of the machine can read command lines), ``ANYSTREAM_API_KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from assistant.audio import AudioFormatError
from assistant.protocol import MAX_IMAGE_BYTES, ProtocolError, validate_voice_name
from edge_client.client import EXIT_SERVER, EdgeClient
from edge_client.config import ConfigError, EdgeClientConfig, add_api_key_argument, api_key_or_env

DEFAULT_FILE_TIMEOUT_S = 120.0


def _voice_name(value: str) -> str:
    try:
        return validate_voice_name(value)
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("field 'voice'", "a voice name")) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anystream-edge",
        description="Talk to an anystream server over WebRTC: your voice goes up, speech, text, images and "
        "music come back.",
    )
    p.add_argument("--server", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    p.add_argument(
        "--input", default=None, help="'mic' (default), 'silence' (default with --text), or a sound file to speak"
    )
    p.add_argument(
        "--output", default="speaker", help="'speaker' (default) or a directory for answer.wav, images and session.json"
    )
    p.add_argument("--save-dir", default=None, help="where images and session.json go when --output is 'speaker'")
    p.add_argument("--text", default=None, help="a typed question, sent once the server is ready")
    p.add_argument(
        "--image",
        default=None,
        metavar="PICTURE",
        help=f"a PNG or JPEG (at most {MAX_IMAGE_BYTES // 1024} KiB) sent once the server is ready; "
        "with --text it is asked about at once, otherwise it goes with your next spoken question",
    )
    p.add_argument(
        "--voice",
        default=None,
        type=_voice_name,
        help="the voice the assistant speaks with (a name from the server's GET /voices)",
    )
    add_api_key_argument(p)
    p.add_argument(
        "--loopback-only",
        action="store_true",
        help="keep WebRTC on 127.0.0.1 and use no STUN server (server on this machine)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help=f"give up after S seconds (default: {DEFAULT_FILE_TIMEOUT_S:g} for file/silence input, "
        "none for the microphone)",
    )
    p.add_argument(
        "--vad-aggressiveness",
        type=int,
        default=2,
        choices=range(4),
        help="client-side webrtcvad aggressiveness 0..3 (default 2)",
    )
    p.add_argument("--lead-silence", type=float, default=0.3, help="silence before the file, seconds")
    p.add_argument("--tail-silence", type=float, default=1.0, help="silence guaranteed after the file, seconds")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    return p


# The command-line flag of each setting a config check can refuse (the rest are checked by argparse).
_FLAGS = {"timeout": "--timeout", "voice": "--voice", "server_url": "--server"}


def config_from_args(args: argparse.Namespace, image: bytes | None = None) -> EdgeClientConfig:
    """The call's settings from the parsed command line; raises ConfigError (see :func:`main` for its wording)."""
    out_dir = args.save_dir if args.output == "speaker" else args.output
    return EdgeClientConfig(
        server_url=args.server,
        out_dir=Path(out_dir) if out_dir else None,
        loopback_only=args.loopback_only,
        text=args.text,
        image=image,
        image_name=args.image,
        voice=args.voice,
        api_key=api_key_or_env(args.api_key),
        timeout=args.timeout,
        vad_aggressiveness=args.vad_aggressiveness,
    )


def _complain(message: str) -> int:
    print(f"anystream-edge: {message}", file=sys.stderr)
    return EXIT_SERVER


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    image = None
    if args.image is not None:
        try:
            image = Path(args.image).read_bytes()
        except OSError as exc:
            return _complain(f"cannot read picture {args.image}: {exc.strerror or exc}")
    try:  # every setting is checked before any device or file is opened
        config = config_from_args(args, image)
    except ConfigError as exc:
        if exc.field == "image":
            return _complain(f"cannot send picture {args.image}: {exc.problem}")
        return _complain(f"{_FLAGS.get(exc.field, exc.field)} {exc.problem}")

    from edge_client import audio_io

    input_spec = args.input or ("silence" if args.text else "mic")
    source: audio_io.AudioSource
    sink: audio_io.AudioSink
    try:
        if input_spec == "mic":
            source = audio_io.MicrophoneSource()
        elif input_spec == "silence":
            source = audio_io.SilenceSource()
        else:
            source = audio_io.FileSource(input_spec, lead_silence_s=args.lead_silence, tail_silence_s=args.tail_silence)
    except (AudioFormatError, ValueError) as exc:
        return _complain(str(exc))

    if args.output == "speaker":
        sink = audio_io.SpeakerSink()
    else:
        try:
            sink = audio_io.DirectorySink(args.output)
        except OSError as exc:
            return _complain(f"cannot write to {args.output}: {exc}")

    if config.timeout is None and source.finite:
        config = config.replace(timeout=DEFAULT_FILE_TIMEOUT_S)
    client = EdgeClient(config, source, sink)
    try:
        return asyncio.run(client.run())
    except KeyboardInterrupt:  # a second Ctrl-C while closing
        return 0
    except Exception as exc:
        print(f"anystream-edge: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
