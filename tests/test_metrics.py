"""ServingMetrics: each test owns its registry; values are read back from the text exposition, as a scraper would."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from assistant.metrics import CountingLMBackend, ServingMetrics
from assistant.pipeline.backends import LMBackend


def scrape(metrics: ServingMetrics) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from the rendered text."""
    samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_gateway_observations_appear_in_the_exposition():
    metrics = ServingMetrics(CollectorRegistry(), replica="gw-1")
    metrics.observe_ttfa(0.42)
    metrics.observe_ttfa(1.7)
    metrics.observe_ttfa(float("nan"))  # ignored, never a poisoned sum
    metrics.turn_finished("complete")
    metrics.turn_finished("complete")
    metrics.turn_finished("interrupted")
    metrics.session_created()
    metrics.set_active_sessions(3, parked=2)
    metrics.session_rejected("busy")
    metrics.underrun(True, 0.02)
    metrics.underrun(False, 0.02)
    metrics.observe_reply_queues([4, 10, 0])
    metrics.lm_tokens(7)
    metrics.lm_tokens(0)
    metrics.stats_error("lm")
    s = scrape(metrics)
    assert s[("anystream_time_to_first_audio_seconds_count", ())] == 2
    assert s[("anystream_time_to_first_audio_seconds_sum", ())] == pytest.approx(2.12)
    assert s[("anystream_time_to_first_audio_seconds_bucket", (("le", "0.5"),))] == 1
    assert s[("anystream_time_to_first_audio_seconds_bucket", (("le", "2.0"),))] == 2
    assert s[("anystream_turns_total", (("reason", "complete"),))] == 2
    assert s[("anystream_turns_total", (("reason", "interrupted"),))] == 1
    assert s[("anystream_sessions_created_total", ())] == 1
    assert s[("anystream_active_sessions", ())] == 3
    assert s[("anystream_parked_conversations", ())] == 2
    assert s[("anystream_rejected_sessions_total", (("reason", "busy"),))] == 1
    assert s[("anystream_audio_underruns_total", ())] == 1
    assert s[("anystream_audio_underrun_seconds_total", ())] == pytest.approx(0.04)
    assert s[("anystream_reply_queue_frames", ())] == 14
    assert s[("anystream_reply_queue_frames_max", ())] == 10
    assert s[("anystream_lm_tokens_received_total", ())] == 7
    assert s[("anystream_stats_errors_total", (("deployment", "lm"),))] == 1
    assert s[("anystream_gateway_info", (("replica", "gw-1"),))] == 1
    assert s[("process_resident_memory_bytes", ())] > 0


def test_two_objects_do_not_share_a_registry():
    a, b = ServingMetrics(CollectorRegistry(), process=False), ServingMetrics(CollectorRegistry(), process=False)
    a.turn_finished("complete")
    assert ("anystream_turns_total", (("reason", "complete"),)) in scrape(a)
    assert ("anystream_turns_total", (("reason", "complete"),)) not in scrape(b)
    assert not [k for k in scrape(b) if k[0].startswith("process_")]


def test_lm_and_acoustic_stats_become_gauges_counters_and_derived_figures():
    metrics = ServingMetrics(CollectorRegistry(), process=False)
    used = metrics.observe_lm(
        {
            "active_slots": 6,
            "max_slots": 8,
            "waiting": 1,
            "steps": 1200,
            "last_step_s": 0.012,
            "last_batch_size": 6,
            "tokens": 5000,
            "something_else": "ignored",
        }
    )
    assert used == ["active_slots", "last_batch_size", "last_step_s", "max_slots", "steps", "tokens", "waiting"]
    metrics.observe_acoustic(
        {"queued": 3, "batches": 40, "mean_batch_size": 2.5, "last_call_s": 0.2, "audio_s": 20.0, "busy_s": 8.0}
    )
    s = scrape(metrics)
    r = (("replica", ""),)
    assert s[("anystream_lm_active_slots", r)] == 6 and s[("anystream_lm_max_slots", r)] == 8
    assert s[("anystream_lm_slot_occupancy", r)] == pytest.approx(0.75)
    assert s[("anystream_lm_waiting_requests", r)] == 1
    assert s[("anystream_lm_steps_total", r)] == 1200  # cumulative in the replica: exposed as a counter
    assert s[("anystream_lm_step_seconds", r)] == pytest.approx(0.012)
    assert s[("anystream_lm_batch_size", r)] == 6
    assert s[("anystream_lm_engine_tokens_total", r)] == 5000
    assert s[("anystream_acoustic_queue_depth", r)] == 3
    assert s[("anystream_acoustic_batches_total", r)] == 40
    assert s[("anystream_acoustic_mean_batch_size", r)] == 2.5
    assert s[("anystream_acoustic_call_seconds", r)] == pytest.approx(0.2)
    assert s[("anystream_acoustic_audio_seconds_total", r)] == 20
    assert s[("anystream_acoustic_busy_seconds_total", r)] == 8
    assert s[("anystream_acoustic_real_time_factor", r)] == pytest.approx(0.4)

    metrics.observe_acoustic({"queue_depth": 5})  # the name AcousticBatchStats uses
    assert scrape(metrics)[("anystream_acoustic_queue_depth", r)] == 5

    # a newer dict replaces the older one; a key it lacks is left out rather than kept stale
    metrics.observe_lm({"active_slots": 2, "max_slots": 8})
    s = scrape(metrics)
    assert s[("anystream_lm_slot_occupancy", r)] == pytest.approx(0.25)
    assert ("anystream_lm_steps_total", r) not in s


def test_replicas_stay_apart_and_bad_stats_are_refused_whole():
    metrics = ServingMetrics(CollectorRegistry(), process=False)
    metrics.observe_lm({"replica": "a", "tokens": 10, "active_slots": 1})
    metrics.observe_lm({"replica": "b", "tokens": 99, "active_slots": 2})
    s = scrape(metrics)
    assert s[("anystream_lm_engine_tokens_total", (("replica", "a"),))] == 10
    assert s[("anystream_lm_engine_tokens_total", (("replica", "b"),))] == 99
    for bad in ({"tokens": -1}, {"tokens": float("inf")}, {"tokens": "12"}, {"active_slots": True}):
        with pytest.raises(ValueError):
            metrics.observe_lm({"replica": "a", **bad})
    with pytest.raises(ValueError):
        metrics.observe_acoustic(["not", "a", "dict"])
    assert scrape(metrics)[("anystream_lm_engine_tokens_total", (("replica", "a"),))] == 10  # nothing was set


def test_stale_replica_stats_are_dropped():
    fresh = ServingMetrics(CollectorRegistry(), process=False)
    fresh.observe_lm({"active_slots": 1})
    assert scrape(fresh)[("anystream_lm_active_slots", (("replica", ""),))] == 1
    stale = ServingMetrics(CollectorRegistry(), process=False, stale_after_s=-1.0)  # everything is already stale
    stale.observe_lm({"active_slots": 1})
    assert ("anystream_lm_active_slots", (("replica", ""),)) not in scrape(stale)


class ChunkLM(LMBackend):
    def __init__(self):
        self.closed = False

    async def stream(self, prompt_ids, force_modality):
        try:
            for chunk in ([1, 2, 3], [4], [5, 6]):
                yield chunk
        finally:
            self.closed = True


def test_counting_lm_backend_counts_tokens_and_closes_the_inner_stream():
    async def main():
        metrics = ServingMetrics(CollectorRegistry(), process=False)
        inner = ChunkLM()
        counting = CountingLMBackend(inner, metrics)
        chunks = [chunk async for chunk in counting.stream([0], None)]
        assert chunks == [[1, 2, 3], [4], [5, 6]]
        assert scrape(metrics)[("anystream_lm_tokens_received_total", ())] == 6
        inner = ChunkLM()
        stream = CountingLMBackend(inner, metrics).stream([0], None)
        assert await stream.__anext__() == [1, 2, 3]
        await stream.aclose()  # an interrupted turn closes the stream: the inner one must stop too
        assert inner.closed
        assert scrape(metrics)[("anystream_lm_tokens_received_total", ())] == 9

    asyncio.run(main())
