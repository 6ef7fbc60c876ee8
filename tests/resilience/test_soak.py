"""Soak: many short sessions one after the other, then many at once for minutes, on a local Ray with the embedded
models and real aiortc callers.

After warm-up, every serving process's memory stays within a bound, and once the callers have gone the gateway's peer
connections, asyncio tasks, threads and file descriptors are back to their baseline; no turn is lost (every question
gets a complete, audible answer). The figures are printed (``-s``) and written to ``$SOAK_JSON`` when set.

Run with ``make test-resilience`` (marker ``soak``). Sizes: ``SOAK_SESSIONS`` (default 300 sequential sessions),
``SOAK_CONCURRENT`` (default 20 callers) for ``SOAK_MINUTES`` (default 3).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path

import aiohttp
import psutil
import pytest
from local_app import serving
from prometheus_client.parser import text_string_to_metric_families
from rtc_caller import RtcCaller

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600)]

PORT = 18471
URL = f"http://127.0.0.1:{PORT}"
SEQUENTIAL = int(os.environ.get("SOAK_SESSIONS", "300"))
CONCURRENT = int(os.environ.get("SOAK_CONCURRENT", "20"))
MINUTES = float(os.environ.get("SOAK_MINUTES", "3"))
QUESTIONS = ("what is two plus two", "what is the capital of france", "hello", "what sound does a cow make")
WARM_UP_SESSIONS = 30
# Growth of a process's resident memory allowed after warm-up (allocator slack and caches that settle, not a leak:
# a leak of one 20 ms frame per turn over 300 sessions alone would exceed it).
MEMORY_BOUND_MIB = 48.0
MIB = 1024 * 1024
# The event loop's default executor (DNS lookups of ICE candidates run there) starts threads on demand, up to this many,
# and keeps them: more Python threads after a burst of calls than before is that pool, not a leak.
DEFAULT_EXECUTOR_THREADS = min(32, (os.cpu_count() or 1) + 4)


@pytest.fixture(scope="module")
def serve_url():
    args = {
        "max_sessions": CONCURRENT + 4,
        "lm_batching": {"max_slots": 8, "max_waiting": CONCURRENT + 4},
        "lm": {
            "num_replicas": 1,
            "max_ongoing_requests": CONCURRENT + 12,
            "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0},
        },
    }
    with serving(PORT, args) as url:
        yield url


async def _get(path: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{URL}{path}", timeout=aiohttp.ClientTimeout(total=10)) as reply:
            return await reply.text()


async def _wait_for(predicate, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    health: dict = {}
    while time.monotonic() < deadline:
        try:
            health = json.loads(await _get("/health"))
            if predicate(health):
                return health
        except (aiohttp.ClientError, ValueError):
            pass
        await asyncio.sleep(0.5)
    raise AssertionError(f"/health did not reach the state within {timeout} s: {health}")


async def figures() -> dict[str, float]:
    """The gateway's own runtime figures (from ``/metrics``) and every Serve replica's memory, fds and threads."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(await _get("/metrics")):
        for sample in family.samples:
            if sample.name in (
                "process_resident_memory_bytes",
                "process_open_fds",
                "anystream_asyncio_tasks",
                "anystream_threads",
                "anystream_peer_connections",
                "anystream_active_sessions",
            ):
                out[f"gateway.{sample.name}"] = sample.value
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if not cmdline.startswith("ray::ServeReplica:anystream:"):
            continue
        name = cmdline[len("ray::ServeReplica:anystream:") :].split()[0]  # the deployment's class name
        try:
            out[f"{name}.rss_mib"] = proc.memory_info().rss / MIB
            out[f"{name}.fds"] = proc.num_fds()
            out[f"{name}.threads"] = proc.num_threads()
        except psutil.Error:
            continue
    return out


async def one_session(question: str) -> dict:
    caller = RtcCaller(URL)
    try:
        await caller.connect()
        return await caller.turn(question, timeout=90)
    finally:
        await caller.hang_up()


def _report(name: str, data: dict) -> None:
    print(f"\n{name}: {json.dumps(data, indent=1, sort_keys=True)}")
    target = os.environ.get("SOAK_JSON")
    if target:
        path = Path(target)
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged[name] = data
        path.write_text(json.dumps(merged, indent=1, sort_keys=True))


def _growth(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before[k], 2) for k in before if k in after}


def _assert_back_to_baseline(baseline: dict[str, float], now: dict[str, float]) -> None:
    gateway_rss = now["gateway.process_resident_memory_bytes"] - baseline["gateway.process_resident_memory_bytes"]
    assert gateway_rss / MIB <= MEMORY_BOUND_MIB, f"gateway memory grew {gateway_rss / MIB:.1f} MiB"
    for key, value in now.items():
        if key.endswith(".rss_mib") and key in baseline:
            assert value - baseline[key] <= MEMORY_BOUND_MIB, f"{key} grew {value - baseline[key]:.1f} MiB"
    assert now["gateway.anystream_peer_connections"] == 0
    assert now["gateway.anystream_active_sessions"] == 0
    # a little slack: a scrape in flight or a pooled HTTP connection may hold one or two more at that instant
    assert now["gateway.process_open_fds"] <= baseline["gateway.process_open_fds"] + 2
    assert now["gateway.anystream_asyncio_tasks"] <= baseline["gateway.anystream_asyncio_tasks"] + 2
    assert now["gateway.anystream_threads"] <= baseline["gateway.anystream_threads"] + DEFAULT_EXECUTOR_THREADS
    for key, value in now.items():
        if key.endswith((".fds", ".threads")) and not key.startswith("gateway.") and key in baseline:
            if key == "Gateway.threads":
                # Ray's gRPC thread pools in the process that makes every model call grow under concurrent calls and
                # shrink when idle (measured 127 -> 187 under 20 callers -> 87 after): reported, not asserted; the
                # gateway's own threads are anystream_threads above
                continue
            assert value <= baseline[key] + 2, f"{key}: {baseline[key]} -> {value}"


async def _settled() -> dict[str, float]:
    """Figures once the gateway holds no session (closing is asynchronous: wait for it, then read)."""
    await _wait_for(lambda h: h.get("sessions") == 0, 60)
    deadline = time.monotonic() + 30
    while True:
        now = await figures()
        if now.get("gateway.anystream_peer_connections", 1) == 0 or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.5)


def test_sequential_sessions_leave_nothing_behind(serve_url):
    async def scenario() -> None:
        lost: list[str] = []
        started = time.monotonic()
        baseline: dict[str, float] = {}
        for index in range(SEQUENTIAL):
            try:
                turn = await one_session(QUESTIONS[index % len(QUESTIONS)])
                if turn["reason"] != "complete" or turn["loud_frames"] == 0:
                    lost.append(f"session {index}: {turn['reason']}, {turn['loud_frames']} loud frames")
            except Exception as exc:
                lost.append(f"session {index}: {type(exc).__name__}: {exc}")
            if index + 1 == WARM_UP_SESSIONS:
                baseline = await _settled()
        final = await _settled()
        _report(
            "sequential",
            {
                "sessions": SEQUENTIAL,
                "seconds": round(time.monotonic() - started, 1),
                "lost_turns": lost,
                "after_warm_up": baseline,
                "end": final,
                "growth": _growth(baseline, final),
            },
        )
        assert not lost, lost
        _assert_back_to_baseline(baseline, final)

    asyncio.run(scenario())


def test_concurrent_sessions_for_minutes(serve_url):
    async def caller_loop(index: int, until: float, rng: random.Random, record: dict) -> None:
        caller = RtcCaller(URL)
        try:
            await caller.connect(timeout=60)
            await asyncio.sleep(rng.uniform(0, 2))
            while time.monotonic() < until:
                question = rng.choice(QUESTIONS)
                try:
                    turn = await caller.turn(question, timeout=120)
                    record["turns"] += 1
                    if turn["reason"] != "complete" or turn["loud_frames"] == 0:
                        record["lost"].append(f"caller {index}: {turn['reason']}, {turn['loud_frames']} loud frames")
                except Exception as exc:
                    record["lost"].append(f"caller {index}: {type(exc).__name__}: {exc}")
                    if caller.pc is None or caller.pc.connectionState != "connected":
                        record["lost"].append(f"caller {index}: the call dropped ({caller.events[-3:]})")
                        return
                await asyncio.sleep(rng.uniform(0.5, 2.0))
        finally:
            await caller.hang_up()

    async def scenario() -> None:
        await one_session("hello")  # warm every path once
        baseline = await _settled()
        record: dict = {"turns": 0, "lost": []}
        until = time.monotonic() + MINUTES * 60
        rng = random.Random(7)
        samples = []

        async def sample() -> None:
            while time.monotonic() < until:
                await asyncio.sleep(20)
                samples.append(await figures())

        await asyncio.gather(
            sample(), *(caller_loop(i, until, random.Random(rng.random()), record) for i in range(CONCURRENT))
        )
        final = await _settled()
        peak = {k: max(s.get(k, 0) for s in samples) for k in samples[0]} if samples else {}
        _report(
            "concurrent",
            {
                "callers": CONCURRENT,
                "minutes": MINUTES,
                "turns": record["turns"],
                "lost_turns": record["lost"],
                "baseline": baseline,
                "peak": peak,
                "end": final,
                "growth": _growth(baseline, final),
            },
        )
        assert record["turns"] >= CONCURRENT, record
        assert not record["lost"], record["lost"]
        _assert_back_to_baseline(baseline, final)

    asyncio.run(scenario())
