import typing

import pytest
from protocol_samples import SERVER_MESSAGES

from assistant import protocol
from assistant.dispatch import ServerMessageHandler, dispatch


class Recorder(ServerMessageHandler):
    def __init__(self):
        self.calls = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            return lambda message: object.__getattribute__(self, "calls").append((name, message))
        return object.__getattribute__(self, name)


SAMPLES = SERVER_MESSAGES  # one of every server message type


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
