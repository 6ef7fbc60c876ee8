"""What one edge-client call is asked to do, as data: built by the command line (or a test), checked here once.
Also the ``--api-key`` option, which ``anystream-bench`` shares."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.protocol import ImageMessage, MusicMessage, ProtocolError, validate_voice_name

CLIENT_NAME = "anystream-edge"
API_KEY_ENV = "ANYSTREAM_API_KEY"  # read when --api-key is not given (command lines are visible to other users)


class ConfigError(ValueError):
    """A setting the call cannot run with: ``field`` names it, ``problem`` says what is wrong."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name} {problem}")
        self.field = name
        self.problem = problem


@dataclass(frozen=True)
class EdgeClientConfig:
    """
    server_url: base URL of the server (``http://host:port``); the offer goes to ``{server_url}/offer``.
    out_dir: where images (``image_{turn}_{index}.png``) and ``session.json`` go; None saves nothing.
    save_dir: ``--save``: every turn kept under ``save_dir/turn-NNN/`` (the question as captured or typed, the answer
        as played, its text, pictures and music; :class:`edge_client.recording.TurnArchive`), and ``session.json``.
    loopback_only: keep ICE on 127.0.0.1 and use no STUN server (tests, single machine).
    text: a typed question sent once the server says ``ready`` (with ``image``: the question about it).
    image: PNG/JPEG bytes sent once the server says ``ready``: with ``text`` in one ``image`` message that starts a
        turn, without it as a picture the server attaches to the next spoken question. Refused here when the server
        would refuse it (not PNG/JPEG, too large).
    image_name: how the picture is named in the console and session.json (e.g. its path); default "picture".
    music / music_name: a tune (WAV bytes) sent once the server is ready, as ``image`` is (with ``text`` it is asked
        about at once, without it it goes with the next spoken question), and its name (default "tune"). With both a
        picture and a tune the picture goes first, without the question, and the question goes with the tune: the
        turn it starts takes both.
    voice: the voice the assistant should speak with (sent in the offer); None = the server's default.
    api_key: an API key or session token, sent with the offer as ``Authorization: Bearer ...``; None sends none.
    timeout: seconds before giving up (exit 3); None waits until stopped (Ctrl-C).
    offer_timeout: seconds the HTTP offer/answer exchange may take.
    drain_s: how long to keep reading the audio track after the answering ``turn_end`` (the jitter buffer still
        holds the last ~80 ms) before hanging up.
    bye_timeout: how long to wait, after saying ``bye``, for the server to close the connection before closing it
        from this side.
    vad_aggressiveness: the client-side webrtcvad's aggressiveness, 0..3 (it only times the user's speech for the
        console and the records: the server decides turns and barge-in).
    handle_signals: stop cleanly (exit 0) on SIGINT/SIGTERM.
    client_name: what the client calls itself in ``hello``.
    jitter_ms / jitter_max_ms: the playback jitter buffer's target depth (audio buffered before a reply starts
        playing) and the most it holds before the oldest audio is dropped (None: ``jitter_ms + 100``).
    reconnect_attempts: after the connection drops (not when the call was set up: that fails at once), how many
        times to try again, with exponential backoff from ``reconnect_initial_s`` doubling up to
        ``reconnect_max_s`` (with jitter); a reconnection resumes the conversation when the server still holds it.
        0 never reconnects; None tries without limit (a microphone on a device).
    stall_timeout_s: no audio from the server for this long while connected counts as a lost connection (the
        server sends at least one frame every 0.4 s, even when idle).
    echo_cancel: take the assistant's own voice (what the speaker plays, leaking into the microphone) out of the
        captured audio before it is sent (:mod:`edge_client.echo`); the command line turns it on for a microphone.
    """

    server_url: str
    out_dir: Path | None = None
    loopback_only: bool = False
    text: str | None = None
    image: bytes | None = field(default=None, repr=False)
    image_name: str | None = None
    music: bytes | None = field(default=None, repr=False)
    music_name: str | None = None
    voice: str | None = None
    api_key: str | None = field(default=None, repr=False)  # a secret: kept out of logs
    timeout: float | None = None
    offer_timeout: float = 15.0
    drain_s: float = 0.4
    bye_timeout: float = 1.0
    vad_aggressiveness: int = 2
    handle_signals: bool = True
    client_name: str = CLIENT_NAME
    save_dir: Path | None = None
    jitter_ms: int = 60
    jitter_max_ms: int | None = None
    reconnect_attempts: int | None = 0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 10.0
    stall_timeout_s: float = 5.0
    echo_cancel: bool = False

    def __post_init__(self) -> None:
        url = self.server_url.strip().rstrip("/") if isinstance(self.server_url, str) else ""
        if not url:
            raise ConfigError("server_url", "must be a URL such as http://127.0.0.1:8080")
        object.__setattr__(self, "server_url", url)
        for name in ("out_dir", "save_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError("timeout", "must be positive")
        for name in ("offer_timeout", "bye_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "must be positive")
        if self.drain_s < 0:
            raise ConfigError("drain_s", "must be >= 0")
        if not 0 <= self.jitter_ms <= 1000:
            raise ConfigError("jitter_ms", "must be 0 to 1000 ms")
        if self.jitter_max_ms is not None and not max(self.jitter_ms, 20) <= self.jitter_max_ms <= 5000:
            raise ConfigError("jitter_max_ms", "must be at least jitter_ms (and 20 ms), at most 5000 ms")
        if self.reconnect_attempts is not None and self.reconnect_attempts < 0:
            raise ConfigError("reconnect_attempts", "must be >= 0")
        if not 0 < self.reconnect_initial_s <= self.reconnect_max_s:
            raise ConfigError("reconnect_initial_s", "must be positive and at most reconnect_max_s")
        if self.stall_timeout_s <= 0:
            raise ConfigError("stall_timeout_s", "must be positive")
        if self.vad_aggressiveness not in range(4):
            raise ConfigError("vad_aggressiveness", "must be 0, 1, 2 or 3")
        if self.voice is not None:
            try:
                validate_voice_name(self.voice)
            except ProtocolError as exc:
                raise ConfigError("voice", str(exc)) from None
        if self.image is not None:
            try:
                ImageMessage.from_bytes(self.image, self.text)
            except ProtocolError as exc:
                raise ConfigError("image", str(exc)) from None
            if self.image_name is None:
                object.__setattr__(self, "image_name", "picture")
        if self.music is not None:
            try:
                MusicMessage.from_bytes(self.music, self.text)
            except ProtocolError as exc:
                raise ConfigError("music", str(exc)) from None
            if self.music_name is None:
                object.__setattr__(self, "music_name", "tune")
        if not self.client_name:
            raise ConfigError("client_name", "must not be empty")

    def image_message(self) -> ImageMessage | None:
        """The ``image`` message to send once the server is ready (the picture, and ``text`` when given and no tune
        goes after it)."""
        if self.image is None:
            return None
        return ImageMessage.from_bytes(self.image, self.text if self.music is None else None)

    def music_message(self) -> MusicMessage | None:
        """The ``music`` message to send once the server is ready (after the picture, if any): the tune, and
        ``text`` when given."""
        return MusicMessage.from_bytes(self.music, self.text) if self.music is not None else None

    def replace(self, **changes: Any) -> EdgeClientConfig:
        """A copy with ``changes``, checked again."""
        return dataclasses.replace(self, **changes)


# ----- the API key of a command that calls a server (this client, ``anystream-bench``) ------------------------------
def add_api_key_argument(parser: argparse.ArgumentParser) -> None:
    """``--api-key KEY``; read its value with :func:`api_key_or_env`."""
    parser.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help=f"API key or session token for a server with access on (default: ${API_KEY_ENV})",
    )


def api_key_or_env(given: str | None) -> str | None:
    """``--api-key`` when given, else ``$ANYSTREAM_API_KEY``; None when neither is set (an empty one counts as
    unset)."""
    return given or os.environ.get(API_KEY_ENV) or None
