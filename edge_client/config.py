"""What one edge-client call is asked to do, as data: built by the command line (or a test), checked here once.
Also the ``--api-key`` option, which ``anystream-bench`` shares."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.protocol import ImageMessage, ProtocolError, validate_voice_name

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
    loopback_only: keep ICE on 127.0.0.1 and use no STUN server (tests, single machine).
    text: a typed question sent once the server says ``ready`` (with ``image``: the question about it).
    image: PNG/JPEG bytes sent once the server says ``ready``: with ``text`` in one ``image`` message that starts a
        turn, without it as a picture the server attaches to the next spoken question. Refused here when the server
        would refuse it (not PNG/JPEG, too large).
    image_name: how the picture is named in the console and session.json (e.g. its path); default "picture".
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
    """

    server_url: str
    out_dir: Path | None = None
    loopback_only: bool = False
    text: str | None = None
    image: bytes | None = field(default=None, repr=False)
    image_name: str | None = None
    voice: str | None = None
    api_key: str | None = field(default=None, repr=False)  # a secret: kept out of logs
    timeout: float | None = None
    offer_timeout: float = 15.0
    drain_s: float = 0.4
    bye_timeout: float = 1.0
    vad_aggressiveness: int = 2
    handle_signals: bool = True
    client_name: str = CLIENT_NAME

    def __post_init__(self) -> None:
        url = self.server_url.strip().rstrip("/") if isinstance(self.server_url, str) else ""
        if not url:
            raise ConfigError("server_url", "must be a URL such as http://127.0.0.1:8080")
        object.__setattr__(self, "server_url", url)
        if self.out_dir is not None and not isinstance(self.out_dir, Path):
            object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError("timeout", "must be positive")
        for name in ("offer_timeout", "bye_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "must be positive")
        if self.drain_s < 0:
            raise ConfigError("drain_s", "must be >= 0")
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
        if not self.client_name:
            raise ConfigError("client_name", "must not be empty")

    def image_message(self) -> ImageMessage | None:
        """The ``image`` message to send once the server is ready (the picture, and ``text`` when given)."""
        return ImageMessage.from_bytes(self.image, self.text) if self.image is not None else None

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
