"""CPU and memory of processes on this machine over a benchmark run: psutil when it is installed, else ``/proc``.

:class:`ProcessMonitor` measures the benchmark's own process, the whole machine, and any server processes it is
given (``--server-pid``) or finds (``--ray-procs``: every process whose command line starts with ``ray::``, i.e. Ray's
workers, Serve's controller, proxy and replicas). CPU is the CPU time a process used during the run divided by the
run's wall time (1.0 = one core busy); memory is the largest resident set size seen by a sampler (every 0.5 s).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

try:  # optional: the `bench` extra installs it; /proc works without
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_MIB = 1024 * 1024


def _cpu_seconds(pid: int) -> float | None:
    try:
        if psutil is not None:
            times = psutil.Process(pid).cpu_times()
            return times.user + times.system
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15 of stat)
    except Exception:
        return None


def _rss_bytes(pid: int) -> int | None:
    try:
        if psutil is not None:
            return int(psutil.Process(pid).memory_info().rss)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except Exception:
        return None
    return None


def _name(pid: int) -> str:
    try:
        if psutil is not None:
            cmdline = psutil.Process(pid).cmdline()
        else:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            cmdline = [part.decode(errors="replace") for part in cmdline if part]
        return " ".join(cmdline)[:120] if cmdline else str(pid)
    except Exception:
        return str(pid)


def _machine_busy_idle() -> tuple[float, float] | None:
    """(busy, idle) CPU seconds of the whole machine since boot."""
    try:
        if psutil is not None:
            t = psutil.cpu_times()
            idle = t.idle + getattr(t, "iowait", 0.0)
            return sum(t) - idle, idle
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
        return (total - idle) / _TICKS, idle / _TICKS
    except Exception:
        return None


def _machine_memory() -> dict[str, float] | None:
    try:
        if psutil is not None:
            vm = psutil.virtual_memory()
            return {"total_mib": vm.total / _MIB, "available_mib": vm.available / _MIB}
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, rest = line.split(":", 1)
            info[key] = int(rest.split()[0]) * 1024
        return {"total_mib": info["MemTotal"] / _MIB, "available_mib": info["MemAvailable"] / _MIB}
    except Exception:
        return None


def ray_process_ids() -> list[int]:
    """Processes of this machine whose command line starts with ``ray::`` (Ray workers and Serve actors)."""
    found = []
    if psutil is not None:
        pids = psutil.pids()
    else:
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    for pid in pids:
        if _name(pid).startswith("ray::"):
            found.append(pid)
    return found


class ProcessMonitor:
    """Start before a run and stop after it; ``stop()`` returns the figures (see the module docstring)."""

    def __init__(self, server_pids: list[int] | None = None, find_ray: bool = False, interval_s: float = 0.5):
        self.server_pids = list(server_pids or [])
        self.find_ray = find_ray
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pids: list[int] = []
        self._cpu0: dict[int, float | None] = {}
        self._rss_max: dict[int, int] = {}
        self._machine0: tuple[float, float] | None = None
        self._min_available_mib: float | None = None
        self._t0 = 0.0

    def start(self) -> ProcessMonitor:
        own = os.getpid()
        pids = [own, *self.server_pids, *(ray_process_ids() if self.find_ray else [])]
        self._pids = list(dict.fromkeys(pids))
        self._t0 = time.monotonic()
        self._cpu0 = {pid: _cpu_seconds(pid) for pid in self._pids}
        self._machine0 = _machine_busy_idle()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="bench-procstats", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        for pid in self._pids:
            rss = _rss_bytes(pid)
            if rss is not None:
                self._rss_max[pid] = max(self._rss_max.get(pid, 0), rss)
        memory = _machine_memory()
        if memory is not None:
            available = memory["available_mib"]
            self._min_available_mib = (
                available if self._min_available_mib is None else min(self._min_available_mib, available)
            )

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        wall = max(time.monotonic() - self._t0, 1e-9)
        processes = []
        for pid in self._pids:
            cpu0, cpu1 = self._cpu0.get(pid), _cpu_seconds(pid)
            cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
            processes.append(
                {
                    "pid": pid,
                    "name": "anystream-bench (this process)" if pid == os.getpid() else _name(pid),
                    "cpu_s": cpu,
                    "cpu_cores": cpu / wall if cpu is not None else None,
                    "rss_max_mib": self._rss_max[pid] / _MIB if pid in self._rss_max else None,
                }
            )
        machine: dict[str, Any] = {"cores": os.cpu_count()}
        end = _machine_busy_idle()
        if self._machine0 is not None and end is not None:
            busy, idle = end[0] - self._machine0[0], end[1] - self._machine0[1]
            machine["cpu_busy_fraction"] = busy / (busy + idle) if busy + idle > 0 else None
            machine["cpu_cores_busy"] = busy / wall
        memory = _machine_memory()
        if memory is not None:
            machine["memory_total_mib"] = memory["total_mib"]
            machine["memory_min_available_mib"] = self._min_available_mib
        return {
            "wall_s": wall,
            "backend": "psutil" if psutil is not None else "/proc",
            "machine": machine,
            "bench": processes[0],
            "server": processes[1:],
        }
