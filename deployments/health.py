"""Health of the model deployments, for the gateway's ``GET /health``. Ray-free: a probe is any async callable (a
deployment's ``handle.ready.remote`` in the gateway), so the logic is tested with fakes and a fake clock.

    monitor = HealthMonitor({"lm": lm_handle.ready.remote, ...})
    report = await monitor.check()   # {"status": "ok", "deployments": {"lm": "ok", ...}}

``status``: "starting" until every deployment has answered its probe once (a replica still loading its models); then
"ok" while every probe succeeds and "degraded" while any fails (a replica died or hangs). Per deployment: "starting"
(never answered yet), "ok" (its last probe answered), "down" (it answered once, its last probe did not).

A probe succeeds when it returns (anything but ``False``) within ``probe_timeout_s``; a probe that misses it is
cancelled. All probes run together, and a report is reused for ``cache_s`` so that frequent ``/health`` calls (load
balancers, dashboards) do not each reach every replica; concurrent calls share one round of probes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from deployments.common import cancel_call

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[Any]]

STATUS_OK = "ok"
STATUS_DEGRADED = "degraded"
STATUS_STARTING = "starting"
DEPLOYMENT_OK = "ok"
DEPLOYMENT_DOWN = "down"
DEPLOYMENT_STARTING = "starting"


class HealthMonitor:
    """Probes named deployments and reports their health (see the module docstring).

    probes: {deployment name: a callable that starts one probe and returns its awaitable}.
    probe_timeout_s: how long one probe may take before it counts as failed (and is cancelled).
    cache_s: how long a report is reused before the next call probes again.
    clock: seconds, monotonic (injected by tests); it dates reports for the cache.
    """

    def __init__(
        self,
        probes: Mapping[str, Probe],
        *,
        probe_timeout_s: float = 2.0,
        cache_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not probes:
            raise ValueError("HealthMonitor needs at least one probe")
        if probe_timeout_s <= 0 or cache_s < 0:
            raise ValueError(f"probe_timeout_s must be > 0 and cache_s >= 0, got {probe_timeout_s}, {cache_s}")
        self._probes = dict(probes)
        self._probe_timeout_s = probe_timeout_s
        self._cache_s = cache_s
        self._clock = clock
        self._ever_ok: set[str] = set()
        self._states: dict[str, str] = {name: DEPLOYMENT_STARTING for name in self._probes}
        self._report: dict[str, Any] | None = None
        self._reported_at = 0.0
        self._round: asyncio.Future | None = None

    async def check(self) -> dict[str, Any]:
        """The current report: ``{"status": "ok"|"degraded"|"starting", "deployments": {name: "ok"|"down"|
        "starting"}}``; probes at most once per ``cache_s`` (a fresh copy each call)."""
        if self._report is not None and self._clock() - self._reported_at < self._cache_s:
            return _copy(self._report)
        if self._round is None or self._round.done():
            self._round = asyncio.ensure_future(self._probe_all())
        # shielded: a caller that goes away (a cancelled HTTP request) does not cancel the round others wait on
        return _copy(await asyncio.shield(self._round))

    async def _probe_all(self) -> dict[str, Any]:
        names = list(self._probes)
        results = await asyncio.gather(*(self._probe(name) for name in names))
        for name, ok in zip(names, results, strict=True):
            self._record(name, ok)
        if len(self._ever_ok) < len(self._probes):
            status = STATUS_STARTING
        elif all(state == DEPLOYMENT_OK for state in self._states.values()):
            status = STATUS_OK
        else:
            status = STATUS_DEGRADED
        self._report = {"status": status, "deployments": dict(self._states)}
        self._reported_at = self._clock()
        return self._report

    async def _probe(self, name: str) -> bool:
        call = None
        try:
            call = self._probes[name]()
            result = await asyncio.wait_for(call, self._probe_timeout_s)
        except TimeoutError:
            cancel_call(call, "a health probe")
            log.debug("health probe of %s: no answer within %g s", name, self._probe_timeout_s)
            return False
        except Exception as exc:
            log.debug("health probe of %s failed: %s", name, exc)
            return False
        return result is not False

    def _record(self, name: str, ok: bool) -> None:
        before = self._states[name]
        if ok:
            self._ever_ok.add(name)
            state = DEPLOYMENT_OK
        else:
            state = DEPLOYMENT_DOWN if name in self._ever_ok else DEPLOYMENT_STARTING
        self._states[name] = state
        if state != before:
            log.log(
                logging.WARNING if state == DEPLOYMENT_DOWN else logging.INFO,
                "deployment %s: %s -> %s",
                name,
                before,
                state,
            )


def _copy(report: dict[str, Any]) -> dict[str, Any]:
    return {"status": report["status"], "deployments": dict(report["deployments"])}
