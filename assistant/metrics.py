"""Prometheus metrics of a serving process (the gateway), in a registry the :class:`ServingMetrics` object owns.

Nothing here is a module global: a process (or a test) makes ``ServingMetrics(CollectorRegistry())`` and passes it to
whoever observes. Every metric is documented in ``docs/metrics.md``; the names are the ``*_NAME`` attributes below.

Three kinds of figures:

- observed in the gateway process itself: time to first audio, turns by finish reason, active and rejected sessions,
  reply-audio underruns, reply-track queue depth, LM tokens received (:class:`CountingLMBackend`);
- reported by the model deployments: ``observe_lm(stats)`` / ``observe_acoustic(stats)`` take the dict their
  ``stats()`` method returns (keys in :data:`LM_STATS_KEYS` / :data:`ACOUSTIC_STATS_KEYS`) and expose it; a stats call
  that failed is counted with :meth:`ServingMetrics.stats_error`;
- the process's own CPU and memory (``process_*``, prometheus_client's process collector; Linux only).

This module imports neither ray nor torch.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from assistant.pipeline.backends import LMBackend, LMLimits

PREFIX = "anystream"
# Seconds from the end of the user's turn to the first answer audio; dense below 2 s where the targets are.
TTFA_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0)
# A deployment's stats not refreshed for this long are dropped from the exposition (its replica is probably gone).
STATS_STALE_AFTER_S = 120.0

# The keys a deployment's ``stats()`` dict may carry; any may be missing (that metric is then left out). An optional
# ``"replica"`` (str) names the replica that answered, so several replicas' figures stay apart (label ``replica``).
# kind: "gauge" (a current value) or "counter" (cumulative since the replica started).
LM_STATS_KEYS: dict[str, tuple[str, str, str]] = {
    # key: (metric name without the prefix, kind, help)
    "active_slots": ("lm_active_slots", "gauge", "KV slots holding a generating or prefilling session."),
    "max_slots": ("lm_max_slots", "gauge", "KV slots of the LM replica (its session capacity)."),
    "waiting": ("lm_waiting_requests", "gauge", "Generation requests accepted but waiting for a free slot."),
    "steps": ("lm_steps", "counter", "Batched decode steps the LM engine has run."),
    "last_step_s": ("lm_step_seconds", "gauge", "Duration of the LM engine's latest decode step, seconds."),
    "last_batch_size": ("lm_batch_size", "gauge", "Rows (sessions) in the LM engine's latest decode step."),
    "tokens": ("lm_engine_tokens", "counter", "Tokens the LM engine has generated."),
}
ACOUSTIC_STATS_KEYS: dict[str, tuple[str, str, str]] = {
    "queued": ("acoustic_queue_depth", "gauge", "Speech chunks waiting for the acoustic decoder."),
    "batches": ("acoustic_batches", "counter", "Batched acoustic decoder calls."),
    "mean_batch_size": ("acoustic_mean_batch_size", "gauge", "Mean chunks per acoustic decoder call."),
    "last_call_s": ("acoustic_call_seconds", "gauge", "Duration of the latest acoustic decoder call, seconds."),
    "audio_s": ("acoustic_audio_seconds", "counter", "Seconds of speech the acoustic decoder has produced."),
    "busy_s": ("acoustic_busy_seconds", "counter", "Seconds the acoustic decoder has spent decoding."),
}
# Other names the deployments' stats use for the same figures (``AcousticBatchStats.to_dict`` says queue_depth).
STATS_ALIASES = {"queue_depth": "queued"}


class ServingMetrics:
    """The serving metrics, registered in ``registry`` (a fresh one when None).

    process: also register prometheus_client's process collector (``process_cpu_seconds_total``,
        ``process_resident_memory_bytes``, ...) for this process.
    replica: a name for this process (e.g. the Serve replica id), exposed as ``anystream_gateway_info{replica=...}``
        so a scrape through a load balancer says which replica answered.
    """

    TTFA_NAME = f"{PREFIX}_time_to_first_audio_seconds"

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        process: bool = True,
        replica: str | None = None,
        ttfa_buckets: Iterable[float] = TTFA_BUCKETS,
        stale_after_s: float = STATS_STALE_AFTER_S,
    ):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.time_to_first_audio = Histogram(
            self.TTFA_NAME,
            "Seconds from the start of a turn (the end of the user's speech as the server's endpointer "
            "decided, or a typed question) to the first answer audio frame leaving the server.",
            buckets=tuple(ttfa_buckets),
            registry=r,
        )
        self.turns = Counter(f"{PREFIX}_turns", "Turns that ended, by finish reason.", ["reason"], registry=r)
        self.speculative_turns = Counter(
            f"{PREFIX}_speculative_turns",
            "Answers started at the user's pause, by outcome: committed (the pause was the end of the turn) or "
            "discarded (the user went on; the work was thrown away unheard).",
            ["outcome"],
            registry=r,
        )
        self.sessions_created = Counter(
            f"{PREFIX}_sessions_created", "Sessions accepted (offers answered).", registry=r
        )
        self.active_sessions = Gauge(f"{PREFIX}_active_sessions", "Sessions this process holds now.", registry=r)
        self.parked_conversations = Gauge(
            f"{PREFIX}_parked_conversations",
            "Conversations whose connection dropped, kept for their caller to resume.",
            registry=r,
        )
        self.asyncio_tasks = Gauge(
            f"{PREFIX}_asyncio_tasks", "Asyncio tasks alive in this process's event loop.", registry=r
        )
        self.threads = Gauge(f"{PREFIX}_threads", "Python threads alive in this process.", registry=r)
        self.peer_connections = Gauge(
            f"{PREFIX}_peer_connections", "WebRTC peer connections of this process that are not closed.", registry=r
        )
        self.rejected_sessions = Counter(
            f"{PREFIX}_rejected_sessions",
            "Offers refused, by reason (the error body's "
            "reason: busy, client_limit, bad_request, unauthorized, forbidden_origin, "
            "forbidden_host, too_large, unsupported_media_type, error).",
            ["reason"],
            registry=r,
        )
        self.audio_underruns = Counter(
            f"{PREFIX}_audio_underruns",
            "Times a reply track ran dry in the middle of a reply and sent silence instead of answer audio.",
            registry=r,
        )
        self.audio_underrun_seconds = Counter(
            f"{PREFIX}_audio_underrun_seconds",
            "Seconds of silence sent in the middle of replies because no answer audio was ready.",
            registry=r,
        )
        self.reply_queue_frames = Gauge(
            f"{PREFIX}_reply_queue_frames",
            "20 ms frames queued on the reply tracks of every session (sampled when /metrics is read).",
            registry=r,
        )
        self.reply_queue_frames_max = Gauge(
            f"{PREFIX}_reply_queue_frames_max",
            "The most 20 ms frames queued on one session's reply track (sampled when /metrics is read).",
            registry=r,
        )
        self.lm_tokens_received = Counter(
            f"{PREFIX}_lm_tokens_received",
            "LM tokens the engine sessions of this process received (rate() gives tokens/s).",
            registry=r,
        )
        self.stats_errors = Counter(
            f"{PREFIX}_stats_errors",
            "Calls for a deployment's stats that failed or timed out (those metrics were left out of that scrape).",
            ["deployment"],
            registry=r,
        )
        if replica is not None:
            Info(f"{PREFIX}_gateway", "The process that answered this scrape.", registry=r).info({"replica": replica})
        if process:
            ProcessCollector(registry=r)
        self._deployments = _DeploymentStatsCollector(stale_after_s)
        r.register(self._deployments)

    # ----- the gateway's own observations -----

    def observe_ttfa(self, seconds: float) -> None:
        if seconds >= 0 and math.isfinite(seconds):
            self.time_to_first_audio.observe(seconds)

    def turn_finished(self, reason: str) -> None:
        self.turns.labels(reason=str(reason)).inc()

    def speculation_decided(self, committed: bool) -> None:
        self.speculative_turns.labels(outcome="committed" if committed else "discarded").inc()

    def session_created(self) -> None:
        self.sessions_created.inc()

    def observe_runtime(self, asyncio_tasks: int, threads: int, peer_connections: int) -> None:
        """What a leak would grow: sampled at scrape time (the soak tests check they return to their baseline)."""
        self.asyncio_tasks.set(asyncio_tasks)
        self.threads.set(threads)
        self.peer_connections.set(peer_connections)

    def set_active_sessions(self, count: int, parked: int = 0) -> None:
        self.active_sessions.set(count)
        self.parked_conversations.set(parked)

    def session_rejected(self, reason: str) -> None:
        self.rejected_sessions.labels(reason=reason).inc()

    def underrun(self, started: bool, seconds: float) -> None:
        """One silent frame sent mid-reply: ``started`` when it begins a new underrun, ``seconds`` its length."""
        if started:
            self.audio_underruns.inc()
        self.audio_underrun_seconds.inc(seconds)

    def observe_reply_queues(self, depths: Iterable[int]) -> None:
        depths = list(depths)
        self.reply_queue_frames.set(sum(depths))
        self.reply_queue_frames_max.set(max(depths, default=0))

    def lm_tokens(self, count: int) -> None:
        if count > 0:
            self.lm_tokens_received.inc(count)

    def stats_error(self, deployment: str) -> None:
        self.stats_errors.labels(deployment=deployment).inc()

    # ----- what the model deployments report -----

    def observe_lm(self, stats: Mapping[str, Any]) -> list[str]:
        """Sets the LM metrics from an LM deployment's ``stats()`` dict.

        Keys (all optional): ``active_slots``, ``max_slots``, ``waiting`` (now), ``steps`` (decode steps so far),
        ``last_step_s`` (the latest step's seconds), ``last_batch_size`` (its rows), ``tokens`` (generated so far);
        ``replica`` (str) keeps several replicas apart. Unknown keys are ignored. Returns the keys used; raises
        ``ValueError`` (nothing is set) when a known key holds something other than a finite number >= 0.
        ``anystream_lm_slot_occupancy`` is derived as active_slots / max_slots.
        """
        values = self._deployments.update("lm", LM_STATS_KEYS, stats)
        if "active_slots" in values and values.get("max_slots"):
            self._deployments.derive(
                "lm",
                stats,
                "lm_slot_occupancy",
                "Fraction of the LM replica's KV slots in use.",
                values["active_slots"] / values["max_slots"],
            )
        return sorted(values)

    def observe_acoustic(self, stats: Mapping[str, Any]) -> list[str]:
        """Sets the acoustic metrics from an acoustic deployment's ``stats()`` dict.

        Keys (all optional): ``queued`` (chunks waiting now; ``queue_depth`` is read as well), ``batches``
        (decoder calls so far), ``mean_batch_size``,
        ``last_call_s`` (the latest call's seconds), ``audio_s`` (seconds of speech produced so far), ``busy_s``
        (seconds spent decoding so far); ``replica`` as for :meth:`observe_lm`. ``anystream_acoustic_real_time_factor``
        is derived as busy_s / audio_s (below 1: faster than real time). Same errors as :meth:`observe_lm`.
        """
        values = self._deployments.update("acoustic", ACOUSTIC_STATS_KEYS, stats)
        if "busy_s" in values and values.get("audio_s"):
            self._deployments.derive(
                "acoustic",
                stats,
                "acoustic_real_time_factor",
                "Seconds spent decoding per "
                "second of speech produced, since the replica started (below 1: faster than "
                "real time).",
                values["busy_s"] / values["audio_s"],
            )
        return sorted(values)

    # ----- exposition -----

    def render(self) -> bytes:
        """The registry in Prometheus' text exposition format."""
        return generate_latest(self.registry)

    CONTENT_TYPE = CONTENT_TYPE_LATEST


class _DeploymentStatsCollector:
    """Exposes the latest stats dict of each (deployment, replica) as gauges and counters."""

    def __init__(self, stale_after_s: float):
        self.stale_after_s = stale_after_s
        self._lock = threading.Lock()
        # (deployment, replica) -> (monotonic time, {metric name: (kind, help, value)})
        self._latest: dict[tuple[str, str], tuple[float, dict[str, tuple[str, str, float]]]] = {}

    @staticmethod
    def _replica(stats: Mapping[str, Any]) -> str:
        replica = stats.get("replica", "")
        return replica if isinstance(replica, str) else str(replica)

    def update(self, deployment: str, keys: dict[str, tuple[str, str, str]], stats: Mapping[str, Any]) -> dict:
        if not isinstance(stats, Mapping):
            raise ValueError(f"{deployment} stats must be a dict, got {type(stats).__name__}")
        aliased = {
            STATS_ALIASES[k]: v for k, v in stats.items() if k in STATS_ALIASES and STATS_ALIASES[k] not in stats
        }
        stats = {**stats, **aliased}
        values: dict[str, float] = {}
        for key in keys:
            if key not in stats:
                continue
            value = stats[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{deployment} stats[{key!r}] must be a finite number >= 0, got {value!r}")
            values[key] = float(value)
        entry = {keys[k][0]: (keys[k][1], keys[k][2], v) for k, v in values.items()}
        with self._lock:
            self._latest[(deployment, self._replica(stats))] = (time.monotonic(), entry)
        return values

    def derive(self, deployment: str, stats: Mapping[str, Any], name: str, help_text: str, value: float) -> None:
        with self._lock:
            _, entry = self._latest[(deployment, self._replica(stats))]
            entry[name] = ("gauge", help_text, value)

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic()
        families: dict[str, Any] = {}
        with self._lock:
            for key in [k for k, (t, _) in self._latest.items() if now - t > self.stale_after_s]:
                del self._latest[key]
            entries = [(replica, entry) for (_, replica), (_, entry) in sorted(self._latest.items())]
        for replica, entry in entries:
            for name, (kind, help_text, value) in entry.items():
                family = families.get(name)
                if family is None:
                    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                    family = families[name] = cls(f"{PREFIX}_{name}", help_text, labels=["replica"])
                family.add_metric([replica], value)
        yield from families.values()

    def describe(self) -> list[Metric]:
        # Nothing to declare: the families appear once a stats dict has arrived (and registering never collects).
        return []


class CountingLMBackend(LMBackend):
    """An :class:`LMBackend` that counts the tokens passing through it into :meth:`ServingMetrics.lm_tokens`."""

    def __init__(self, inner: LMBackend, metrics: ServingMetrics):
        self.inner = inner
        self.metrics = metrics

    async def limits(self) -> LMLimits | None:
        return await self.inner.limits()  # the engine sizes its prompts by the wrapped LM

    async def stream(self, prompt_ids: list[int], force_modality: str | None) -> AsyncGenerator[list[int]]:
        stream = self.inner.stream(prompt_ids, force_modality)
        try:
            async for chunk in stream:
                self.metrics.lm_tokens(len(chunk))
                yield chunk
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
