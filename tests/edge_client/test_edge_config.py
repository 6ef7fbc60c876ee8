"""EdgeClientConfig: the call's settings, checked in one place; the command line builds it."""

from __future__ import annotations

from pathlib import Path

import pytest
from edge_fake_server import tiny_png

from edge_client.cli import build_parser, config_from_args, main
from edge_client.config import CLIENT_NAME, ConfigError, EdgeClientConfig


def test_defaults_and_normalisation():
    config = EdgeClientConfig("http://host:8080/", out_dir="out")
    assert config.server_url == "http://host:8080" and config.out_dir == Path("out")
    assert (config.timeout, config.offer_timeout, config.drain_s, config.bye_timeout) == (None, 15.0, 0.4, 1.0)
    assert (config.vad_aggressiveness, config.handle_signals, config.client_name) == (2, True, CLIENT_NAME)
    assert config.image_message() is None and config.image_name is None


def test_a_picture_is_checked_and_named():
    config = EdgeClientConfig("http://x", image=tiny_png(), text="what is it?")
    assert config.image_name == "picture"
    message = config.image_message()
    assert message.text == "what is it?" and message.image_bytes() == tiny_png()


def test_secrets_and_pictures_stay_out_of_the_repr():
    text = repr(EdgeClientConfig("http://x", api_key="sk-secret-123", image=tiny_png()))
    assert "sk-secret-123" not in text and "PNG" not in text


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"timeout": 0}, "timeout"),
        ({"offer_timeout": -1}, "offer_timeout"),
        ({"bye_timeout": 0}, "bye_timeout"),
        ({"drain_s": -0.1}, "drain_s"),
        ({"vad_aggressiveness": 4}, "vad_aggressiveness"),
        ({"voice": "Not A Voice"}, "voice"),
        ({"image": b"GIF89a" + b"\x00" * 16}, "image"),
        ({"server_url": " "}, "server_url"),
        ({"client_name": ""}, "client_name"),
    ],
)
def test_unusable_settings_are_refused_with_the_field_named(changes, field):
    settings = {"server_url": "http://x", **changes}
    with pytest.raises(ConfigError) as caught:
        EdgeClientConfig(**settings)
    assert caught.value.field == field and str(caught.value).startswith(field)


def test_replace_checks_again():
    config = EdgeClientConfig("http://x")
    assert config.replace(timeout=120.0).timeout == 120.0
    with pytest.raises(ConfigError):
        config.replace(timeout=-1.0)


def test_the_command_line_builds_the_config(monkeypatch):
    monkeypatch.setenv("ANYSTREAM_API_KEY", "from-env")
    args = build_parser().parse_args(
        ["--server", "http://x/", "--output", "out", "--timeout", "7", "--voice", "alto", "--vad-aggressiveness", "1"]
    )
    config = config_from_args(args)
    assert (config.server_url, config.out_dir, config.timeout, config.voice) == ("http://x", Path("out"), 7.0, "alto")
    assert config.api_key == "from-env" and config.vad_aggressiveness == 1 and config.handle_signals
    for flag in ("--save", "--save-dir"):  # --save-dir is the deprecated name of --save
        speaker = config_from_args(build_parser().parse_args(["--server", "http://x", flag, "saved"]))
        assert speaker.save_dir == Path("saved") and speaker.out_dir is None
    plain = config_from_args(build_parser().parse_args(["--server", "http://x"]))
    assert plain.out_dir is None and plain.save_dir is None
    # a microphone reconnects without limit, a file or typed question a few times; --reconnect-attempts decides
    assert plain.reconnect_attempts is None and config.reconnect_attempts is None
    typed = config_from_args(build_parser().parse_args(["--server", "http://x", "--text", "hi"]))
    assert typed.reconnect_attempts == 3
    never = build_parser().parse_args(["--server", "http://x", "--reconnect-attempts", "0", "--jitter-ms", "100"])
    assert (config_from_args(never).reconnect_attempts, config_from_args(never).jitter_ms) == (0, 100)
    with_key = config_from_args(build_parser().parse_args(["--server", "http://x", "--api-key", "flag"]))
    assert with_key.api_key == "flag"


def test_a_bad_timeout_is_refused_before_anything_is_opened(tmp_path, capsys):
    code = main(["--server", "http://127.0.0.1:9", "--timeout", "0", "--output", str(tmp_path / "out")])
    assert code == 2
    assert "anystream-edge: --timeout must be positive" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
