"""Choosing audio devices without any: a fake of sounddevice's device query is injected."""

from __future__ import annotations

import pytest

from edge_client.audio_io import DeviceError, describe_devices, find_device, query_audio_devices
from edge_client.cli import main

DEVICES = [
    {
        "name": "bcm2835 Headphones: - (hw:0,0)",
        "hostapi": 0,
        "max_input_channels": 0,
        "max_output_channels": 8,
        "default_samplerate": 44100.0,
    },
    {
        "name": "USB PnP Sound Device: Audio (hw:1,0)",
        "hostapi": 0,
        "max_input_channels": 1,
        "max_output_channels": 2,
        "default_samplerate": 48000.0,
    },
    {
        "name": "ReSpeaker 4 Mic Array (hw:2,0)",
        "hostapi": 0,
        "max_input_channels": 6,
        "max_output_channels": 0,
        "default_samplerate": 16000.0,
    },
    {"name": "pulse", "hostapi": 0, "max_input_channels": 32, "max_output_channels": 32, "default_samplerate": 44100.0},
    {
        "name": "default",
        "hostapi": 0,
        "max_input_channels": 32,
        "max_output_channels": 32,
        "default_samplerate": 44100.0,
    },
]
HOST_APIS = [{"name": "ALSA"}]


def query():
    return DEVICES, HOST_APIS, (4, 4)


def empty():
    return [], HOST_APIS, (-1, -1)


def test_devices_are_listed_by_kind_with_index_channels_rate_and_defaults(capsys):
    assert main(["--list-devices"], device_query=query) == 0
    out = capsys.readouterr().out
    inputs, outputs = out.split("output devices:")
    assert inputs.startswith("input devices:")
    assert "    1  USB PnP Sound Device: Audio (hw:1,0)  [ALSA, 1 ch, 48000 Hz]" in inputs
    assert "    2  ReSpeaker 4 Mic Array (hw:2,0)  [ALSA, 6 ch, 16000 Hz]" in inputs
    assert "Headphones" not in inputs and "ReSpeaker" not in outputs
    assert "    0  bcm2835 Headphones: - (hw:0,0)  [ALSA, 8 ch, 44100 Hz]" in outputs
    assert "*   4  default  [ALSA, 32 ch, 44100 Hz]  (default)" in inputs and "(default)" in outputs


def test_no_devices_is_said_plainly_and_is_not_an_error(capsys):
    assert main(["--list-devices"], device_query=empty) == 0
    assert "no audio devices found" in capsys.readouterr().out
    assert describe_devices([]).startswith("no audio devices found")


def test_a_query_that_fails_is_a_device_error(capsys):
    def broken():
        raise OSError("PortAudio library not found")

    assert main(["--list-devices"], device_query=broken) == 1
    assert "cannot list the audio devices" in capsys.readouterr().err


def test_a_device_is_chosen_by_index_or_by_part_of_its_name():
    devices = query_audio_devices(query)
    assert find_device("2", "input", devices) == 2
    assert find_device("respeaker", "input", devices) == 2  # case does not matter
    assert find_device("usb pnp", "output", devices) == 1
    assert find_device("Default", "output", devices) == 4  # a full name wins over names that contain it
    assert [d.index for d in devices if d.default_input] == [4]


@pytest.mark.parametrize(
    "spec, kind, words",
    [
        ("9", "input", ["there is no audio device 9", "1: USB PnP"]),
        ("0", "input", ["audio device 0 has no input channels"]),
        ("Headphones", "input", ["no input device has 'Headphones' in its name", "2: ReSpeaker"]),
        ("hw:", "input", ["names several input devices", "1: USB PnP", "2: ReSpeaker", "index"]),
        ("  ", "output", ["needs an index or a part of its name"]),
    ],
)
def test_unknown_or_ambiguous_devices_are_clear_errors(spec, kind, words):
    with pytest.raises(DeviceError) as caught:
        find_device(spec, kind, query_audio_devices(query))
    assert all(word in str(caught.value) for word in words), str(caught.value)


def test_the_command_line_refuses_a_bad_device_with_exit_1_before_connecting(tmp_path, capsys):
    code = main(["--server", "http://127.0.0.1:9", "--input-device", "hw:", "--save", str(tmp_path / "s")], query)
    assert code == 1
    assert "names several input devices" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing was attempted
    code = main(["--server", "http://127.0.0.1:9", "--output-device", "nothing like it"], device_query=query)
    assert code == 1 and "no output device has 'nothing like it'" in capsys.readouterr().err
    code = main(["--server", "http://x", "--input", "q.wav", "--input-device", "1"], device_query=query)
    assert code == 2 and "--input-device is for the microphone" in capsys.readouterr().err


def test_no_server_is_a_usage_error_unless_only_listing(capsys):
    with pytest.raises(SystemExit) as caught:
        main([], device_query=query)
    assert caught.value.code == 2 and "--server" in capsys.readouterr().err
