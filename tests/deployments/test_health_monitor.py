"""HealthMonitor with fake probes and a fake clock: starting -> ok -> degraded (a probe hangs or fails) -> ok, the
report cache, and one shared round of probes for concurrent callers."""

import asyncio

import pytest

from deployments.health import HealthMonitor


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Call:
    """What ``handle.ready.remote()`` returns: awaitable, and cancellable like a Serve response (awaiting it is
    cancelled separately from the replica's work, which only ``cancel()`` stops)."""

    def __init__(self, probe):
        self.probe = probe

    def __await__(self):
        return self.probe.answer().__await__()

    def cancel(self):
        self.probe.cancelled += 1


class Probe:
    """A deployment's readiness probe: ``mode`` is "ok", "raise", "hang" or "false"; ``gate`` (when set) holds every
    answer until it opens."""

    def __init__(self, mode="ok"):
        self.mode = mode
        self.calls = 0
        self.cancelled = 0  # calls cancelled (the replica told to stop)
        self.gate: asyncio.Event | None = None
        self.answering = asyncio.Event()  # set once a probe has started

    def __call__(self):
        self.calls += 1
        return Call(self)

    async def answer(self):
        self.answering.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.mode == "hang":
            await asyncio.Event().wait()
        if self.mode == "raise":
            raise RuntimeError("replica died")
        return self.mode != "false"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def monitor_of(probes, clock):
    return HealthMonitor(probes, probe_timeout_s=0.05, cache_s=1.0, clock=clock)


def test_starting_until_every_deployment_answered_once_then_ok_degraded_and_ok_again():
    clock = Clock()
    lm, acoustic = Probe("ok"), Probe("raise")  # the acoustic replica is still loading
    monitor = monitor_of({"lm": lm, "acoustic": acoustic}, clock)

    def check():
        async def checked():
            report = await monitor.check()
            return report, acoustic.cancelled  # counted before the loop ends (which cancels whatever is left)

        clock.now += 1.5  # past the cache: every check probes
        report, cancelled[0] = run(checked())
        return report

    cancelled = [0]

    assert check() == {"status": "starting", "deployments": {"lm": "ok", "acoustic": "starting"}}
    acoustic.mode = "ok"
    assert check() == {"status": "ok", "deployments": {"lm": "ok", "acoustic": "ok"}}
    acoustic.mode = "hang"  # a replica that stopped answering
    assert check() == {"status": "degraded", "deployments": {"lm": "ok", "acoustic": "down"}}
    assert cancelled[0] == 1  # the probe that missed its deadline was cancelled
    acoustic.mode = "ok"
    assert check() == {"status": "ok", "deployments": {"lm": "ok", "acoustic": "ok"}}
    lm.mode = "raise"  # a replica that died
    assert check() == {"status": "degraded", "deployments": {"lm": "down", "acoustic": "ok"}}
    lm.mode = "false"  # a probe that answers "not ready" counts as down too
    assert check()["deployments"]["lm"] == "down"
    lm.mode = "ok"
    assert check()["status"] == "ok"


def test_a_probe_that_never_answers_keeps_the_status_starting():
    clock = Clock()
    monitor = monitor_of({"lm": Probe("hang"), "media": Probe("ok")}, clock)
    assert run(monitor.check()) == {"status": "starting", "deployments": {"lm": "starting", "media": "ok"}}


def test_reports_are_reused_for_the_cache_time_then_probed_again():
    clock = Clock()
    lm = Probe("ok")
    monitor = monitor_of({"lm": lm}, clock)

    async def main():
        first = await monitor.check()
        first["status"] = "changed by a caller"  # callers get copies
        clock.now += 0.9
        cached = await monitor.check()
        calls_while_cached = lm.calls
        clock.now += 0.2
        lm.mode = "raise"
        fresh = await monitor.check()
        return cached, calls_while_cached, fresh

    cached, calls_while_cached, fresh = run(main())
    assert cached == {"status": "ok", "deployments": {"lm": "ok"}} and calls_while_cached == 1
    assert fresh == {"status": "degraded", "deployments": {"lm": "down"}} and lm.calls == 2


def test_concurrent_checks_share_one_round_of_probes():
    clock = Clock()
    lm = Probe("ok")
    lm.gate = asyncio.Event()
    monitor = HealthMonitor({"lm": lm}, probe_timeout_s=5.0, cache_s=1.0, clock=clock)

    async def main():
        checks = [asyncio.ensure_future(monitor.check()) for _ in range(5)]
        await lm.answering.wait()
        for _ in range(5):
            await asyncio.sleep(0)  # every check is waiting on the round by now
        lm.gate.set()
        return await asyncio.gather(*checks)

    reports = run(main())
    assert lm.calls == 1
    assert all(r == {"status": "ok", "deployments": {"lm": "ok"}} for r in reports)


def test_a_probe_that_raises_when_called_counts_as_failed():
    def broken():
        raise RuntimeError("no handle")

    report = run(monitor_of({"lm": broken}, Clock()).check())
    assert report == {"status": "starting", "deployments": {"lm": "starting"}}


def test_settings_are_checked():
    with pytest.raises(ValueError):
        HealthMonitor({})
    with pytest.raises(ValueError):
        HealthMonitor({"lm": Probe()}, probe_timeout_s=0)
