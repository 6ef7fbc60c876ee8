"""Deadlines and availability errors of the Ray backends, without a Ray cluster: the handles are fakes whose calls
answer, fail, or never answer (as a hung or dead replica), and can be cancelled like Serve's responses.

The scenarios run on a virtual clock (``waiting.run_in_virtual_time``): a deadline passes at once in real time, and
when it passed is exact, so a test asserts "failed at its 0.05 s deadline", not "within a second of wall clock".
"""

import asyncio

import numpy as np
import pytest
from ray import exceptions as ray_errors
from ray.serve import exceptions as serve_errors
from ray.serve._private.common import DeploymentID
from waiting import run_in_virtual_time

from assistant.lm_engine import BusyError
from assistant.pipeline.backends import BackendUnavailableError, LMLimits
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.pipeline.outputs import AudioFrame, ReplyTextDelta, TurnError, TurnFinished
from assistant.protocol import FinishReason
from assistant.vocab import Modality, UnifiedVocab
from deployments.backends import (
    REPLICA_CHECK_S,
    CallTimeouts,
    RayAcousticBackend,
    RayLMBackend,
    RayMediaBackend,
    RaySpeechEncoder,
    ray_backends,
)

HANG = object()  # a call that never answers

FAST = CallTimeouts(encode_s=0.05, lm_first_chunk_s=0.05, lm_next_chunk_s=0.05, acoustic_s=0.05, media_s=0.05)


def run(coro):
    return run_in_virtual_time(asyncio.wait_for(coro, timeout=20))


def now() -> float:
    return asyncio.get_running_loop().time()


class Response:
    """A DeploymentResponse stand-in: awaited for its outcome (a value, an exception, or HANG), cancellable."""

    def __init__(self, outcome):
        self.outcome = outcome
        self.cancelled = False

    def __await__(self):
        return self._answer().__await__()

    async def _answer(self):
        if self.outcome is HANG:
            await asyncio.Event().wait()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self):
        self.cancelled = True


class Stream:
    """A DeploymentResponseGenerator stand-in: ``chunks``, then the end, or HANG / an exception."""

    def __init__(self, chunks, then=None):
        self.chunks = list(chunks)
        self.then = then
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.chunks:
            return self.chunks.pop(0)
        if self.then is HANG:
            await asyncio.Event().wait()
        if isinstance(self.then, BaseException):
            raise self.then
        raise StopAsyncIteration

    def cancel(self):
        self.cancelled = True


class Method:
    """``handle.method``: ``remote`` returns what ``answer`` (a callable of the call's arguments) makes."""

    def __init__(self, answer):
        self.answer = answer
        self.calls = []

    def remote(self, *args):
        response = self.answer(*args)
        self.calls.append(response)
        return response


class Handle:
    def __init__(self, **methods):
        self.__dict__.update(methods)
        self.options_used = []

    def options(self, **options):
        self.options_used.append(options)
        return self


def answering(outcome):
    return Method(lambda *args: Response(outcome))


# ---------------------------------------------------------------------------------------------------------- deadlines

CALLS = {
    "speech.encode": ("speech", lambda h: RaySpeechEncoder(h, FAST).encode(np.zeros(320, np.float32))),
    "lm.limits": ("lm", lambda h: RayLMBackend(h, FAST).limits()),
    "lm.prefill": ("lm", lambda h: RayLMBackend(h, FAST).prefill([1, 2, 3])),
    "acoustic.register_voice": ("acoustic", lambda h: RayAcousticBackend(h, FAST).register_voice(np.ones((8, 3)))),
    "acoustic.decode_chunk": ("acoustic", lambda h: RayAcousticBackend(h, FAST).decode_chunk(np.arange(5), None, None)),
    "media.image_png": ("media", lambda h: RayMediaBackend(h, FAST).image_png([1, 2])),
    "media.music_wave": ("media", lambda h: RayMediaBackend(h, FAST).music_wave([1, 2])),
    "media.image_codes": ("media", lambda h: RayMediaBackend(h, FAST).image_codes(b"\x89PNG")),
    "media.music_codes": ("media", lambda h: RayMediaBackend(h, FAST).music_codes(b"RIFF")),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_call_that_misses_its_deadline_is_cancelled_and_the_service_is_unavailable(call):
    role, invoke = CALLS[call]
    method = answering(HANG)
    handle = Handle(**{call.split(".")[1]: method})

    async def main():
        started = now()
        with pytest.raises(BackendUnavailableError) as caught:
            await invoke(handle)
        return caught.value, now() - started

    error, elapsed = run(main())
    assert error.role == role and "no answer within 0.05 s" in str(error)
    assert elapsed == pytest.approx(0.05)  # at the deadline, not whenever the replica answers
    (response,) = method.calls
    assert response.cancelled  # the replica is told to stop


def test_calls_that_answer_in_time_pass_their_results_through():
    limits = LMLimits(context_tokens=2048, max_reply_tokens=1000)
    handle = Handle(limits=answering(limits))
    lm = RayLMBackend(handle, FAST)

    async def main():
        return await lm.limits(), await lm.limits()

    assert run(main()) == (limits, limits)
    assert len(handle.limits.calls) == 1  # asked once, then remembered
    assert not handle.limits.calls[0].cancelled


def test_a_failed_limits_call_is_not_remembered():
    outcomes = [HANG, LMLimits(1024, 100)]
    handle = Handle(limits=Method(lambda: Response(outcomes.pop(0))))
    lm = RayLMBackend(handle, FAST)

    async def main():
        with pytest.raises(BackendUnavailableError):
            await lm.limits()
        return await lm.limits()

    assert run(main()) == LMLimits(1024, 100)


def test_the_lm_stream_has_a_deadline_for_its_first_chunk_and_for_each_next_one():
    streams = [Stream([], then=HANG), Stream([[1, 2], [3]], then=HANG)]
    handle = Handle(stream=Method(lambda prompt, force: streams.pop(0)))
    timeouts = CallTimeouts(lm_first_chunk_s=0.05, lm_next_chunk_s=0.1)
    lm = RayLMBackend(handle, timeouts)

    async def consume():
        got = []
        started = now()
        with pytest.raises(BackendUnavailableError) as caught:
            async for chunk in lm.stream([1, 2, 3], None):
                got.append(chunk)
        return got, caught.value, now() - started

    got, error, elapsed = run(consume())
    assert got == [] and error.role == "lm" and "within 0.05 s" in str(error)
    assert elapsed == pytest.approx(0.05)  # the first chunk's deadline
    got, error, elapsed = run(consume())
    assert got == [[1, 2], [3]] and "within 0.1 s" in str(error)
    assert elapsed == pytest.approx(0.1)  # the chunks came at once; the third missed the next-chunk deadline
    first, second = handle.stream.calls
    assert first.cancelled and second.cancelled  # the replica's generator is cancelled: generation stops
    assert {"stream": True} in handle.options_used


def test_a_slow_consumer_does_not_count_against_the_lm():
    handle = Handle(stream=Method(lambda prompt, force: Stream([[1], [2], [3]])))
    lm = RayLMBackend(handle, CallTimeouts(lm_first_chunk_s=0.05, lm_next_chunk_s=0.05))

    async def main():
        got = []
        started = now()
        async for chunk in lm.stream([1], None):
            got.append(chunk)
            await asyncio.sleep(0.15)  # e.g. backpressured by the acoustic decoder: longer than the deadline
        return got, now() - started

    got, elapsed = run(main())
    assert got == [[1], [2], [3]]
    assert elapsed == pytest.approx(3 * 0.15)  # the consumer's three waits, each past the deadline, and no error
    assert handle.stream.calls[0].cancelled  # closing the iterator at the end cancels the (finished) call: harmless


# ---------------------------------------------------------------------------------------------------------- ray errors


def _task_error(cause):
    return ray_errors.RayTaskError("stream", "Traceback ... on host 10.0.0.9", cause).as_instanceof_cause()


@pytest.mark.parametrize(
    "error",
    [
        ray_errors.ActorDiedError(),
        ray_errors.ActorUnavailableError("the replica's node is unreachable", None),
        ray_errors.WorkerCrashedError(),
        ray_errors.NodeDiedError("node 10.0.0.9 died"),
        serve_errors.BackPressureError(num_queued_requests=9, max_queued_requests=8),
        serve_errors.DeploymentUnavailableError(DeploymentID(name="LMDeployment", app_name="anystream")),
        serve_errors.ReplicaUnavailableError("replica-1"),
        _task_error(BusyError("every slot and waiting place is taken")),
        _task_error(BackendUnavailableError("lm", "every slot is taken")),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_dead_unreachable_or_full_replica_is_unavailable(error):
    handle = Handle(encode=answering(error), stream=Method(lambda prompt, force: Stream([], then=error)))

    async def main():
        with pytest.raises(BackendUnavailableError) as encoding:
            await RaySpeechEncoder(handle, FAST).encode(np.zeros(320, np.float32))
        with pytest.raises(BackendUnavailableError) as streaming:
            async for _ in RayLMBackend(handle, FAST).stream([1], None):
                pass
        return encoding.value, streaming.value

    encoding, streaming = run(main())
    assert encoding.role == "speech" and streaming.role == "lm"
    assert encoding.__cause__ is error


def test_a_replica_s_own_error_is_not_unavailability():
    error = _task_error(ValueError("bad prompt"))
    handle = Handle(encode=answering(error))

    async def main():
        with pytest.raises(ValueError) as caught:
            await RaySpeechEncoder(handle, FAST).encode(np.zeros(320, np.float32))
        return caught.value

    caught = run(main())
    assert caught is error and not isinstance(caught, BackendUnavailableError)


def test_call_timeouts_must_be_positive():
    with pytest.raises(ValueError):
        CallTimeouts(acoustic_s=0)
    assert CallTimeouts() == CallTimeouts(
        encode_s=10, lm_first_chunk_s=20, lm_next_chunk_s=10, acoustic_s=10, media_s=30
    )


# ---------------------------------------------------------------------------------------------------------- engine


class FlakyReplicas:
    """The four deployments, scripted: while ``hung`` names a role ("lm-limits": only the LM's ``limits``), that
    role's calls never answer."""

    def __init__(self, vocab: UnifiedVocab):
        self.vocab = vocab
        self.hung: str | None = None
        sp = vocab.range_of(Modality.SPEECH)
        self.reply = [
            *vocab.encode_text("ok"),
            sp.start_id,
            *vocab.codes_to_ids(Modality.SPEECH, range(12)),
            sp.end_id,
            vocab.eos_id,
        ]
        self.speech = Handle(encode=Method(lambda wave: self._answer("speech", np.arange(10, dtype=np.int64))))
        self.lm = Handle(
            limits=Method(lambda: self._answer("lm-limits", LMLimits(2048, 200))), stream=Method(self._stream)
        )
        self.acoustic = Handle(
            register_voice=Method(lambda prompt: self._answer("acoustic", "voice-k")), decode_chunk=Method(self._decode)
        )
        self.media = Handle()

    def _answer(self, role, value):
        return Response(HANG if self.hung == role else value)

    def _stream(self, prompt, force):
        if self.hung == "lm":
            return Stream([], then=HANG)
        return Stream([self.reply[i : i + 4] for i in range(0, len(self.reply), 4)])

    def _decode(self, semantic, context, voice, prompt):
        semantic = np.asarray(semantic)
        return self._answer("acoustic", (np.tile(semantic, (8, 1)), np.full(semantic.size * 320, 0.2, np.float32)))


@pytest.mark.parametrize(
    ("role", "service"),
    [("lm", "language model"), ("lm-limits", "language model"), ("acoustic", "voice"), ("speech", "speech recognizer")],
)
@pytest.mark.parametrize("tiny_vocab", [64], indirect=True)
def test_the_engine_reports_a_hung_replica_at_its_deadline_and_the_next_turn_works(tiny_vocab, role, service):
    vocab = tiny_vocab
    replicas = FlakyReplicas(vocab)
    timeouts = CallTimeouts(encode_s=0.2, lm_first_chunk_s=0.2, lm_next_chunk_s=0.2, acoustic_s=0.2, media_s=0.2)
    backends = ray_backends(replicas.speech, replicas.lm, replicas.acoustic, replicas.media, timeouts=timeouts)
    turn = UserTurn(audio=np.zeros(3200, np.float32), text="hello")

    async def main():
        session = AssistantEngine(backends, vocab, EngineConfig()).new_session()
        replicas.hung = role
        started = now()
        failed = [o async for o in session.respond(turn)]
        elapsed = now() - started
        replicas.hung = None  # the replica recovers (or another one takes over)
        recovered = [o async for o in session.respond(turn)]
        return failed, elapsed, recovered

    failed, elapsed, recovered = run(main())
    (error,) = [o for o in failed if isinstance(o, TurnError)]
    assert (error.code, error.message) == ("unavailable", f"the {service} service is unavailable; try again")
    assert failed[-1] == TurnFinished(FinishReason.ERROR)
    assert elapsed == pytest.approx(0.2)  # the hung call's 0.2 s deadline: the turn's own work takes no time here
    assert recovered[-1] == TurnFinished(FinishReason.COMPLETE)
    assert "".join(o.text for o in recovered if isinstance(o, ReplyTextDelta)) == "ok"
    assert sum(isinstance(o, AudioFrame) for o in recovered) == 12


def test_the_lm_replica_reports_the_limits_of_its_model():
    from deployments.lm import LMDeployment

    replica = LMDeployment.func_or_class(None, engine={"max_slots": 1, "slot_capacity": 512})
    try:
        limits = asyncio.run(replica.limits())  # a real replica: its engine runs in a thread, on the real clock
    finally:
        replica._lm.close()
    assert limits == LMLimits(context_tokens=512, max_reply_tokens=replica._lm.engine.settings.total_limit)


# ---------------------------------------------------------------------------------------------------------- no replica


def with_router(handle, replicas: int | None):
    """Gives a fake handle the router shape ``running_replicas`` reads (Ray Serve 2.x's)."""
    from types import SimpleNamespace

    request_router = SimpleNamespace(curr_replicas={f"replica-{i}": object() for i in range(replicas)})
    handle._router = SimpleNamespace(_asyncio_router=SimpleNamespace(_request_router=request_router))
    return request_router


def test_a_call_waiting_while_its_deployment_has_no_replica_fails_at_once():
    # Serve queues calls while a deployment has no running replica (one died, its successor loads): without this the
    # caller heard of the failure only at the call's deadline (5-10 s), not within a second
    slow = CallTimeouts(encode_s=30, lm_first_chunk_s=30, lm_next_chunk_s=30, acoustic_s=30, media_s=30)
    method = answering(HANG)
    handle = Handle(decode_chunk=method)
    router = with_router(handle, replicas=1)

    async def main():
        backend = RayAcousticBackend(handle, slow)
        waiting = asyncio.ensure_future(backend.decode_chunk(np.arange(5), None, None))
        await asyncio.sleep(0.8)  # a live replica that is slow: the call keeps waiting
        still_waiting = not waiting.done()
        router.curr_replicas.clear()  # the replica died
        started = now()
        with pytest.raises(BackendUnavailableError, match="no running replica"):
            await waiting
        return still_waiting, now() - started

    still_waiting, failed_after = run(main())
    assert still_waiting
    assert 0 < failed_after <= REPLICA_CHECK_S + 1e-9  # at the next look at the replicas, not at the 30 s deadline
    assert method.calls[0].cancelled


def test_running_replicas_reads_serves_router_and_says_none_when_it_cannot_tell():
    from deployments.backends import running_replicas

    handle = Handle()
    assert running_replicas(handle) is None  # no router yet
    with_router(handle, replicas=2)
    assert running_replicas(handle) == 2


def test_serves_router_still_has_the_shape_running_replicas_reads():
    # running_replicas reaches into Ray Serve's router; this fails when an upgrade moves what it reads
    import inspect

    from ray.serve._private import router as serve_router
    from ray.serve._private.request_router.request_router import RequestRouter
    from ray.serve.handle import DeploymentHandle

    assert "self._router" in inspect.getsource(DeploymentHandle.__init__)
    assert "_asyncio_router" in inspect.getsource(serve_router.SingletonThreadRouter)
    assert "_asyncio_router" in inspect.getsource(serve_router.CurrentLoopRouter)
    assert "self._request_router" in inspect.getsource(serve_router.AsyncioRouter.__init__)
    assert isinstance(inspect.getattr_static(RequestRouter, "curr_replicas"), property)
