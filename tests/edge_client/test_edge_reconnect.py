"""Reconnection: the backoff schedule (virtual time), and the client coming back after the server dropped its
connection, to the same conversation (a real RtcSessionManager over a fake engine, loopback WebRTC)."""

from __future__ import annotations

import asyncio
import io
import json
import random

import pytest
from edge_resume_server import EndlessSilence, ResumeServer
from waiting import run_in_virtual_time, until

from edge_client.audio_io import DirectorySink
from edge_client.client import EXIT_OK, EXIT_SERVER, EdgeClient, EdgeClientConfig
from edge_client.reconnect import Backoff, Finished, Lost, keep_connected


def test_backoff_doubles_from_half_a_second_to_ten_with_jitter_below_the_ceiling():
    backoff = Backoff(0.5, 10.0, jitter=0.5, rng=random.Random(7))
    assert [backoff.ceiling(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    delays = [backoff.delay(n) for n in range(1, 200)]
    ceilings = [backoff.ceiling(n) for n in range(1, 200)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len({round(d, 6) for d in delays[10:]}) > 150  # jittered: devices do not come back in lockstep
    assert backoff.ceiling(10_000) == 10.0  # no overflow however long it has been


def test_the_reconnection_schedule_on_a_virtual_clock():
    # connection 1 works, then drops; attempts 1-3 fail; attempt 4 works (ready) and drops; one more fails; the
    # next ends the call. Each wait is the backoff of the attempt's place in its run of failures.
    async def main():
        loop = asyncio.get_running_loop()
        outcomes = iter(
            [
                Lost("dropped", ready=True),
                Lost("refused"),
                Lost("refused"),
                Lost("refused"),
                Lost("dropped again", ready=True),
                Lost("refused"),
                Finished(0, "done"),
            ]
        )
        calls, retries = [], []

        async def connect():
            calls.append(loop.time())
            return next(outcomes)

        backoff = Backoff(0.5, 10.0, jitter=0.0)
        result = await keep_connected(
            connect,
            attempts=None,
            backoff=backoff,
            sleep=asyncio.sleep,
            on_retry=lambda lost, attempt, delay: retries.append((lost.reason, attempt, delay)),
        )
        return result, calls, retries

    result, calls, retries = run_in_virtual_time(main())
    assert result == Finished(0, "done")
    assert [(reason, attempt) for reason, attempt, _ in retries] == [
        ("dropped", 1),
        ("refused", 2),
        ("refused", 3),
        ("refused", 4),
        ("dropped again", 1),  # that connection had worked: the count starts again
        ("refused", 2),
    ]
    waits = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert waits == pytest.approx([0.5, 1.0, 2.0, 4.0, 0.5, 1.0])


def test_attempts_run_out_and_permanent_refusals_are_not_retried():
    async def main(outcomes, attempts):
        outcomes = iter(outcomes)

        async def connect():
            return next(outcomes)

        return await keep_connected(
            connect, attempts=attempts, backoff=Backoff(0.5, 10.0, jitter=0.0), sleep=asyncio.sleep
        )

    # 2 attempts allowed after the drop: both fail, the third failure is the answer
    lost = run_in_virtual_time(main([Lost("dropped", ready=True), Lost("a"), Lost("b"), Finished(0, "")], 2))
    assert lost == Lost("b")
    assert run_in_virtual_time(main([Lost("dropped", ready=True), Finished(0, "")], 0)) == Lost("dropped", ready=True)
    refused = Lost("HTTP 401", permanent=True)
    assert run_in_virtual_time(main([Lost("dropped", ready=True), refused, Finished(0, "")], None)) == refused


async def _ask_and_wait_for_answer(client: EdgeClient, text: str, turn: int) -> None:
    await until(lambda: client._channel is not None and client._channel.readyState == "open", what="channel open")
    assert client.ask(text)
    await until(
        lambda: (
            any(e["event"] == "answer_audible" and e["turn"] == turn for e in client.local_events)
            and any(e["type"] == "turn_end" for e in client.events[-3:])
        ),
        timeout=15,
        what=f"the answer to turn {turn} heard and ended",
    )


@pytest.mark.slow  # real WebRTC in real time, two connections: several seconds
def test_the_server_drops_the_connection_and_the_client_resumes_the_conversation(tmp_path):
    async def main():
        server = ResumeServer()
        await server.start()
        stdout = io.StringIO()
        config = EdgeClientConfig(
            server.url,
            out_dir=tmp_path,
            loopback_only=True,
            handle_signals=False,
            timeout=40,
            reconnect_attempts=3,
            reconnect_initial_s=0.2,
        )
        client = EdgeClient(config, EndlessSilence(), DirectorySink(tmp_path), stdout=stdout, stderr=io.StringIO())
        call = asyncio.ensure_future(client.run())
        try:
            await _ask_and_wait_for_answer(client, "first question", 1)
            first_session = server.sessions[0]
            await server.drop_connection(first_session)
            await until(lambda: len(server.sessions) == 2 or call.done(), timeout=15, what="a second connection")
            assert not call.done(), stdout.getvalue()
            await until(lambda: client.conversation.readies == 2, timeout=15, what="ready on the new connection")
            await _ask_and_wait_for_answer(client, "second question", 2)
            client.stop()
            code = await call
            return code, client, server, stdout.getvalue(), first_session
        finally:
            if not call.done():
                call.cancel()
            await server.stop()

    code, client, server, stdout, first_session = asyncio.run(main())
    assert code == EXIT_OK, client.exit_reason
    # one engine session for the whole call: the resumed session continued it, with the earlier turn in its history
    assert len(server.engines) == 1
    assert server.engines[0].history == ["first question", "second question"]
    assert server.manager.resumed_count == 1
    resumed = server.sessions[1]
    assert resumed.resumed and resumed.engine_session.inner is server.engines[0]
    assert first_session.stats.peer_lost and first_session.closed
    # the client said so, numbered the turns across connections, and the second answer counts on from the first
    assert "connection lost" in stdout and "reconnecting in" in stdout and "the conversation goes on" in stdout
    assert client.reply_text == {1: "answer 1", 2: "answer 2"}
    assert client.conversation.resumed and client.conversation.connections == 2
    summary = json.loads((tmp_path / "session.json").read_text())
    assert summary["connections"] == 2 and summary["resumed"] is True
    assert [e["event"] for e in summary["local_events"] if e["event"] in ("connection_lost", "reconnecting")] == [
        "connection_lost",
        "reconnecting",
    ]
    # the tokens of the two ready events differ: the first was spent on the resume
    tokens = [e["resume_token"] for e in summary["events"] if e["type"] == "ready"]
    assert len(tokens) == 2 and tokens[0] != tokens[1] and all(tokens)
    assert all(e.get("resumed") is (i == 1) for i, e in enumerate(e for e in summary["events"] if e["type"] == "ready"))


@pytest.mark.slow  # real WebRTC in real time: a few seconds
def test_without_reconnect_attempts_a_dropped_connection_ends_the_call_with_exit_2(tmp_path):
    async def main():
        server = ResumeServer()
        await server.start()
        stderr = io.StringIO()
        config = EdgeClientConfig(
            server.url, loopback_only=True, handle_signals=False, timeout=30, reconnect_attempts=0
        )
        client = EdgeClient(config, EndlessSilence(), DirectorySink(tmp_path), stdout=io.StringIO(), stderr=stderr)
        call = asyncio.ensure_future(client.run())
        try:
            await until(lambda: client.conversation.readies == 1, timeout=15, what="ready")
            await server.drop_connection(server.sessions[0])
            return await call, client, stderr.getvalue(), server
        finally:
            await server.stop()

    code, client, stderr, server = asyncio.run(main())
    assert code == EXIT_SERVER
    assert "the server closed" in client.exit_reason and "anystream-edge:" in stderr
    assert len(server.sessions) == 1


@pytest.mark.slow  # real WebRTC in real time, two connections: several seconds
def test_a_silent_server_counts_as_lost_and_the_new_offer_takes_the_conversation_from_the_live_session(tmp_path):
    # the server's audio stops while its session lives on (a half-dead link): the client gives up on the connection
    # after stall_timeout_s, and its offer with the live session's token moves the conversation to the new one
    async def main():
        server = ResumeServer()
        await server.start()
        config = EdgeClientConfig(
            server.url,
            loopback_only=True,
            handle_signals=False,
            timeout=40,
            reconnect_attempts=2,
            reconnect_initial_s=0.2,
            stall_timeout_s=2.5,
        )
        client = EdgeClient(
            config, EndlessSilence(), DirectorySink(tmp_path), stdout=io.StringIO(), stderr=io.StringIO()
        )
        call = asyncio.ensure_future(client.run())
        try:
            await _ask_and_wait_for_answer(client, "before", 1)
            first = server.sessions[0]
            first.track.stop()  # no more audio from the server; the session does not know anything is wrong
            await until(lambda: client.conversation.readies == 2 or call.done(), timeout=15, what="a new connection")
            await _ask_and_wait_for_answer(client, "after", 2)
            client.stop()
            return await call, client, server, first
        finally:
            if not call.done():
                call.cancel()
            await server.stop()

    code, client, server, first = asyncio.run(main())
    assert code == EXIT_OK, client.exit_reason
    lost = [e for e in client.local_events if e["event"] == "connection_lost"]
    assert [e["reason"] for e in lost] == ["no audio from the server for 2.5 s"]
    assert first.closed and server.sessions[1].resumed and len(server.engines) == 1
    assert server.engines[0].history == ["before", "after"]
