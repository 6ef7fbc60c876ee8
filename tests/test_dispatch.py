import typing

import pytest

from assistant import protocol
from assistant.dispatch import ServerMessageHandler, dispatch


class Recorder(ServerMessageHandler):
    def __init__(self):
        self.calls = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            return lambda message: object.__getattribute__(self, "calls").append((name, message))
        return object.__getattribute__(self, name)


SAMPLES = [
    protocol.Ready(session_id="s", sample_rate=16000),
    protocol.SpeechStarted(),
    protocol.SpeechStopped(duration_s=1.0),
    protocol.TurnStarted(turn_id=1),
    protocol.Transcript(turn_id=1, delta="hi"),
    protocol.TextDelta(turn_id=1, delta="hello"),
    protocol.ImageReady(turn_id=1, index=0, width=2, height=2, png_base64=""),
    protocol.MusicReady(turn_id=1, index=0, duration_s=2.0),
    protocol.Interrupted(turn_id=1),
    protocol.TurnEnd(turn_id=1),
    protocol.ErrorEvent(message="x"),
]


def test_every_server_message_type_has_one_handler_method():
    assert {type(m) for m in SAMPLES} == set(typing.get_args(protocol.ServerMessage))
    recorder = Recorder()
    for message in SAMPLES:
        dispatch(message, recorder)
    names = [name for name, _ in recorder.calls]
    assert len(set(names)) == len(SAMPLES)  # a distinct method per type
    assert [m for _, m in recorder.calls] == SAMPLES
    assert all(hasattr(ServerMessageHandler, name) for name in names)


def test_parsed_messages_reach_the_same_methods():
    recorder = Recorder()
    for message in SAMPLES:
        dispatch(protocol.parse_server_message(protocol.to_json(message)), recorder)
    assert [m for _, m in recorder.calls] == SAMPLES


def test_a_client_message_is_refused():
    with pytest.raises(TypeError, match="TextMessage"):
        dispatch(protocol.TextMessage(text="hi"), ServerMessageHandler())
