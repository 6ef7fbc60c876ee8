"""Command line: ``anystream-edge --server URL [--input mic|silence|FILE.wav] [--output speaker|DIR] ...``.

``--image PIC.png [--text QUESTION]`` sends a picture once connected: with ``--text`` the picture and the question
start a turn at once; without it the picture goes with your next spoken question. ``--music TUNE.wav`` sends a
tune the same way (with both, the question goes with the tune and the turn takes the picture too). Pictures and
tunes larger than one data-channel message go as fragments. ``--voice NAME`` asks for one
of the server's voices (``GET /voices`` lists them). A server with access on wants an API key or session token:
``--api-key KEY`` or, better (other users of the machine can read command lines), ``ANYSTREAM_API_KEY``.

Devices: ``--list-devices`` prints the audio devices (index, name, channels, default rate; ``*`` marks the
defaults) and exits; ``--input-device`` / ``--output-device`` choose one by index or by a part of its name (an
unknown or ambiguous one is an error, exit 1). ``--jitter-ms`` sets the playback jitter buffer, ``--reconnect-attempts``
how often a dropped connection is tried again (default: without limit for the microphone, 3 for a file or typed
text), ``--save DIR`` keeps every turn (question, answer, text, pictures, music) under ``DIR/turn-NNN/``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from assistant.audio import AudioFormatError
from assistant.protocol import MAX_IMAGE_BYTES, MAX_MUSIC_BYTES, MAX_MUSIC_SECONDS, ProtocolError, validate_voice_name
from edge_client.audio_io import DeviceError, DeviceQuery, describe_devices, find_device, query_audio_devices
from edge_client.client import EXIT_DEVICE, EXIT_OK, EXIT_SERVER, EdgeClient
from edge_client.config import ConfigError, EdgeClientConfig, add_api_key_argument, api_key_or_env

DEFAULT_FILE_TIMEOUT_S = 120.0
DEFAULT_FILE_RECONNECTS = 3  # a file or typed question: a few tries, then give up (a microphone never does)


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
    p.add_argument("--server", default=None, help="server base URL, e.g. http://127.0.0.1:8080 (required)")
    p.add_argument("--list-devices", action="store_true", help="print the audio devices and exit")
    p.add_argument("--input-device", default=None, metavar="DEVICE", help="the microphone: an index or part of a name")
    p.add_argument("--output-device", default=None, metavar="DEVICE", help="the speaker: an index or part of a name")
    p.add_argument(
        "--input", default=None, help="'mic' (default), 'silence' (default with --text), or a sound file to speak"
    )
    p.add_argument(
        "--output", default="speaker", help="'speaker' (default) or a directory for answer.wav, images and session.json"
    )
    p.add_argument(
        "--save",
        default=None,
        metavar="DIR",
        help="keep every turn under DIR/turn-NNN/ (question and answer audio, text, pictures, music) and "
        "DIR/session.json",
    )
    p.add_argument("--save-dir", default=None, metavar="DIR", help="deprecated: the same as --save DIR")
    p.add_argument("--text", default=None, help="a typed question, sent once the server is ready")
    p.add_argument(
        "--image",
        default=None,
        metavar="PICTURE",
        help=f"a PNG or JPEG (at most {MAX_IMAGE_BYTES // 2**20} MiB) sent once the server is ready; "
        "with --text it is asked about at once, otherwise it goes with your next spoken question",
    )
    p.add_argument(
        "--music",
        default=None,
        metavar="TUNE.wav",
        help=f"a WAV file (mono or stereo, at most {MAX_MUSIC_SECONDS:g} s and {MAX_MUSIC_BYTES // 2**20} MiB) sent "
        "once the server is ready; with --text it is asked about at once, otherwise it goes with your next "
        "spoken question",
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
    p.add_argument(
        "--echo-cancel",
        choices=("on", "off"),
        default=None,
        help="take the assistant's own voice, leaking from the speaker, out of what the microphone sends "
        "(default: on for the microphone, off for a file or silence)",
    )
    p.add_argument(
        "--jitter-ms",
        type=int,
        default=60,
        help="audio buffered before a reply plays, against network jitter (default 60; at most that + 100 ms is "
        "kept, older audio is dropped)",
    )
    p.add_argument(
        "--reconnect-attempts",
        type=int,
        default=None,
        metavar="N",
        help="how many times to reconnect after the connection drops (default: without limit for the "
        f"microphone, {DEFAULT_FILE_RECONNECTS} for a file or typed text; 0: never)",
    )
    p.add_argument("--lead-silence", type=float, default=0.3, help="silence before the file, seconds")
    p.add_argument("--tail-silence", type=float, default=1.0, help="silence guaranteed after the file, seconds")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    return p


# The command-line flag of each setting a config check can refuse (the rest are checked by argparse).
_FLAGS = {
    "timeout": "--timeout",
    "voice": "--voice",
    "server_url": "--server",
    "jitter_ms": "--jitter-ms",
    "reconnect_attempts": "--reconnect-attempts",
}


def input_spec(args: argparse.Namespace) -> str:
    """What ``--input`` means: "mic" (the default), "silence" (the default with ``--text``) or a file."""
    return str(args.input or ("silence" if args.text else "mic"))


def config_from_args(
    args: argparse.Namespace, image: bytes | None = None, music: bytes | None = None
) -> EdgeClientConfig:
    """The call's settings from the parsed command line; raises ConfigError (see :func:`main` for its wording)."""
    out_dir = None if args.output == "speaker" else args.output
    save_dir = args.save or args.save_dir
    reconnects = args.reconnect_attempts
    if reconnects is None:
        reconnects = None if input_spec(args) == "mic" else DEFAULT_FILE_RECONNECTS
    return EdgeClientConfig(
        server_url=args.server or "",
        out_dir=Path(out_dir) if out_dir else None,
        save_dir=Path(save_dir) if save_dir else None,
        jitter_ms=args.jitter_ms,
        reconnect_attempts=reconnects,
        loopback_only=args.loopback_only,
        text=args.text,
        image=image,
        image_name=args.image,
        music=music,
        music_name=args.music,
        voice=args.voice,
        api_key=api_key_or_env(args.api_key),
        timeout=args.timeout,
        vad_aggressiveness=args.vad_aggressiveness,
        echo_cancel=args.echo_cancel == "on" if args.echo_cancel else input_spec(args) == "mic",
    )


def _read_upload(path: str | None, what: str) -> bytes | None:
    """The bytes of a file to send (None when not asked for); OSError names the file and what it was for."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _complain(message: str) -> int:
    print(f"anystream-edge: {message}", file=sys.stderr)
    return EXIT_SERVER


def _list_devices(query: DeviceQuery | None) -> int:
    try:
        devices = query_audio_devices(query)
    except DeviceError as exc:
        print(f"anystream-edge: {exc}", file=sys.stderr)
        return EXIT_DEVICE
    sys.stdout.write(describe_devices(devices))
    return EXIT_OK


def _device(spec: str | None, kind: str, query: DeviceQuery | None) -> int | None:
    """The device index ``--input-device`` / ``--output-device`` names (None: the default). Raises DeviceError."""
    if spec is None:
        return None
    return find_device(spec, "input" if kind == "input" else "output", query_audio_devices(query))


def main(argv: list[str] | None = None, device_query: DeviceQuery | None = None) -> int:
    """``device_query`` replaces sounddevice's device list (tests)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.list_devices:
        return _list_devices(device_query)
    if args.server is None:
        parser.error("the following arguments are required: --server")
    if args.save_dir is not None:
        print("anystream-edge: --save-dir is deprecated; use --save DIR", file=sys.stderr)
    try:
        image = _read_upload(args.image, "picture")
        music = _read_upload(args.music, "tune")
    except OSError as exc:
        return _complain(str(exc))
    try:  # every setting is checked before any device or file is opened
        config = config_from_args(args, image, music)
    except ConfigError as exc:
        if exc.field == "image":
            return _complain(f"cannot send picture {args.image}: {exc.problem}")
        if exc.field == "music":
            return _complain(f"cannot send tune {args.music}: {exc.problem}")
        return _complain(f"{_FLAGS.get(exc.field, exc.field)} {exc.problem}")

    from edge_client import audio_io
    from edge_client.jitter import JitterBuffer

    spec = input_spec(args)
    if args.input_device is not None and spec != "mic":
        return _complain("--input-device is for the microphone (--input mic)")
    if args.output_device is not None and args.output != "speaker":
        return _complain("--output-device is for the speaker (--output speaker)")
    try:
        input_device = _device(args.input_device, "input", device_query)
        output_device = _device(args.output_device, "output", device_query)
    except DeviceError as exc:
        print(f"anystream-edge: {exc}", file=sys.stderr)
        return EXIT_DEVICE
    source: audio_io.AudioSource
    sink: audio_io.AudioSink
    try:
        if spec == "mic":
            source = audio_io.MicrophoneSource(device=input_device)
        elif spec == "silence":
            source = audio_io.SilenceSource()
        else:
            source = audio_io.FileSource(spec, lead_silence_s=args.lead_silence, tail_silence_s=args.tail_silence)
    except (AudioFormatError, ValueError) as exc:
        return _complain(str(exc))

    if args.output == "speaker":
        sink = audio_io.SpeakerSink(output_device, JitterBuffer(config.jitter_ms, config.jitter_max_ms))
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
