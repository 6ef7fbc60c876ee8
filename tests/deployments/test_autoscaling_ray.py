"""The LM deployment on a local Ray scales on its own load signal: up while sessions keep its slots busy, down once
they stop, and the replica that goes drains first (no stream started before the scale-down is cut off)."""

from __future__ import annotations

import asyncio
import time

import pytest
from local_ray import local_serve

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(420),
    # Ray deprecates metrics_interval_s for environment variables it does not read yet: this Ray's replicas and
    # routers still push load metrics every metrics_interval_s (default 10 s), which the test shortens to 0.5 s.
    pytest.mark.filterwarnings("ignore:The `metrics_interval_s` field in AutoscalingConfig is deprecated"),
]

AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "upscale_delay_s": 0,
    "downscale_delay_s": 3,
    "metrics_interval_s": 0.5,
    "look_back_period_s": 1.0,
    "policy": {
        "policy_function": "deployments.autoscaling:LoadSignalPolicy",
        "policy_kwargs": {"target_per_replica": 1},
    },
}


def _running_lm_replicas(app: str) -> int:
    from ray import serve

    status = serve.status().applications[app].deployments["LMDeployment"]
    return int(status.replica_states.get("RUNNING", 0))


async def _wait_for(predicate, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.25)
    return time.monotonic()


def test_lm_replicas_rise_under_load_and_fall_after_without_dropping_a_stream():
    from assistant.prompts import ChatPromptBuilder, UserMessage
    from assistant.vocab import UnifiedVocab

    vocab = UnifiedVocab.embedded()
    prompt = ChatPromptBuilder(vocab).build(None, UserMessage(text="play a fast major tune and say hello"))
    with local_serve(18433):
        from ray import serve

        from deployments.lm import LMDeployment

        deployment = LMDeployment.options(
            autoscaling_config=AUTOSCALING,
            max_ongoing_requests=4,
            graceful_shutdown_timeout_s=60,
            ray_actor_options={"num_cpus": 0.4, "num_gpus": 0},
        )
        handle = serve.run(
            deployment.bind(None, 0.0, engine={"max_slots": 2, "max_waiting": 2}), name="lm-scaling", route_prefix=None
        ).options(stream=True)

        async def scenario() -> dict:
            outcomes = {"completed": 0, "failed": []}
            stop = asyncio.Event()

            async def one_stream():
                try:
                    ids = [i async for chunk in handle.stream.remote(prompt, None) for i in chunk]
                    assert ids, "an empty reply"
                    outcomes["completed"] += 1
                except Exception as exc:
                    outcomes["failed"].append(repr(exc))

            async def caller():
                while not stop.is_set():  # one session asking again and again: a slot stays busy
                    await one_stream()

            callers = [asyncio.create_task(caller()) for _ in range(3)]
            await _wait_for(lambda: _running_lm_replicas("lm-scaling") == 2, 180, "scaling up to 2 replicas")
            stop.set()
            # Streams started before the scale-down; they run while a replica is told to go.
            tail = [asyncio.create_task(one_stream()) for _ in range(2)]
            await asyncio.gather(*callers)
            await _wait_for(lambda: _running_lm_replicas("lm-scaling") == 1, 120, "scaling down to 1 replica")
            await asyncio.gather(*tail)
            return outcomes

        outcomes = asyncio.run(scenario())
        assert outcomes["failed"] == []
        assert outcomes["completed"] >= 5
